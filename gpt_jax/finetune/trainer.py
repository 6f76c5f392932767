"""The fine-tuning run: load the pre-trained model, train with the auxiliary LM loss, evaluate every epoch,
checkpoint, and predict labels for new files.

`finetune(config, workdir)` resumes from WORKDIR's newest checkpoint (the batch of step s is a function of
(seed, s), dropout keys are fold_in(key, s), so a resumed run continues as the uninterrupted one would).
Checkpoints reuse `gpt_jax.checkpoint.Checkpointer`: params {"gpt", "head"}, and in meta the model config,
tokenizer, task, label mapping and the run's config.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from functools import partial
from typing import Optional

import jax
import numpy as np
import optax

from gpt_jax import checkpoint as ckpt_lib
from gpt_jax import metrics as metrics_lib
from gpt_jax import sharding as shard_lib
from gpt_jax import tokenizer as tok_lib
from gpt_jax.config import ModelConfig
from gpt_jax.finetune import formats
from gpt_jax.finetune.config import check_task
from gpt_jax.finetune.data import FinetuneDataError, LabelSpace, read_examples
from gpt_jax.finetune.model import FinetuneModel, extend_vocab, head_params, loss_fn
from gpt_jax.utils import atomic_write, write_json
from gpt_jax.train import TrainState, init_state, make_optimizer


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------- models


def _read_meta(workdir: str) -> Optional[dict]:
    """The meta of WORKDIR's newest checkpoint, or None when it has none."""
    if not os.path.isdir(ckpt_lib.checkpoint_dir(workdir)):
        return None
    ckpt = ckpt_lib.Checkpointer(workdir, create=False)
    step = ckpt.latest_step()
    meta = None if step is None else ckpt.read_meta(step)
    ckpt.close()
    return meta


def load_pretrained(init_from: str):
    """(ModelConfig, GPT params, tokenizer) of a train.py workdir, or of a pretrained name / HF folder."""
    if not init_from:
        raise ValueError("set the pre-trained model: --config.init_from=runs/shakespeare (a train.py workdir), "
                         "gpt2, openai-gpt or a Hugging Face model folder")
    meta = _read_meta(init_from)
    if meta is not None:
        if "finetune" in meta:
            raise ValueError(f"{init_from} is a fine-tuning run; init_from takes a pre-training run (train.py)")
        cfg, meta, params = ckpt_lib.load_params(init_from)
        return cfg, params, tok_lib.from_meta(meta["tokenizer"])
    if os.path.isdir(ckpt_lib.checkpoint_dir(init_from)):
        raise ckpt_lib.CheckpointError(f"no complete checkpoint in {ckpt_lib.checkpoint_dir(init_from)}")
    try:
        from gpt_jax import pretrained
    except ImportError:
        raise ValueError(f"init_from {init_from!r} is not a train.py workdir (no checkpoints in it), and this "
                         "install cannot load pretrained models") from None
    model, params, tokenizer = pretrained.load(init_from, with_tokenizer=True)
    if tokenizer is None:
        raise ValueError(f"{init_from} has no tokenizer files this project can read; put its tokenizer.json in "
                         "the folder")
    return model.cfg, params, tokenizer


def _abstract_params(model: FinetuneModel, n_seq: int):
    ids = np.zeros((1, n_seq, 8), np.int32)
    return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), ids, np.ones((1, n_seq), np.int32),
                                             with_lm=True)["params"])


def load_finetuned(workdir: str, sharding=None):
    """(model, params, meta) of a fine-tuning run's newest checkpoint."""
    meta = _read_meta(workdir)
    if meta is None:
        raise ckpt_lib.CheckpointError(f"no fine-tuning checkpoint in {workdir}: run finetune.py --config=... "
                                       f"--workdir={workdir} first")
    if "finetune" not in meta:
        raise ValueError(f"{workdir} is a pre-training run, not a fine-tuning run")
    ft = meta["finetune"]
    labels = LabelSpace.from_meta(ft["labels"])
    model = FinetuneModel(ModelConfig.from_dict(meta["model"]), ft["task"], labels.n_outputs)
    sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    ckpt = ckpt_lib.Checkpointer(workdir, create=False)
    abstract = ckpt_lib.abstract_like(_abstract_params(model, 1), sharding)
    params = ckpt.restore(ckpt.latest_step(), {"params": abstract})["params"]
    ckpt.close()
    return model, params, meta


# ----------------------------------------------------------------------------------------- steps


def make_train_step(model: FinetuneModel, tx, mesh, aux_lm_weight: float, regression: bool, schedule):
    repl, data = shard_lib.replicated(mesh), shard_lib.batch_sharding(mesh)
    grad_fn = jax.value_and_grad(partial(loss_fn, model=model, train=True, aux_lm_weight=aux_lm_weight,
                                         regression=regression), has_aux=True)

    def train_step(state: TrainState, batch):
        (loss, parts), grads = grad_fn(state.params, batch=batch, rng=jax.random.fold_in(state.rng, state.step))
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, **parts, "grad_norm": optax.tree.norm(grads), "lr": schedule(state.step)}
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    step = jax.jit(train_step, donate_argnums=0, in_shardings=(repl, data), out_shardings=(repl, repl))
    return shard_lib.one_step_in_flight(step, mesh)


def make_predict_step(model: FinetuneModel, mesh):
    """Jitted `(params, batch) -> task outputs` (class logits, answer scores, or the standardized score)."""
    repl, data = shard_lib.replicated(mesh), shard_lib.batch_sharding(mesh)

    def predict_step(params, batch):
        return model.apply({"params": params}, batch["ids"], batch["lengths"])[0]

    return jax.jit(predict_step, in_shardings=(repl, data), out_shardings=repl)


def predict_outputs(predict_step, params, enc: formats.Encoded, batch_size: int, max_length: int, mesh):
    """Task outputs of every example, (N, K) numpy float32."""
    outs = []
    for batch in formats.eval_batches(enc, batch_size, max_length):
        batch.pop("labels", None)
        n = int(batch["weights"].sum())
        outs.append(np.asarray(jax.device_get(predict_step(params, shard_lib.put_batch(batch, mesh))))[:n])
    return np.concatenate(outs)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def _pearson(a: np.ndarray, b: np.ndarray) -> Optional[float]:
    a, b = a - a.mean(), b - b.mean()
    denom = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    return float((a * b).sum()) / denom if denom > 0 else None  # undefined for a constant prediction


def scores(outputs: np.ndarray, targets: np.ndarray, labels: LabelSpace) -> dict:
    """Eval metrics: accuracy, loss and the majority-class accuracy; for regression Pearson, Spearman, MSE."""
    if labels.kind == "regression":
        from scipy.stats import rankdata

        pred = outputs[:, 0] * labels.std + labels.mean
        gold = targets.astype(np.float64) * labels.std + labels.mean
        return {"pearson": _pearson(pred, gold), "spearman": _pearson(rankdata(pred), rankdata(gold)),
                "mse": float(np.mean((pred - gold) ** 2))}
    logp = _log_softmax(outputs.astype(np.float64))
    return {"accuracy": float(np.mean(logp.argmax(-1) == targets)),
            "loss": float(-np.mean(logp[np.arange(len(targets)), targets])),
            "majority": float(np.bincount(targets).max() / len(targets))}


def format_scores(s: dict) -> str:
    if "accuracy" in s:
        return f"accuracy {s['accuracy']:.4f} (majority class {s['majority']:.4f}), loss {s['loss']:.4f}"
    fmt = lambda v: "n/a" if v is None else f"{v:.4f}"
    return f"pearson {fmt(s['pearson'])}, spearman {fmt(s['spearman'])}, mse {s['mse']:.4f}"


# ----------------------------------------------------------------------------------------- the run


def _check_config(config) -> tuple[str, bool, float]:
    task = check_task(config.task)
    regression = bool(config.regression)
    if regression and task != "similarity":
        raise ValueError(f"regression=True is for the similarity task, not {task}")
    aux = float(config.aux_lm_weight)
    if aux < 0:
        raise ValueError(f"aux_lm_weight must be >= 0, got {aux}")
    if int(config.train.epochs) <= 0 or int(config.train.batch_size) <= 0:
        raise ValueError("train.epochs and train.batch_size must be positive")
    return task, regression, aux


def _model_source(config, workdir: str):
    """(saved meta, ModelConfig with the special tokens, tokenizer, GPT params): from WORKDIR's checkpoint when
    resuming (saved meta set, params None), else from config.init_from (saved meta None)."""
    saved = _read_meta(workdir)
    if saved is not None:
        if "finetune" not in saved:
            raise ValueError(f"{workdir} holds a pre-training run; pick another --workdir")
        return saved, ModelConfig.from_dict(saved["model"]), tok_lib.from_meta(saved["tokenizer"]), None
    base_cfg, base_params, tokenizer = load_pretrained(config.init_from)
    key = jax.random.fold_in(jax.random.PRNGKey(int(config.seed)), 1)
    model_cfg, gpt_params = extend_vocab(base_cfg, base_params, formats.EXTRA_TOKENS, key)
    return None, model_cfg, tokenizer, gpt_params


def _initial_state(model: FinetuneModel, tx, mesh, ckpt, seed: int, gpt_params, n_seq: int) -> TrainState:
    """A fresh state around the pre-trained `gpt_params` and a new head, or (gpt_params None) the newest
    checkpoint's state."""
    abstract = _abstract_params(model, n_seq)
    if gpt_params is not None:
        head = head_params(model.cfg.d_model, model.n_outputs, jax.random.fold_in(jax.random.PRNGKey(seed), 2))
        params = {"gpt": gpt_params, "head": head}
        if jax.tree_util.tree_structure(params) != jax.tree_util.tree_structure(abstract):
            raise ValueError("the pre-trained parameters do not match their model config")
        return init_state(model.cfg, tx, seed, mesh, params)
    repl = shard_lib.replicated(mesh)
    rng = jax.random.split(jax.random.PRNGKey(seed))[1]  # shape and dtype as init_state draws it
    restored = ckpt.restore(ckpt.latest_step(), {
        "params": ckpt_lib.abstract_like(abstract, repl),
        "opt_state": ckpt_lib.abstract_like(jax.eval_shape(tx.init, abstract), repl),
        "train": ckpt_lib.abstract_like({"step": np.zeros((), np.int32), "rng": rng}, repl)})
    return TrainState(step=restored["train"]["step"], params=restored["params"], opt_state=restored["opt_state"],
                      rng=restored["train"]["rng"])


def finetune(config, workdir: str) -> dict:
    """Fine-tunes (resuming from WORKDIR's newest checkpoint if it has one); returns the final metrics."""
    t_start = time.time()
    task, regression, aux = _check_config(config)
    tc, seed = config.train, int(config.seed)
    train_ex = read_examples(config.data.train_file, config.data, task, what="data.train_file")
    eval_ex = (read_examples(config.data.eval_file, config.data, task, what="data.eval_file")
               if config.data.eval_file else None)
    labels = LabelSpace.from_train(train_ex, task, regression, str(config.data.labels))
    for ex in eval_ex or ():  # a label the head cannot output: fail before loading the model
        labels.encode(ex, config.data.eval_file)

    os.makedirs(workdir, exist_ok=True)
    saved, model_cfg, tokenizer, gpt_params = _model_source(config, workdir)
    model_cfg = model_cfg.replace(dropout=float(config.model.dropout), dtype=config.model.dtype)
    max_length = int(config.model.max_length) or model_cfg.block_size
    if not formats.MIN_LENGTH <= max_length <= model_cfg.block_size:
        raise ValueError(f"model.max_length={max_length} must be in [{formats.MIN_LENGTH}, the model's "
                         f"block_size={model_cfg.block_size}]")
    specials = formats.Specials.after(model_cfg.vocab_size)
    ft_meta = {"task": task, "labels": labels.to_meta(), "max_length": max_length,
               "init_from": str(config.init_from), "specials": dataclasses.asdict(specials)}
    meta = {"model": model_cfg.to_dict(), "tokenizer": tokenizer.meta(), "finetune": ft_meta,
            "config": config.to_dict()}
    if saved is not None and (saved["finetune"] != ft_meta or saved["model"] != meta["model"]):
        raise ValueError(f"{workdir} holds another fine-tuning run (task, labels, model or init_from differ); "
                         "use a new --workdir")

    train_enc = formats.encode_examples(train_ex, task, tokenizer, specials, max_length, labels,
                                        config.data.train_file)
    eval_enc = (formats.encode_examples(eval_ex, task, tokenizer, specials, max_length, labels,
                                        config.data.eval_file) if eval_ex else None)
    for name, enc in (("train", train_enc), ("eval", eval_enc)):
        if enc is not None:
            _log(f"{name}: {len(enc):,} examples, {enc.n_truncated:,} truncated to {max_length} tokens "
                 "(from the front of the longest part)")

    mesh = shard_lib.make_mesh()
    B, EB = int(tc.batch_size), int(tc.eval_batch_size)
    shard_lib.check_batch_size(B, mesh)
    shard_lib.check_batch_size(EB, mesh, "train.eval_batch_size")
    spe = formats.steps_per_epoch(len(train_enc), B)
    epochs = int(tc.epochs)
    total = epochs * spe
    optim = config.optim.copy_and_resolve_references()
    with optim.unlocked():
        optim.warmup_steps = int(math.ceil(float(config.optim.warmup_fraction) * total))
    tx, schedule = make_optimizer(optim, total)
    model = FinetuneModel(model_cfg, task, labels.n_outputs, float(config.model.clf_dropout))

    ckpt = ckpt_lib.Checkpointer(workdir, max_to_keep=int(tc.max_to_keep) or None)
    writer = metrics_lib.MetricsWriter(workdir, tensorboard=bool(tc.tensorboard))
    state = _initial_state(model, tx, mesh, ckpt, seed, gpt_params, train_enc.n_seq)
    del gpt_params
    start = int(jax.device_get(state.step))
    if saved is not None:
        writer.truncate_after(start)
        _log(f"resumed from {ckpt.directory} at step {start}")
    write_json(os.path.join(workdir, "config.json"), meta)

    train_step = make_train_step(model, tx, mesh, aux, regression, schedule)
    predict_step = make_predict_step(model, mesh)

    def evaluate(step: int) -> dict:
        out = predict_outputs(predict_step, state.params, eval_enc, EB, max_length, mesh)
        s = scores(out, eval_enc.targets, labels)
        writer.write(step, epoch=step / spe, **{f"eval_{k}": v for k, v in s.items()})
        bar.write(f"epoch {step / spe:g} (step {step}): eval {format_scores(s)}", file=sys.stdout)
        return s

    what = {"classes": f"labels {labels.names}", "regression": "a score", "choice": "a score per answer"}
    _log(f"fine-tuning {task} ({what[labels.kind]}) from {config.init_from or 'the checkpoint'}: "
         f"{epochs} epochs x {spe} steps of {B}, lr {float(config.optim.learning_rate):g}, aux LM weight {aux:g}; "
         f"{mesh.devices.size} x {jax.devices()[0].platform}")
    from tqdm import tqdm

    bar = tqdm(total=total, initial=start, disable=not tc.progress_bar, dynamic_ncols=True, file=sys.stderr)
    result = {}
    with ckpt_lib.interruptible(ckpt, lambda: state, start, meta) as stop:
        try:
            for step in range(start + 1, total + 1):
                batch = formats.train_batch(train_enc, B, max_length, seed, step - 1)
                state, m = train_step(state, shard_lib.put_batch(batch, mesh))
                if step % int(tc.log_every) == 0 or step % spe == 0:
                    m = jax.device_get(m)
                    if not math.isfinite(float(m["loss"])):
                        raise FloatingPointError(f"loss is {m['loss']} at step {step}; "
                                                 "lower optim.learning_rate")
                    writer.write(step, epoch=step / spe, train_loss=m["loss"], task_loss=m["task_loss"],
                                 lm_loss=m.get("lm_loss"), lr=m["lr"], grad_norm=m["grad_norm"])
                    bar.set_postfix(loss=f"{m['loss']:.4f}", task=f"{m['task_loss']:.4f}")
                if step % spe == 0:
                    if eval_enc is not None:
                        result = evaluate(step)
                    ckpt.save_state(step, state, meta)
                bar.update(1)
                if stop.is_set():  # Ctrl-C / SIGTERM, deferred to this step boundary
                    raise ckpt_lib.StopRequested
        finally:
            bar.close()
    if start >= total:
        _log(f"{workdir} already finished at step {start}")
        if eval_enc is not None:
            result = evaluate(start)
    ckpt.wait()
    ckpt.close()
    writer.close()
    result = {f"eval_{k}": v for k, v in result.items()}
    result.update(step=max(start, total), epochs=epochs, n_train=len(train_enc),
                  n_truncated=train_enc.n_truncated, wall_s=time.time() - t_start)
    print(f"fine-tuned in {result['wall_s']:.0f} s; checkpoint in {ckpt.directory}", flush=True)
    return result


# ----------------------------------------------------------------------------------------- prediction


def check_output(path: str, overwrite: bool) -> None:
    if os.path.exists(path) and not overwrite:
        raise FinetuneDataError(f"{path} already exists; pass --overwrite to replace it, or another --predict_out")


def predict(workdir: str, path: str, out_path: Optional[str] = None, *, overwrite: bool = False,
            data_cfg=None, batch_size: int = 0) -> str:
    """Writes one JSON line per example of `path` (read with `data_cfg`, default the run's own data config):
    {"label", "probs"} for classes and answers, {"score"} for regression. Returns the output path."""
    from ml_collections import ConfigDict

    out_path = out_path or os.path.join(workdir, "predictions.jsonl")
    check_output(out_path, overwrite)
    model, params, meta = load_finetuned(workdir)
    ft, cfg = meta["finetune"], meta["config"]
    labels = LabelSpace.from_meta(ft["labels"])
    data_cfg = ConfigDict(cfg["data"] if data_cfg is None else data_cfg.to_dict())
    data_cfg.max_examples = 0
    examples = read_examples(path, data_cfg, ft["task"], need_label=False, what="predict_file")
    specials = formats.Specials(**ft["specials"])
    tokenizer = tok_lib.from_meta(meta["tokenizer"])
    enc = formats.encode_examples(examples, ft["task"], tokenizer, specials, ft["max_length"], path=path)
    _log(f"predict: {len(enc):,} examples, {enc.n_truncated:,} truncated to {ft['max_length']} tokens")
    mesh = shard_lib.make_mesh(jax.local_devices()[:1])
    out = predict_outputs(make_predict_step(model, mesh), params, enc,
                          batch_size or int(cfg["train"]["eval_batch_size"]), ft["max_length"], mesh)
    rows = []
    if labels.kind == "regression":
        rows = [{"score": float(o[0] * labels.std + labels.mean)} for o in out]
    else:
        probs = np.exp(_log_softmax(out.astype(np.float64)))
        for ex, p in zip(examples, probs):
            if labels.kind == "choice":
                p = p[: len(ex["choices"])]
                rows.append({"label": int(p.argmax()), "probs": [round(float(x), 6) for x in p]})
            else:
                rows.append({"label": labels.values[int(p.argmax())],
                             "probs": {n: round(float(x), 6) for n, x in zip(labels.names, p)}})
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    atomic_write(out_path, lambda f: f.writelines(json.dumps(r) + "\n" for r in rows))
    if all(ex["label"] is not None for ex in examples):  # a labelled file: score it too
        try:
            targets = np.asarray([labels.encode(ex, path) for ex in examples])
            print(f"predict_file {path}: {format_scores(scores(out, targets, labels))}", flush=True)
        except FinetuneDataError as e:
            _log(f"not scored: {e}")
    print(f"wrote {len(rows):,} predictions to {out_path}", flush=True)
    return out_path
