"""Optimizer, train state, the pure loss / train / eval steps, and the training loop.

`train_step(state, batch) -> (state, metrics)` is one jitted function with the state donated, sharded over a
data-parallel mesh. Dropout keys are `fold_in(state.rng, step)`; batches are a function of (seed, step), so a
run resumed from the checkpoint at step s continues exactly as the uninterrupted run would.
"""

from __future__ import annotations

import math
import os
import sys
import time
from functools import partial
from typing import Any, Optional

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree
from jax.sharding import PartitionSpec as P

from gpt_jax import checkpoint as ckpt_lib
from gpt_jax import data as data_lib
from gpt_jax import metrics as metrics_lib
from gpt_jax import sharding as shard_lib
from gpt_jax.config import ModelConfig, model_config
from gpt_jax.losses import lm_loss
from gpt_jax.model import GPT, count_params, head_weight, init_params
from gpt_jax.utils import write_json


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 (): optimizer steps taken
    params: Any
    opt_state: Any
    rng: jax.Array  # uint32 (2,): base key; the dropout key of step s is fold_in(rng, s)


# ----------------------------------------------------------------------------------------- optimizer


def decay_mask(params):
    """Weight decay on matrices (dense kernels and embedding tables), none on biases and LayerNorm gains/biases:
    the GPT-1 paper's "all non bias or gain weights"."""
    return jax.tree_util.tree_map(lambda p: p.ndim >= 2, params)


def make_schedule(optim, max_steps: int):
    lr, warmup = float(optim.learning_rate), int(optim.warmup_steps)
    if optim.schedule == "cosine":  # linear warmup from 0, cosine to min_lr at max_steps
        return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(max_steps, warmup + 1),
                                                  end_value=float(optim.min_learning_rate))
    if optim.schedule == "linear":  # linear warmup from 0, linear decay to 0 at max_steps
        return optax.join_schedules([optax.linear_schedule(0.0, lr, max(warmup, 1)),
                                     optax.linear_schedule(lr, 0.0, max(max_steps - warmup, 1))], [max(warmup, 1)])
    if optim.schedule == "constant":
        return optax.join_schedules([optax.linear_schedule(0.0, lr, max(warmup, 1)), optax.constant_schedule(lr)],
                                    [max(warmup, 1)])
    raise ValueError(f"unknown optim.schedule {optim.schedule!r}; use 'cosine', 'linear' or 'constant'")


def make_optimizer(optim, max_steps: int):
    schedule = make_schedule(optim, max_steps)
    parts = []
    if optim.grad_clip:
        parts.append(optax.clip_by_global_norm(float(optim.grad_clip)))
    parts.append(optax.adamw(schedule, b1=float(optim.beta1), b2=float(optim.beta2), eps=float(optim.eps),
                             weight_decay=float(optim.weight_decay), mask=decay_mask))
    return optax.chain(*parts), schedule


# ----------------------------------------------------------------------------------------- steps


def weighted_nll(params, model: GPT, inputs, targets, weights, rng=None, train: bool = False, rows=None):
    """sum over tokens of weights * -log p(target), through the fused output projection + cross-entropy
    (`gpt_jax.losses.lm_loss`: no (B, T, vocab) logits); padded vocab columns carry no mass.

    With dropout, row r of the batch draws its masks from fold_in(rng, rows[r]) (rows: each row's index in the
    global batch, default 0..B-1), so a row's masks do not depend on how the batch is split over devices or
    microbatches."""
    if train and model.cfg.dropout > 0:
        rows = jnp.arange(inputs.shape[0]) if rows is None else rows
        keys = jax.vmap(jax.random.fold_in, (None, 0))(rng, rows)

        def one_row(ids, key):  # (T,) -> (T, C)
            return model.apply({"params": params}, ids[None], train=True, rngs={"dropout": key},
                               method=GPT.hidden)[0][0]

        h = jax.vmap(one_row)(inputs, keys)  # (B, T, C); the matmuls still see all B * T rows at once
    else:
        h, _ = model.apply({"params": params}, inputs, method=GPT.hidden)  # (B, T, C)
    return lm_loss(h, head_weight(params, model.cfg), targets, weights, model.cfg.vocab_size)


def loss_fn(params, model: GPT, batch, rng=None, train: bool = False, rows=None):
    """Mean next-token negative log-likelihood (nats/token) over the batch."""
    targets = batch["targets"]
    return weighted_nll(params, model, batch["inputs"], targets, jnp.full(targets.shape, 1.0 / targets.size),
                        rng, train, rows)


def make_train_step(model: GPT, tx, mesh, grad_accum_steps: int = 1, schedule=None,
                    flat_grad_reduce: Optional[bool] = None):
    """The jitted `train_step(state, batch) -> (state, metrics)`; `state` is donated.

    Data parallel over the mesh. On accelerators XLA's partitioner (GSPMD) places the gradient all-reduces, where
    they overlap the backward pass. Where the devices are CPU threads (`flat_grad_reduce`, the default on CPU), each
    device computes its rows' loss and gradients in `shard_map` and all of them are averaged as one flat buffer:
    XLA:CPU synchronizes the devices once per all-reduced array, and one array instead of one per parameter took the
    char model's step from 36-42 to 32-37 ms on 2 cores (docs/performance.md)."""
    A = int(grad_accum_steps)
    repl, data = shard_lib.replicated(mesh), shard_lib.batch_sharding(mesh)
    if flat_grad_reduce is None:
        flat_grad_reduce = shard_lib.cpu_threads(mesh)

    def loss_and_grads(params, batch, key, first_row):
        """Mean loss and gradients over `batch`, whose row r is row first_row + r of the global batch."""
        grad_fn = jax.value_and_grad(partial(loss_fn, model=model, train=True))
        B = batch["inputs"].shape[0]
        if A == 1:
            return grad_fn(params, batch=batch, rng=key, rows=first_row + jnp.arange(B))
        # microbatch i takes rows i, i + A, i + 2A, ...: every device keeps its own rows (no resharding)
        micro = jax.tree_util.tree_map(lambda x: jnp.swapaxes(x.reshape(-1, A, *x.shape[1:]), 0, 1), batch)

        def body(carry, xs):
            i, mb = xs
            l, g = grad_fn(params, batch=mb, rng=key, rows=first_row + i + A * jnp.arange(B // A))
            return jax.tree_util.tree_map(jnp.add, carry, (l, g)), None

        zeros = (jnp.zeros((), jnp.float32), jax.tree_util.tree_map(jnp.zeros_like, params))
        (loss, grads), _ = jax.lax.scan(body, zeros, (jnp.arange(A), micro))
        return jax.tree_util.tree_map(lambda x: x / A, (loss, grads))

    if flat_grad_reduce:
        def local(params, batch, key):  # one device's rows -> the global mean loss and gradients
            first = jax.lax.axis_index("data") * batch["inputs"].shape[0]
            loss, grads = loss_and_grads(params, batch, key, first)
            flat, unravel = ravel_pytree(grads)
            flat = jax.lax.pmean(jnp.concatenate([flat, loss[None].astype(flat.dtype)]), "data")
            return flat[-1], unravel(flat[:-1])

        # check_vma=False: the gradients stay per-device (no automatic per-parameter psum) until the one pmean
        global_loss_and_grads = jax.shard_map(local, mesh=mesh, in_specs=(P(), P("data"), P()),
                                              out_specs=(P(), P()), check_vma=False)
    else:
        global_loss_and_grads = partial(loss_and_grads, first_row=0)

    def train_step(state: TrainState, batch):
        key = jax.random.fold_in(state.rng, state.step)
        loss, grads = global_loss_and_grads(state.params, batch, key)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads)}
        if schedule is not None:
            metrics["lr"] = schedule(state.step)
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    step = jax.jit(train_step, donate_argnums=0, in_shardings=(repl, data), out_shardings=(repl, repl))
    return shard_lib.one_step_in_flight(step, mesh)


def make_eval_step(model: GPT, mesh):
    """Jitted `eval_step(params, batch) -> (sum of weighted token losses, number of weighted tokens)`."""
    repl, data = shard_lib.replicated(mesh), shard_lib.batch_sharding(mesh)

    def eval_step(params, batch):
        w = jnp.broadcast_to(batch["weights"][:, None], batch["targets"].shape)  # (B, T)
        return weighted_nll(params, model, batch["inputs"], batch["targets"], w), w.sum()

    return jax.jit(eval_step, in_shardings=(repl, data), out_shardings=(repl, repl))


def evaluate(eval_step, params, batches, mesh) -> float:
    total, count = 0.0, 0.0
    for b in batches:
        s, n = eval_step(params, shard_lib.put_batch(b, mesh))
        total, count = total + float(s), count + float(n)
    return total / max(count, 1.0)


def init_state(model_cfg: ModelConfig, tx, seed: int, mesh, params=None) -> TrainState:
    """A fresh state (params drawn from `seed` unless given), replicated over the mesh."""
    key = jax.random.PRNGKey(seed)
    init_key, rng = jax.random.split(key)

    def make(params):
        if params is None:
            params = init_params(model_cfg, init_key)
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), rng=rng)

    return jax.jit(make, out_shardings=shard_lib.replicated(mesh))(params)


# ----------------------------------------------------------------------------------------- loop


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_meta(config, model_cfg: ModelConfig, tokenizer) -> dict:
    return {"model": model_cfg.to_dict(), "tokenizer": tokenizer.meta(), "config": config.to_dict()}


def _setup_model_and_data(config, workdir: str):
    """Tokenized data, tokenizer, model config and (for init_from) pretrained params."""
    init_params_ = None
    model_dict = config.model.to_dict()
    if config.train.get("init_from"):
        from gpt_jax import pretrained

        pmodel, init_params_, tokenizer = pretrained.load(config.train.init_from, with_tokenizer=True)
        if tokenizer is None:
            raise ValueError(f"{config.train.init_from} has no tokenizer files this project can read; "
                             "put its tokenizer.json in the folder")
        # architecture from the weights; dropout (and compute dtype) from this run's config
        model_dict = pmodel.cfg.replace(dropout=float(config.model.dropout), dtype=config.model.dtype).to_dict()
        train_tokens, val_tokens, tokenizer = data_lib.prepare(config.data, os.path.join(workdir, "data"),
                                                               tokenizer)
    else:
        train_tokens, val_tokens, tokenizer = data_lib.prepare(config.data, os.path.join(workdir, "data"))
        if not model_dict.get("vocab_size"):
            model_dict["vocab_size"] = tokenizer.vocab_size
        elif model_dict["vocab_size"] < tokenizer.vocab_size:
            raise ValueError(f"model.vocab_size={model_dict['vocab_size']} is smaller than the tokenizer's "
                             f"{tokenizer.vocab_size}; set --config.model.vocab_size=0 to take it from the data")
    return train_tokens, val_tokens, tokenizer, ModelConfig.from_dict(model_dict), init_params_


def train_and_evaluate(config, workdir: str) -> dict:
    """Trains (resuming from WORKDIR's newest checkpoint if there is one); returns the final metrics."""
    t_start = time.time()
    tc = config.train
    os.makedirs(workdir, exist_ok=True)
    train_tokens, val_tokens, tokenizer, model_cfg, pretrained_params = _setup_model_and_data(config, workdir)
    n_all = count_params(jax.eval_shape(lambda: init_params(model_cfg, jax.random.PRNGKey(0))))
    mesh = shard_lib.make_mesh(shard_lib.data_devices(int(tc.batch_size), int(tc.grad_accum_steps), n_all))
    shard_lib.check_batch_size(int(tc.batch_size), mesh)
    if int(tc.batch_size) % (int(tc.grad_accum_steps) * mesh.devices.size):
        raise ValueError(f"train.batch_size={tc.batch_size} must be divisible by train.grad_accum_steps="
                         f"{tc.grad_accum_steps} x {mesh.devices.size} devices")
    max_steps = int(tc.max_steps)
    model = GPT(model_cfg)
    tx, schedule = make_optimizer(config.optim, max_steps)
    meta = run_meta(config, model_cfg, tokenizer)

    ckpt = ckpt_lib.Checkpointer(workdir, max_to_keep=int(tc.max_to_keep) or None)
    latest = ckpt.latest_step()
    state = init_state(model_cfg, tx, int(config.seed), mesh, pretrained_params)
    writer = metrics_lib.MetricsWriter(workdir, tensorboard=bool(tc.tensorboard))
    if latest is not None:
        saved = ckpt.read_meta(latest)
        if saved.get("model") != model_cfg.to_dict():
            raise ValueError(f"{workdir} holds a run with another model config; use a new --workdir "
                             "or the same config to resume")
        abstract = {"params": ckpt_lib.abstract_like(state.params, shard_lib.replicated(mesh)),
                    "opt_state": ckpt_lib.abstract_like(state.opt_state, shard_lib.replicated(mesh)),
                    "train": ckpt_lib.abstract_like({"step": state.step, "rng": state.rng},
                                                    shard_lib.replicated(mesh))}
        restored = ckpt.restore(latest, abstract)
        state = TrainState(step=restored["train"]["step"], params=restored["params"],
                           opt_state=restored["opt_state"], rng=restored["train"]["rng"])
        writer.truncate_after(latest)
        _log(f"resumed from {ckpt.directory} at step {latest}")
    write_json(os.path.join(workdir, "config.json"), meta)

    n_params = count_params(state.params, exclude_positions=True)
    T, B = model_cfg.block_size, int(tc.batch_size)
    fpt = metrics_lib.flops_per_token(model_cfg, n_params, T)
    peak = metrics_lib.device_peak_flops(float(tc.peak_flops))
    _log(f"model: {count_params(state.params) / 1e6:.2f}M parameters ({model_cfg.norm_position}-LN, "
         f"{model_cfg.n_layer} layers, d {model_cfg.d_model}, context {T}); data: {len(train_tokens):,} train / "
         f"{len(val_tokens):,} val tokens ({tokenizer.name}); {mesh.devices.size} x {jax.devices()[0].platform} device(s)")

    train_step = make_train_step(model, tx, mesh, int(tc.grad_accum_steps), schedule)
    eval_step = make_eval_step(model, mesh)
    batches = data_lib.Batches(train_tokens, T, B, int(config.seed))
    eval_bs = -(-int(tc.eval_batch_size) // mesh.devices.size) * mesh.devices.size  # splits over the mesh
    val_batches = data_lib.eval_batches(val_tokens, T, eval_bs, int(tc.eval_max_windows))

    start = int(jax.device_get(state.step))
    result = {"step": start}
    if start >= max_steps:
        _log(f"{workdir} already finished at step {start}; evaluating the final checkpoint")
    from tqdm import tqdm

    bar = tqdm(total=max_steps, initial=start, disable=not tc.progress_bar, dynamic_ncols=True, file=sys.stderr)
    t_log, step_log = time.time(), start
    val_loss = None
    step = start
    with ckpt_lib.interruptible(ckpt, lambda: state, start, meta) as stop:
        try:
            for step in range(start + 1, max_steps + 1):
                state, m = train_step(state, shard_lib.put_batch(batches(step - 1), mesh))
                if step % int(tc.log_every) == 0 or step == max_steps:
                    m = jax.device_get(m)
                    now = time.time()
                    tok_s = (step - step_log) * B * T / max(now - t_log, 1e-9)
                    t_log, step_log = now, step
                    mfu = fpt * tok_s / peak if peak else None
                    writer.write(step, train_loss=m["loss"], lr=m["lr"], grad_norm=m["grad_norm"],
                                 tokens_per_sec=tok_s, mfu=mfu)
                    bar.set_postfix(loss=f"{m['loss']:.4f}", tok_s=f"{tok_s:,.0f}",
                                    mfu=f"{100 * (mfu or 0):.1f}%")
                    if not math.isfinite(float(m["loss"])):
                        raise FloatingPointError(f"loss is {m['loss']} at step {step}; "
                                                 "lower optim.learning_rate")
                if (int(tc.eval_every) and step % int(tc.eval_every) == 0) or step == max_steps:
                    val_loss = evaluate(eval_step, state.params, val_batches, mesh)
                    writer.write(step, val_loss=val_loss)
                    bar.write(f"step {step}: val loss {val_loss:.4f}", file=sys.stderr)
                    t_log = time.time()  # evaluation time is not training throughput
                if (int(tc.checkpoint_every) and step % int(tc.checkpoint_every) == 0) or step == max_steps:
                    ckpt.save_state(step, state, meta)
                bar.update(1)
                if stop.is_set():  # Ctrl-C / SIGTERM, deferred to this step boundary
                    raise ckpt_lib.StopRequested
        finally:
            bar.close()
    if start >= max_steps:
        val_loss = evaluate(eval_step, state.params, val_batches, mesh)
    ckpt.wait()
    ckpt.close()
    writer.close()
    if os.path.exists(writer.path):
        metrics_lib.plot_losses(writer.path, os.path.join(workdir, "loss.png"))
    result.update(step=max(step, start), val_loss=val_loss, wall_s=time.time() - t_start)
    print(f"final val loss {val_loss:.4f} at step {result['step']} ({result['wall_s']:.0f} s); run in {workdir}",
          flush=True)
    return result
