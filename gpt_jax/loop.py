"""The one training loop, used by pre-training and fine-tuning alike.

`Run` is a run folder: its checkpoints, metrics log and saved meta, and the state resumed from it (or created).
`train_loop` steps a `Task` (train step, batch at step s, evaluation hook) on a `Cadence` (log / eval /
checkpoint intervals), with the progress bar, tokens/s and MFU, the non-finite-loss stop, and Ctrl-C / SIGTERM
deferred to a step boundary and checkpointed. Pre-training and fine-tuning differ only in their Task.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from typing import Any, Callable, Optional

import jax
from tqdm import tqdm

from gpt_jax import checkpoint as ckpt_lib
from gpt_jax import metrics as metrics_lib
from gpt_jax import sharding as shard_lib
from gpt_jax.utils import write_json


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclasses.dataclass
class Cadence:
    total_steps: int  # optimizer steps of the whole run
    log_every: int  # steps between train-metric rows (each waits for the device); also at every evaluation
    eval_every: int = 0  # steps between evaluations (0: only at the end); always at the last step
    checkpoint_every: int = 0  # steps between checkpoints (0: only at the end); always at the last step
    progress_bar: bool = True

    def due(self, step: int, every: int) -> bool:
        return step == self.total_steps or (every > 0 and step % every == 0)


@dataclasses.dataclass
class Task:
    """What the loop runs: pre-training and fine-tuning each build one."""
    train_step: Callable  # (state, device batch) -> (state, metrics with "loss")
    batch: Callable[[int], dict]  # 0-based step s -> the host batch of step s (a pure function of seed and s)
    evaluate: Optional[Callable[[Any, int], tuple[dict, str]]] = None  # (params, step) -> (scalars, line to print)
    log_fields: Callable[[int], dict] = lambda step: {}  # extra scalars on each train row (e.g. the epoch)
    tokens_per_step: int = 0  # for tokens/s and MFU (0: not reported)
    flops_per_token: float = 0.0  # model FLOPs per trained token, for MFU
    peak_flops: float = 0.0  # device peak FLOP/s, for MFU (0: not reported)


class Run:
    """A run folder: `checkpoints/` (Orbax), `metrics.jsonl` (+ TensorBoard), `config.json`, `loss.png`."""

    def __init__(self, workdir: str, meta: dict, *, max_to_keep: int = 3, tensorboard: bool = True):
        os.makedirs(workdir, exist_ok=True)
        self.workdir, self.meta = workdir, meta
        self.ckpt = ckpt_lib.Checkpointer(workdir, max_to_keep=max_to_keep or None)
        self.writer = metrics_lib.MetricsWriter(workdir, tensorboard=tensorboard)

    def resume_or_init(self, abstract_state, init: Callable[[], Any]):
        """The newest checkpoint's state restored onto `abstract_state`'s shardings, or `init()` when there is none;
        the metrics log is cut back to the restored step, and config.json written."""
        latest = self.ckpt.latest_step()
        if latest is None:
            state = init()
        else:
            state = self.ckpt.restore_state(latest, abstract_state)
            self.writer.truncate_after(latest)
            log(f"resumed from {self.ckpt.directory} at step {latest}")
        write_json(os.path.join(self.workdir, "config.json"), self.meta)
        return state

    def close(self) -> None:
        """Waits for the last checkpoint, closes the logs and draws loss.png."""
        self.ckpt.wait()
        self.ckpt.close()
        self.writer.close()
        if os.path.exists(self.writer.path):
            metrics_lib.plot_losses(self.writer.path, os.path.join(self.workdir, "loss.png"))


class _Throughput:
    """Tokens/s and MFU between two train-metric rows; evaluation time does not count."""

    def __init__(self, task: Task, step: int):
        self.task, self.step, self.time = task, step, time.time()

    def fields(self, step: int) -> dict:
        now = time.time()
        if not self.task.tokens_per_step:
            self.step, self.time = step, now
            return {}
        tokens_per_sec = (step - self.step) * self.task.tokens_per_step / max(now - self.time, 1e-9)
        self.step, self.time = step, now
        peak = self.task.peak_flops
        mfu = self.task.flops_per_token * tokens_per_sec / peak if peak else None
        return {"tokens_per_sec": tokens_per_sec, "mfu": mfu}

    def restart_clock(self) -> None:
        self.time = time.time()


def _log_train(run: Run, bar, task: Task, step: int, metrics: dict, throughput: _Throughput) -> None:
    metrics = jax.device_get(metrics)
    loss = float(metrics.pop("loss"))
    fields = {**task.log_fields(step), "train_loss": loss, **metrics, **throughput.fields(step)}
    run.writer.write(step, **fields)
    shown = {"loss": f"{loss:.4f}"}
    if "tokens_per_sec" in fields:
        shown.update(tok_s=f"{fields['tokens_per_sec']:,.0f}", mfu=f"{100 * (fields['mfu'] or 0):.1f}%")
    bar.set_postfix(shown)
    if not math.isfinite(loss):
        raise FloatingPointError(f"loss is {loss} at step {step}; lower optim.learning_rate")


def _evaluate(run: Run, bar, task: Task, params, step: int, record: bool = True) -> dict:
    scalars, line = task.evaluate(params, step)
    if record:  # a finished run evaluated again logs nothing: its metrics hold each step once
        run.writer.write(step, **task.log_fields(step), **scalars)
    bar.write(line, file=sys.stdout)
    return scalars


def train_loop(run: Run, state, task: Task, cadence: Cadence, mesh) -> tuple[Any, dict]:
    """Steps from the state's step to `cadence.total_steps`; returns (final state, the last evaluation's scalars).
    A run that is already finished is evaluated once more."""
    start = int(jax.device_get(state.step))
    if start >= cadence.total_steps:
        log(f"{run.workdir} already finished at step {start}; evaluating the final checkpoint")
    bar = tqdm(total=cadence.total_steps, initial=start, disable=not cadence.progress_bar, dynamic_ncols=True,
               file=sys.stderr)
    throughput, last_eval = _Throughput(task, start), {}
    with ckpt_lib.interruptible(run.ckpt, lambda: state, start, run.meta) as stop:
        try:
            for step in range(start + 1, cadence.total_steps + 1):
                state, metrics = task.train_step(state, shard_lib.put_batch(task.batch(step - 1), mesh))
                evaluating = task.evaluate is not None and cadence.due(step, cadence.eval_every)
                if evaluating or cadence.due(step, cadence.log_every):
                    _log_train(run, bar, task, step, metrics, throughput)
                if evaluating:
                    last_eval = _evaluate(run, bar, task, state.params, step)
                    throughput.restart_clock()
                if cadence.due(step, cadence.checkpoint_every):
                    run.ckpt.save_state(step, state, run.meta)
                bar.update(1)
                if stop.is_set():  # Ctrl-C / SIGTERM, deferred to this step boundary
                    raise ckpt_lib.StopRequested
            if start >= cadence.total_steps and task.evaluate is not None:
                last_eval = _evaluate(run, bar, task, state.params, start, record=False)
        finally:
            bar.close()
    return state, last_eval
