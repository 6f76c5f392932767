"""The one training loop, used by pre-training and fine-tuning alike.

`Run` is a run folder: its checkpoints, metrics log and saved meta, the state resumed from it (or created), and
a lock that keeps a second process out. `train_loop` steps a `Task` (train step, batch at step s, evaluation hook)
on a `Cadence` (log / eval / checkpoint intervals), with the progress bar, tokens/s and MFU, Ctrl-C / SIGTERM
deferred to a step boundary and checkpointed, and the non-finite guard: every step's `finite` flag (computed in the
jitted step) is read one step later, and all of them before any checkpoint, so a diverged state is never saved and
the run stops at the step where the loss or gradients stopped being finite. Pre-training and fine-tuning differ
only in their Task.
"""

from __future__ import annotations

import dataclasses
import fcntl
import math
import os
import shutil
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


class DivergedError(RuntimeError):
    """The loss, the gradients or an evaluation stopped being finite."""


class WorkdirBusyError(RuntimeError):
    """Another live process trains in this run folder."""


class WorkdirLock:
    """An exclusive lock on a run folder (`WORKDIR/.lock`, flock): held while a process trains there, released when
    it exits however it exits (kill -9 included: the kernel drops the lock with the process). Readers (sample.py,
    predictions) never take it."""

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, ".lock")
        self.file = open(self.path, "a+")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.seek(0)
            owner = self.file.read().strip() or "?"
            self.file.close()
            raise WorkdirBusyError(f"{workdir} is in use by another training process (pid {owner}); wait for it to "
                                   "finish, stop it, or pass another --workdir") from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(str(os.getpid()))
        self.file.flush()

    def release(self) -> None:
        if not self.file.closed:
            fcntl.flock(self.file, fcntl.LOCK_UN)
            self.file.close()


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


RUN_FILES = ("checkpoints", "config.json", ".lock", "data", "metrics.jsonl")  # what makes a folder a run folder


def check_run_folder(workdir: str) -> None:
    """A run folder must be new, empty or a gpt-jax run: a folder holding other things is someone else's, and
    nothing is written into it."""
    if os.path.isdir(workdir) and os.listdir(workdir) and not any(
            os.path.exists(os.path.join(workdir, name)) for name in RUN_FILES):
        raise ValueError(f"{workdir} is not a gpt-jax run folder (it holds other files); pass a new or empty "
                         "--workdir")
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ValueError(f"{workdir} is a file, not a folder; pass a new or empty --workdir")


class Run:
    """A run folder: `checkpoints/` (Orbax), `metrics.jsonl` (+ TensorBoard), `config.json`, `loss.png`, `.lock`.

    A context manager: leaving it waits for the last checkpoint and releases the folder, however the run ends."""

    def __init__(self, workdir: str, *, max_to_keep: int = 3, tensorboard: bool = True):
        check_run_folder(workdir)
        os.makedirs(workdir, exist_ok=True)
        self.workdir, self.meta = workdir, {}
        self.lock = WorkdirLock(workdir)
        self.ckpt = ckpt_lib.Checkpointer(workdir, max_to_keep=max_to_keep or None)
        self.writer = metrics_lib.MetricsWriter(workdir, tensorboard=tensorboard)

    def __enter__(self) -> "Run":
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.ckpt.wait()
            self.ckpt.close()
            self.writer.close()
        finally:
            self.lock.release()

    def resume_or_init(self, meta: dict, abstract_state, init: Callable[[], Any], restore_step: int = 0):
        """The state of the newest checkpoint (or of `restore_step`), restored onto `abstract_state`'s shardings; or
        `init()` when there is none. The metrics log is cut back to the restored step (to nothing for a fresh
        start: rows of an attempt killed before its first checkpoint), and config.json written with `meta`, which
        every checkpoint of the run carries too."""
        self.meta = meta
        step = self._step_to_restore(restore_step)
        if step is None:
            state = init()
        else:
            state = self.ckpt.restore_state(step, abstract_state)
            log(f"resumed from {self.ckpt.directory} at step {step}")
        self.writer.truncate_after(step or 0)
        write_json(os.path.join(self.workdir, "config.json"), self.meta)
        return state

    def _step_to_restore(self, restore_step: int):
        """The newest step, or `restore_step`; steps after it are moved to `checkpoints_set_aside/` (kept, not
        deleted), so the run continues from it and saves its own steps again."""
        steps = self.ckpt.manager.all_steps()
        if not restore_step:
            return max(steps) if steps else None
        if restore_step not in steps:
            raise ckpt_lib.CheckpointError(f"train.restore_step={restore_step} is not a checkpoint in "
                                           f"{self.ckpt.directory}; its steps are {sorted(steps) or 'none'}")
        later = sorted(s for s in steps if s > restore_step)
        if later:
            aside = os.path.join(self.workdir, "checkpoints_set_aside")
            os.makedirs(aside, exist_ok=True)
            for s in later:
                shutil.move(os.path.join(self.ckpt.directory, str(s)), os.path.join(aside, str(s)))
            self.ckpt.manager.reload()
            log(f"restore_step={restore_step}: later steps {later} moved to {aside}")
        return restore_step

    def plot(self) -> None:
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


class _FiniteGuard:
    """The `finite` flags of the steps dispatched but not yet read; reading a step's flag once the next step is
    dispatched costs no device idle time."""

    def __init__(self, run: Run, learning_rate: float):
        self.run, self.learning_rate, self.pending = run, learning_rate, []

    def add(self, step: int, finite) -> None:
        self.pending.append((step, finite))

    def check(self, keep_last: int = 0) -> None:
        """Reads all pending flags but the newest `keep_last`; raises DivergedError at the first non-finite step."""
        while len(self.pending) > keep_last:
            step, finite = self.pending.pop(0)
            if not bool(finite):
                kept = self.run.ckpt.latest_step()
                kept = f"the newest checkpoint (step {kept}) is finite and kept" if kept else "nothing was saved"
                raise DivergedError(f"loss or gradients stopped being finite at step {step}; {kept}: lower "
                                    f"optim.learning_rate (now {self.learning_rate:g}) or raise optim.warmup_steps, "
                                    "then rerun")


def _log_train(run: Run, bar, task: Task, step: int, metrics: dict, throughput: _Throughput) -> None:
    metrics = jax.device_get(metrics)
    metrics.pop("finite", None)
    loss = float(metrics.pop("loss"))
    fields = {**task.log_fields(step), "train_loss": loss, **metrics, **throughput.fields(step)}
    run.writer.write(step, **fields)
    shown = {"loss": f"{loss:.4f}"}
    if "tokens_per_sec" in fields:
        shown.update(tok_s=f"{fields['tokens_per_sec']:,.0f}", mfu=f"{100 * (fields['mfu'] or 0):.1f}%")
    bar.set_postfix(shown)


def _evaluate(run: Run, bar, task: Task, params, step: int, record: bool = True) -> dict:
    scalars, line = task.evaluate(params, step)
    if any(isinstance(v, float) and not math.isfinite(v) for v in scalars.values()):
        raise DivergedError(f"evaluation at step {step} is not finite ({line}); lower optim.learning_rate, then "
                            "rerun")
    if record:  # a finished run evaluated again logs nothing: its metrics hold each step once
        run.writer.write(step, **task.log_fields(step), **scalars)
    bar.write(line, file=sys.stdout)
    return scalars


def train_loop(run: Run, state, task: Task, cadence: Cadence, mesh, learning_rate: float = 0.0
               ) -> tuple[Any, dict]:
    """Steps from the state's step to `cadence.total_steps`; returns (final state, the last evaluation's scalars).
    A run that is already finished is evaluated once more (and logs nothing)."""
    start = int(jax.device_get(state.step))
    if start >= cadence.total_steps:
        log(f"{run.workdir} already finished at step {start}; evaluating the final checkpoint")
    bar = tqdm(total=cadence.total_steps, initial=start, disable=not cadence.progress_bar, dynamic_ncols=True,
               file=sys.stderr)
    throughput, last_eval, guard = _Throughput(task, start), {}, _FiniteGuard(run, learning_rate)

    def checked_state():  # the state to save on Ctrl-C: only once every step so far is known to be finite
        guard.check()
        return state

    with ckpt_lib.interruptible(run.ckpt, checked_state, start, run.meta) as stop:
        try:
            for step in range(start + 1, cadence.total_steps + 1):
                state, metrics = task.train_step(state, shard_lib.put_batch(task.batch(step - 1), mesh))
                guard.add(step, metrics["finite"])
                guard.check(keep_last=1)
                evaluating = task.evaluate is not None and cadence.due(step, cadence.eval_every)
                if evaluating or cadence.due(step, cadence.log_every):
                    guard.check()
                    _log_train(run, bar, task, step, metrics, throughput)
                if evaluating:
                    last_eval = _evaluate(run, bar, task, state.params, step)
                    throughput.restart_clock()
                if cadence.due(step, cadence.checkpoint_every):
                    guard.check()
                    run.ckpt.save_state(step, state, run.meta)
                bar.update(1)
                if stop.is_set():  # Ctrl-C / SIGTERM, deferred to this step boundary
                    raise ckpt_lib.StopRequested(stop.signum)
            if start >= cadence.total_steps and task.evaluate is not None:
                last_eval = _evaluate(run, bar, task, state.params, start, record=False)
        finally:
            bar.close()
    return state, last_eval
