"""Pre-training: the next-token loss, the train and eval steps, and `train_and_evaluate`, which wires the data, model
and optimizer into the shared loop (`gpt_jax.loop`).

Dropout keys are per row, `fold_in(fold_in(state.rng, step), row)`; batches are a function of (seed, step), so a run
resumed from the checkpoint at step s continues exactly as the uninterrupted run would.
"""

from __future__ import annotations

import os
import time
from functools import partial
from typing import Optional

import jax
import jax.numpy as jnp

from gpt_jax import data as data_lib
from gpt_jax import fit
from gpt_jax import metrics as metrics_lib
from gpt_jax import optim
from gpt_jax import sharding as shard_lib
from gpt_jax import sources
from gpt_jax.config import PRETRAINING_RANGES, ModelConfig, check_ranges
from gpt_jax.loop import Cadence, Run, Task, log, train_loop
from gpt_jax.losses import lm_loss
from gpt_jax.model import GPT, count_params, head_weight, init_params
from gpt_jax.tokenizer import GPT2Tokenizer
from gpt_jax.utils import round_up


# ----------------------------------------------------------------------------------------- steps


def weighted_nll(params, model: GPT, inputs, targets, weights, rng=None, train: bool = False, rows=None):
    """sum over tokens of weights * -log p(target), through the fused output projection + cross-entropy
    (`gpt_jax.losses.lm_loss`: no (B, T, vocab) logits); padded vocab columns carry no mass.

    With dropout, row r of the batch draws its masks from fold_in(rng, rows[r]) (rows: each row's index in the
    global batch, default 0..B-1), so a row's masks do not depend on how the batch is split over devices or
    microbatches."""
    if train and model.cfg.dropout > 0:
        rows = jnp.arange(inputs.shape[0]) if rows is None else rows

        def one_row(ids, key):  # (T,) -> (T, C)
            return model.apply({"params": params}, ids[None], train=True, rngs={"dropout": key},
                               method=GPT.hidden)[0][0]

        h = optim.per_row(one_row, rng, rows, inputs)  # (B, T, C)
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
    """The jitted pre-training `train_step(state, batch) -> (state, metrics)` (`optim.make_train_step` with the
    mean next-token loss); `state` is donated."""

    def normalize(batch):  # every target of the global batch weighs 1 / (B * T)
        targets = batch["targets"]
        return dict(batch, weights=jnp.full(targets.shape, 1.0 / targets.size, jnp.float32))

    def loss(params, batch, rng, rows):
        return weighted_nll(params, model, batch["inputs"], batch["targets"], batch["weights"], rng, True, rows), {}

    return optim.make_train_step(loss, tx, mesh, grad_accum_steps=grad_accum_steps, schedule=schedule,
                                 normalize=normalize, flat_grad_reduce=flat_grad_reduce)


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


# ----------------------------------------------------------------------------------------- the run


def model_and_data(config, workdir: str):
    """(ModelConfig, pretrained params or None, tokenizer, train tokens, val tokens) of a pre-training run.

    With `train.init_from` (a run folder, a hub name or a HF folder; `gpt_jax.sources`) the architecture, weights
    and tokenizer come from there, dropout and the compute settings (dtype, remat, attention) from this config;
    otherwise the tokenizer comes from the data config and the vocabulary size from the tokenizer unless set."""
    init_from = config.train.get("init_from")
    source = sources.load(init_from, what="train.init_from") if init_from else None
    tokenizer = source.tokenizer if source else None
    train_tokens, val_tokens, tokenizer = data_lib.prepare(config.data, os.path.join(workdir, "data"), tokenizer)
    if source:
        cfg = source.config.replace(dropout=float(config.model.dropout), dtype=config.model.dtype,
                                    remat=config.model.remat, attention=config.model.attention)
        return cfg, source.params, tokenizer, train_tokens, val_tokens
    model_dict = config.model.to_dict()
    if not model_dict.get("vocab_size"):
        model_dict["vocab_size"] = tokenizer.vocab_size
    elif model_dict["vocab_size"] < tokenizer.vocab_size:
        raise ValueError(f"model.vocab_size={model_dict['vocab_size']} is smaller than the tokenizer's "
                         f"{tokenizer.vocab_size}; set --config.model.vocab_size=0 to take it from the data")
    return ModelConfig.from_dict(model_dict), None, tokenizer, train_tokens, val_tokens


def _refuse_another_run(run: Run, config) -> Optional[dict]:
    """The meta of the run the folder holds (None when it holds none), after checking that this config continues
    it; nothing in the folder is touched before."""
    workdir, latest = run.workdir, run.ckpt.latest_step()
    if latest is None:
        return None
    saved = run.ckpt.read_meta(latest)
    if sources.is_finetuning_run(saved):
        raise ValueError(f"{workdir} holds a fine-tuning run (finetune.py); pass another --workdir")
    before, now = saved.get("config", {}), config.to_dict()
    changed = [f"{group}.{key}" for group in ("model", "data") for key in sorted(set(before.get(group, {}))
               | set(now[group])) if before.get(group, {}).get(key) != now[group].get(key)]
    if before.get("train", {}).get("init_from", "") != now["train"].get("init_from", ""):
        changed.append("train.init_from")
    if changed:
        raise ValueError(f"{workdir} holds a run with other settings ({', '.join(changed)} differ); resume it with "
                         "its own config, or pass a new --workdir")
    return saved


def _refuse_changed_data(workdir: str, saved: Optional[dict], model_cfg: ModelConfig, tokenizer) -> None:
    if saved is None:
        return
    if saved.get("tokenizer") != tokenizer.meta():
        raise ValueError(f"the data's tokenizer differs from the one the run in {workdir} was trained with (the "
                         "corpus or its characters changed); resume with the same data, or pass a new --workdir")
    if saved.get("model") != model_cfg.to_dict():
        raise ValueError(f"{workdir} holds a run with another model config; use a new --workdir or the same "
                         "config to resume")


# ----------------------------------------------------------------------------------------- the compiled steps


def _batch_spec(mesh, rows: int, T: int, with_weights: bool = False) -> dict:
    """The abstract (rows, T) batch the steps take: shapes, dtypes and the batch sharding."""
    data = shard_lib.batch_sharding(mesh)
    ids = jax.ShapeDtypeStruct((rows, T), jnp.int32, sharding=data)
    spec = {"inputs": ids, "targets": ids}
    if with_weights:
        spec["weights"] = jax.ShapeDtypeStruct((rows,), jnp.float32, sharding=data)
    return spec


def _accumulation(config, model: GPT, tx, schedule, mesh, abstract, target: fit.Target) -> tuple[int, object]:
    """train.grad_accum_steps, with 0 (auto) settled for `target`: the fewest microbatches whose compiled train step
    fits the devices' memory (one microbatch where the devices report no limit, as on CPU). Returns (n, the
    Compiled step when candidates were compiled, else None)."""
    n, batch_size = int(config.train.grad_accum_steps), int(config.train.batch_size)
    if n or target.hbm_bytes_per_chip is None:
        return max(n, 1), None
    spec = _batch_spec(mesh, batch_size, model.cfg.block_size)

    def build(k):
        return fit.compile_program(make_train_step(model, tx, mesh, k, schedule), abstract, spec)

    n, compiled = fit.choose_grad_accum(build, fit.accumulation_candidates(batch_size, mesh.devices.size),
                                        target.hbm_bytes_per_chip, log)
    log(f"train.grad_accum_steps=0 (auto): {n} microbatch(es) of {batch_size // n} sequences fit "
        f"{target.name}'s {target.hbm_bytes_per_chip / fit.GiB:.2f} GiB per device ({compiled.needed / fit.GiB:.2f} "
        "GiB needed)")
    return n, compiled


def compiled_model(model_cfg: ModelConfig, mesh) -> GPT:
    """The model a run computes with on `mesh`'s devices: "auto" settings settled for their platform."""
    return GPT(model_cfg.for_platform(mesh.devices.flat[0].platform), mesh)


def _model_config_for_fit(config, workdir: str) -> ModelConfig:
    """The run's model config without preparing its corpus where the vocabulary size is known: set in the config, or
    the GPT-2 BPE's; a character vocabulary or an init_from source is read as training would."""
    model_dict = config.model.to_dict()
    if not config.train.get("init_from") and (model_dict.get("vocab_size") or config.data.tokenizer == "gpt2"):
        model_dict["vocab_size"] = model_dict.get("vocab_size") or GPT2Tokenizer.vocab_size
        return ModelConfig.from_dict(model_dict)
    return model_and_data(config, workdir)[0]


def compile_only(config, workdir: str, target_name: str) -> dict:
    """The fit check (`train.py --compile_only=T`): the run's train and eval steps compiled for `target_name` (a
    Cloud TPU type or "here"), exactly as training builds them; returns the report (gpt_jax.fit)."""
    check_ranges(config, PRETRAINING_RANGES)
    train_cfg = config.train
    model_cfg = _model_config_for_fit(config, workdir)
    target = fit.target(target_name)
    mesh = shard_lib.make_mesh(list(target.devices))
    batch_size, T = int(train_cfg.batch_size), model_cfg.block_size
    shard_lib.check_batch_size(batch_size, mesh)
    model = compiled_model(model_cfg, mesh)
    tx, schedule = optim.make_optimizer(config.optim, int(train_cfg.max_steps))
    abstract = optim.abstract_state(tx, int(config.seed), mesh, partial(init_params, model_cfg))
    n_micro, train_c = _accumulation(config, model, tx, schedule, mesh, abstract, target)
    if batch_size % (n_micro * mesh.devices.size):
        raise ValueError(f"train.batch_size={batch_size} must be divisible by train.grad_accum_steps="
                         f"{n_micro} x {mesh.devices.size} devices")
    train_step, train_spec = make_train_step(model, tx, mesh, n_micro, schedule), _batch_spec(mesh, batch_size, T)
    if train_c is None:
        train_c = fit.compile_program(train_step, abstract, train_spec)
    eval_rows = round_up(int(train_cfg.eval_batch_size), mesh.devices.size)
    eval_c = fit.compile_program(make_eval_step(model, mesh), abstract.params, _batch_spec(mesh, eval_rows, T, True))
    n_params = count_params(abstract.params, exclude_positions=True)
    step_flops = metrics_lib.program_matmul_flops(train_step, abstract, train_spec)
    xla_flops = None
    if train_c.ok:
        cost = train_c.compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        xla_flops = float(cost.get("flops", 0.0)) * mesh.devices.size  # per device -> the whole step
    cfg = model.cfg
    return fit.report(
        target, train_c, eval_c, params=count_params(abstract.params), batch_size=batch_size, seq_len=T,
        grad_accum_steps=n_micro,
        micro_batch=batch_size // n_micro, dtype=cfg.dtype, remat=cfg.remat, attention=cfg.attention,
        flops_per_step=step_flops, xla_flops_per_step=xla_flops,
        model_flops_per_step=metrics_lib.flops_per_token(cfg, n_params, T) * batch_size * T)


# ----------------------------------------------------------------------------------------- the run


def _pretraining_task(config, model: GPT, tx, schedule, mesh, train_tokens, val_tokens, n_params: int,
                      grad_accum_steps: int) -> Task:
    train_cfg, T = config.train, model.cfg.block_size
    batch_size = int(train_cfg.batch_size)
    eval_step = make_eval_step(model, mesh)
    val_batches = data_lib.eval_batches(val_tokens, T, round_up(int(train_cfg.eval_batch_size), mesh.devices.size),
                                        int(train_cfg.eval_max_windows))

    def evaluate_val(params, step: int):
        val_loss = evaluate(eval_step, params, val_batches, mesh)
        return {"val_loss": val_loss}, f"step {step}: val loss {val_loss:.4f}"

    return Task(train_step=make_train_step(model, tx, mesh, grad_accum_steps, schedule),
                batch=data_lib.Batches(train_tokens, T, batch_size, int(config.seed)), evaluate=evaluate_val,
                tokens_per_step=batch_size * T, flops_per_token=metrics_lib.flops_per_token(model.cfg, n_params, T),
                peak_flops=metrics_lib.device_peak_flops(float(train_cfg.peak_flops)))


def train_and_evaluate(config, workdir: str) -> dict:
    """Trains (resuming from WORKDIR's newest checkpoint if there is one); returns the final metrics."""
    t_start, train_cfg = time.time(), config.train
    check_ranges(config, PRETRAINING_RANGES)
    with Run(workdir, max_to_keep=int(train_cfg.max_to_keep), tensorboard=bool(train_cfg.tensorboard)) as run:
        saved = _refuse_another_run(run, config)
        model_cfg, pretrained_params, tokenizer, train_tokens, val_tokens = model_and_data(config, workdir)
        _refuse_changed_data(workdir, saved, model_cfg, tokenizer)
        params_or_init = pretrained_params if pretrained_params is not None else partial(init_params, model_cfg)
        n_all = count_params(jax.eval_shape(partial(init_params, model_cfg, jax.random.PRNGKey(0))))
        mesh = shard_lib.data_mesh(int(train_cfg.batch_size), max(int(train_cfg.grad_accum_steps), 1), n_all)
        tx, schedule = optim.make_optimizer(config.optim, int(train_cfg.max_steps))
        meta = {"model": model_cfg.to_dict(), "tokenizer": tokenizer.meta(), "config": config.to_dict()}
        seed = int(config.seed)
        abstract = optim.abstract_state(tx, seed, mesh, params_or_init)
        state = run.resume_or_init(meta, abstract,
                                   partial(optim.init_state, tx, seed, mesh, params_or_init),
                                   int(train_cfg.restore_step))
        del pretrained_params, params_or_init  # the state holds its own copy
        log(f"model: {n_all / 1e6:.2f}M parameters ({model_cfg.norm_position}-LN, {model_cfg.n_layer} layers, "
            f"d {model_cfg.d_model}, context {model_cfg.block_size}); data: {len(train_tokens):,} train / "
            f"{len(val_tokens):,} val tokens ({tokenizer.name}); {mesh.devices.size} x "
            f"{mesh.devices.flat[0].platform} device(s)")
        model = compiled_model(model_cfg, mesh)
        n_micro, _ = _accumulation(config, model, tx, schedule, mesh, abstract, fit.here_target())
        log(f"compute: {model.cfg.dtype}, attention {model.cfg.attention}, remat {model.cfg.remat}, "
            f"{n_micro} microbatch(es) per step")
        task = _pretraining_task(config, model, tx, schedule, mesh, train_tokens, val_tokens,
                                 count_params(state.params, exclude_positions=True), n_micro)
        cadence = Cadence(int(train_cfg.max_steps), int(train_cfg.log_every), int(train_cfg.eval_every),
                          int(train_cfg.checkpoint_every), bool(train_cfg.progress_bar))
        state, last_eval = train_loop(run, state, task, cadence, mesh, float(config.optim.learning_rate))
    run.plot()
    result = {"step": int(jax.device_get(state.step)), "val_loss": last_eval.get("val_loss"),
              "wall_s": time.time() - t_start}
    print(f"final val loss {result['val_loss']:.4f} at step {result['step']} ({result['wall_s']:.0f} s); run in "
          f"{workdir}", flush=True)
    return result
