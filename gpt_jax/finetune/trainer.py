"""The fine-tuning run: load the pre-trained model, train with the auxiliary LM loss on the shared loop
(`gpt_jax.loop`), evaluate every epoch, checkpoint, and predict labels for new files.

`finetune(config, workdir)` resumes from WORKDIR's newest checkpoint (the batch of step s is a function of
(seed, s), dropout keys are per row of fold_in(key, s), so a resumed run continues as the uninterrupted one would).
Checkpoints: params {"gpt", "head"}, and in meta the model config, tokenizer, task, label mapping and the run's
config.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import time
from functools import partial
from typing import Optional

import jax
import numpy as np
from ml_collections import ConfigDict

from gpt_jax import checkpoint as ckpt_lib
from gpt_jax import optim
from gpt_jax import sharding as shard_lib
from gpt_jax import sources
from gpt_jax import tokenizer as tok_lib
from gpt_jax.config import ModelConfig, check_ranges
from gpt_jax.finetune import formats
from gpt_jax.finetune.config import FINETUNE_RANGES, PAPER_WIDTH, check_task, resolve_recipe
from gpt_jax.finetune.data import FinetuneDataError, LabelSpace, read_examples
from gpt_jax.finetune.model import FinetuneModel, extend_vocab, head_params, normalize, weighted_loss
from gpt_jax.loop import Cadence, Run, Task, check_run_folder, log, train_loop
from gpt_jax.model import count_params
from gpt_jax.utils import atomic_write


# ----------------------------------------------------------------------------------------- models


def _abstract_params(model: FinetuneModel, n_seq: int):
    ids = np.zeros((1, n_seq, 8), np.int32)
    return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), ids, np.ones((1, n_seq), np.int32),
                                             with_lm=True)["params"])


def load_finetuned(workdir: str, sharding=None):
    """(model, params, meta) of a fine-tuning run's newest checkpoint."""
    meta = ckpt_lib.newest_meta(workdir)
    if meta is None:
        raise ckpt_lib.CheckpointError(f"no fine-tuning checkpoint in {workdir}: run finetune.py --config=... "
                                       f"--workdir={workdir} first")
    if not sources.is_finetuning_run(meta):
        raise ValueError(f"{workdir} is a pre-training run, not a fine-tuning run: sample from it with "
                         f"sample.py --workdir={workdir}, or fine-tune it with --config.init_from={workdir}")
    ft = meta["finetune"]
    labels = LabelSpace.from_meta(ft["labels"])
    model = FinetuneModel(ModelConfig.from_dict(meta["model"]), ft["task"], labels.n_outputs)
    sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    params = ckpt_lib.restore_params(workdir, _abstract_params(model, 1), sharding)
    return model, params, meta


# ----------------------------------------------------------------------------------------- steps


def make_train_step(model: FinetuneModel, tx, mesh, aux_lm_weight: float, regression: bool, schedule,
                    grad_accum_steps: int = 1):
    """The jitted fine-tuning step (`optim.make_train_step` with the task + auxiliary LM loss)."""

    def loss(params, batch, rng, rows):
        return weighted_loss(params, model, batch, rng, True, aux_lm_weight, regression, rows)

    return optim.make_train_step(loss, tx, mesh, grad_accum_steps=grad_accum_steps, schedule=schedule,
                                 normalize=partial(normalize, vocab_size=model.cfg.vocab_size,
                                                   with_lm=aux_lm_weight > 0))


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


def prediction_shares(outputs: np.ndarray, labels: LabelSpace) -> dict:
    """Share of the examples predicted as each class (multiple choice: each answer position), in id order."""
    names = labels.names if labels.kind == "classes" else [f"answer {i}" for i in range(outputs.shape[-1])]
    counts = np.bincount(outputs.argmax(-1), minlength=len(names))
    return {name: float(c / len(outputs)) for name, c in zip(names, counts)}


def scores(outputs: np.ndarray, targets: np.ndarray, labels: LabelSpace) -> dict:
    """Eval metrics: accuracy, loss, the majority-class accuracy and the share of predictions per class
    ("predicted", a dict); for regression Pearson, Spearman, MSE."""
    if labels.kind == "regression":
        from scipy.stats import rankdata  # imported here: heavy, and only regression tasks use it

        pred = outputs[:, 0] * labels.std + labels.mean
        gold = targets.astype(np.float64) * labels.std + labels.mean
        return {"pearson": _pearson(pred, gold), "spearman": _pearson(rankdata(pred), rankdata(gold)),
                "mse": float(np.mean((pred - gold) ** 2))}
    logp = _log_softmax(outputs.astype(np.float64))
    return {"accuracy": float(np.mean(logp.argmax(-1) == targets)),
            "loss": float(-np.mean(logp[np.arange(len(targets)), targets])),
            "majority": float(np.bincount(targets).max() / len(targets)),
            "predicted": prediction_shares(outputs, labels)}


def collapse_warning(s: dict, targets: np.ndarray) -> Optional[str]:
    """A one-line warning when every prediction is the same class (or answer position) while the gold labels are
    not all one; None otherwise."""
    shares = s.get("predicted") or {}
    only = [name for name, share in shares.items() if share == 1.0]
    if not only or len(np.unique(targets)) < 2:
        return None
    return (f"warning: every eval prediction is {only[0]!r} (accuracy {s['accuracy']:.4f} = that class's share): "
            "the classifier has collapsed; raise --config.optim.learning_rate (0 = the width rule) and set "
            "--config.aux_lm_weight=0")


def format_scores(s: dict) -> str:
    if "accuracy" in s:
        predicted = " / ".join(f"{name} {100 * share:.0f}%" for name, share in s.get("predicted", {}).items())
        return (f"accuracy {s['accuracy']:.4f} (majority class {s['majority']:.4f}), loss {s['loss']:.4f}"
                + (f"; predicted {predicted}" if predicted else ""))
    fmt = lambda v: "n/a" if v is None else f"{v:.4f}"
    return f"pearson {fmt(s['pearson'])}, spearman {fmt(s['spearman'])}, mse {s['mse']:.4f}"


def flat_scalars(s: dict, prefix: str = "eval_") -> dict:
    """`scores` as scalars for the metrics log: "predicted" becomes {prefix}predicted_<class> per class."""
    out = {f"{prefix}{k}": v for k, v in s.items() if k != "predicted"}
    for name, share in s.get("predicted", {}).items():
        out[f"{prefix}predicted_{re.sub(r'[^A-Za-z0-9_]+', '_', name)}"] = share
    return out


# ----------------------------------------------------------------------------------------- the run


def _check_config(config) -> tuple[str, bool]:
    task = check_task(config.task)
    check_ranges(config, FINETUNE_RANGES)
    regression = bool(config.regression)
    if regression and task != "similarity":
        raise ValueError(f"regression=True is for the similarity task, not {task}")
    resolve_recipe(config.optim.learning_rate, config.aux_lm_weight, PAPER_WIDTH)  # bad values fail before loading
    return task, regression


def _read_data(config, task: str, regression: bool):
    """(train examples, eval examples or None, LabelSpace); a label the head cannot output fails here, before
    the model is loaded."""
    train_ex = read_examples(config.data.train_file, config.data, task, what="data.train_file")
    eval_ex = (read_examples(config.data.eval_file, config.data, task, what="data.eval_file")
               if config.data.eval_file else None)
    labels = LabelSpace.from_train(train_ex, task, regression, str(config.data.labels))
    for ex in eval_ex or ():
        labels.encode(ex, config.data.eval_file)
    return train_ex, eval_ex, labels


def _model_source(config, workdir: str):
    """(saved meta, ModelConfig with the special tokens, tokenizer, GPT params): from WORKDIR's checkpoint when
    resuming (saved meta set, params None), else from config.init_from (saved meta None)."""
    saved = ckpt_lib.newest_meta(workdir)
    if saved is not None:
        if not sources.is_finetuning_run(saved):
            raise ValueError(f"{workdir} holds a pre-training run; pick another --workdir")
        return saved, ModelConfig.from_dict(saved["model"]), tok_lib.from_meta(saved["tokenizer"]), None
    source = sources.load(config.init_from, what="init_from")
    key = jax.random.fold_in(jax.random.PRNGKey(int(config.seed)), 1)
    model_cfg, gpt_params = extend_vocab(source.config, source.params, formats.EXTRA_TOKENS, key)
    return None, model_cfg, source.tokenizer, gpt_params


def _max_length(config, model_cfg: ModelConfig) -> int:
    max_length = int(config.model.max_length) or model_cfg.block_size
    if not formats.MIN_LENGTH <= max_length <= model_cfg.block_size:
        raise ValueError(f"model.max_length={max_length} must be in [{formats.MIN_LENGTH}, the model's "
                         f"block_size={model_cfg.block_size}]")
    return max_length


def _encode(examples, what: str, config, task, tokenizer, specials, max_length, labels):
    path = config.data.train_file if what == "train" else config.data.eval_file
    enc = formats.encode_examples(examples, task, tokenizer, specials, max_length, labels, path)
    log(f"{what}: {len(enc):,} examples, {enc.n_truncated:,} truncated to {max_length} tokens (from the front of "
        "the longest part)")
    return enc


def _optimizer(config, total_steps: int, learning_rate: float):
    """The paper's schedule: warmup over optim.warmup_fraction of the steps, then the configured decay, peaking at
    the resolved `learning_rate`."""
    optim_cfg = config.optim.copy_and_resolve_references()
    with optim_cfg.unlocked():
        optim_cfg.learning_rate = learning_rate
        optim_cfg.warmup_steps = int(math.ceil(float(config.optim.warmup_fraction) * total_steps))
    return optim.make_optimizer(optim_cfg, total_steps)


def _initial_params(model: FinetuneModel, seed: int, gpt_params, n_seq: int):
    """The pre-trained `gpt_params` and a new head; or, resuming (gpt_params None), their shapes alone."""
    abstract = _abstract_params(model, n_seq)
    if gpt_params is None:
        return abstract
    head = head_params(model.cfg.d_model, model.n_outputs, jax.random.fold_in(jax.random.PRNGKey(seed), 2))
    params = {"gpt": gpt_params, "head": head}
    if jax.tree_util.tree_structure(params) != jax.tree_util.tree_structure(abstract):
        raise ValueError("the pre-trained parameters do not match their model config")
    return params


def _evaluation(model, enc, labels, batch_size: int, max_length: int, mesh, steps_per_epoch: int):
    """The loop's evaluation hook: task metrics and the prediction distribution on the eval file, and a warning
    line when the predictions have collapsed to one class."""
    predict_step = make_predict_step(model, mesh)

    def evaluate(params, step: int):
        s = scores(predict_outputs(predict_step, params, enc, batch_size, max_length, mesh), enc.targets, labels)
        line = f"epoch {step / steps_per_epoch:g} (step {step}): eval {format_scores(s)}"
        warning = collapse_warning(s, enc.targets)
        return flat_scalars(s), (line + "\n" + warning if warning else line)

    return evaluate


def _run_meta(config, task, labels, model_cfg, tokenizer, max_length, specials) -> dict:
    ft_meta = {"task": task, "labels": labels.to_meta(), "max_length": max_length,
               "init_from": str(config.init_from), "specials": dataclasses.asdict(specials)}
    return {"model": model_cfg.to_dict(), "tokenizer": tokenizer.meta(), "finetune": ft_meta,
            "config": config.to_dict()}


@dataclasses.dataclass
class _Setup:
    """What a fine-tuning run derives from its config, data and model source before it trains."""
    task: str
    regression: bool
    learning_rate: float
    aux_lm_weight: float
    recipe: str  # where the learning rate and aux LM weight came from (the config, or the width rule)
    labels: LabelSpace
    model: FinetuneModel
    params: object  # fresh {"gpt", "head"} params, or their shapes when resuming
    meta: dict
    max_length: int
    train_enc: formats.Encoded
    eval_enc: Optional[formats.Encoded]


def _setup(config, workdir: str) -> _Setup:
    task, regression = _check_config(config)
    train_ex, eval_ex, labels = _read_data(config, task, regression)
    saved, model_cfg, tokenizer, gpt_params = _model_source(config, workdir)
    model_cfg = model_cfg.replace(dropout=float(config.model.dropout), dtype=config.model.dtype, remat="auto",
                                  attention="xla").for_platform(jax.devices()[0].platform)  # dtype "auto" settled
    max_length = _max_length(config, model_cfg)
    lr, aux, recipe = resolve_recipe(config.optim.learning_rate, config.aux_lm_weight, model_cfg.d_model)
    specials = formats.Specials.after(model_cfg.vocab_size)
    meta = _run_meta(config, task, labels, model_cfg, tokenizer, max_length, specials)
    if saved is not None and (saved["finetune"] != meta["finetune"] or saved["model"] != meta["model"]):
        raise ValueError(f"{workdir} holds another fine-tuning run (task, labels, model or init_from differ); "
                         "use a new --workdir")
    encode = partial(_encode, config=config, task=task, tokenizer=tokenizer, specials=specials,
                     max_length=max_length, labels=labels)
    train_enc = encode(train_ex, "train")
    model = FinetuneModel(model_cfg, task, labels.n_outputs, float(config.model.clf_dropout))
    params = _initial_params(model, int(config.seed), gpt_params, train_enc.n_seq)
    return _Setup(task, regression, lr, aux, recipe, labels, model, params, meta, max_length, train_enc,
                  encode(eval_ex, "eval") if eval_ex else None)


def _task(config, setup: _Setup, tx, schedule, mesh, steps_per_epoch: int) -> Task:
    batch_size, eval_batch_size = int(config.train.batch_size), int(config.train.eval_batch_size)
    step = make_train_step(setup.model, tx, mesh, setup.aux_lm_weight, setup.regression, schedule,
                           int(config.train.grad_accum_steps))
    evaluate = None
    if setup.eval_enc is not None:
        evaluate = _evaluation(setup.model, setup.eval_enc, setup.labels, eval_batch_size, setup.max_length, mesh,
                               steps_per_epoch)
    return Task(train_step=step, evaluate=evaluate,
                batch=partial(formats.train_batch, setup.train_enc, batch_size, setup.max_length, int(config.seed)),
                log_fields=lambda s: {"epoch": s / steps_per_epoch})


def finetune(config, workdir: str) -> dict:
    """Fine-tunes (resuming from WORKDIR's newest checkpoint if it has one); returns the final metrics."""
    t_start, train_cfg, seed = time.time(), config.train, int(config.seed)
    check_run_folder(workdir)
    setup = _setup(config, workdir)
    batch_size = int(train_cfg.batch_size)
    mesh = shard_lib.data_mesh(batch_size, int(train_cfg.grad_accum_steps), count_params(setup.params))
    shard_lib.check_batch_size(int(train_cfg.eval_batch_size), mesh, "train.eval_batch_size")
    steps_per_epoch = formats.steps_per_epoch(len(setup.train_enc), batch_size)
    total = int(train_cfg.epochs) * steps_per_epoch
    tx, schedule = _optimizer(config, total, setup.learning_rate)
    with Run(workdir, max_to_keep=int(train_cfg.max_to_keep), tensorboard=bool(train_cfg.tensorboard)) as run:
        state = run.resume_or_init(setup.meta, optim.abstract_state(tx, seed, mesh, setup.params),
                                   partial(optim.init_state, tx, seed, mesh, setup.params))
        setup.params = None  # the state holds its own copy
        what = {"classes": f"labels {setup.labels.names}", "regression": "a score", "choice": "a score per answer"}
        log(f"fine-tuning {setup.task} ({what[setup.labels.kind]}) from {config.init_from or 'the checkpoint'}: "
            f"{train_cfg.epochs} epochs x {steps_per_epoch} steps of {batch_size}, lr {setup.learning_rate:.3g}, "
            f"aux LM weight {setup.aux_lm_weight:g} ({setup.recipe}); {mesh.devices.size} x "
            f"{mesh.devices.flat[0].platform}")
        cadence = Cadence(total, int(train_cfg.log_every), steps_per_epoch, steps_per_epoch,
                          bool(train_cfg.progress_bar))
        state, last_eval = train_loop(run, state, _task(config, setup, tx, schedule, mesh, steps_per_epoch), cadence,
                                      mesh, setup.learning_rate)
    run.plot()
    result = dict(last_eval, learning_rate=setup.learning_rate, aux_lm_weight=setup.aux_lm_weight,
                  step=int(jax.device_get(state.step)), epochs=int(train_cfg.epochs), n_train=len(setup.train_enc),
                  n_truncated=setup.train_enc.n_truncated, wall_s=time.time() - t_start)
    print(f"fine-tuned in {result['wall_s']:.0f} s; checkpoint in {run.ckpt.directory}", flush=True)
    return result


# ----------------------------------------------------------------------------------------- prediction


def check_output(path: str, overwrite: bool) -> None:
    if os.path.exists(path) and not overwrite:
        raise FinetuneDataError(f"{path} already exists; pass --overwrite to replace it, or another --predict_out")


def predict(workdir: str, path: str, out_path: Optional[str] = None, *, overwrite: bool = False,
            data_cfg=None, batch_size: int = 0) -> str:
    """Writes one JSON line per example of `path` (read with `data_cfg`, default the run's own data config):
    {"label", "probs"} for classes and answers, {"score"} for regression. Returns the output path."""
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
    log(f"predict: {len(enc):,} examples, {enc.n_truncated:,} truncated to {ft['max_length']} tokens")
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
            log(f"not scored: {e}")
    print(f"wrote {len(rows):,} predictions to {out_path}", flush=True)
    return out_path
