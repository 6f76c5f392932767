"""Orbax checkpoints of a run: params, optimizer state, step and RNG, plus the run's meta as JSON.

Layout: `WORKDIR/checkpoints/<step>/{params,opt_state,train,meta}`. Orbax writes each step into a temporary
folder and renames it when complete, so a run killed mid-save (kill -9 included) leaves no half-written step
that could be loaded; leftover temporaries are cleaned up on the next start.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp



class CheckpointError(RuntimeError):
    """A workdir with no usable checkpoint."""


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), "checkpoints")


def _no_replica_slicing_on_cpu() -> None:
    """Orbax splits a replicated array's write across its replicas ("replica parallel"), which helps many hosts
    but on CPU devices (threads of one process) only slices every array on device first: one XLA compile per
    array shape at the first save (18 for the char model, about a second). Off on CPU."""
    if jax.devices()[0].platform == "cpu":
        ocp.type_handlers.register_type_handler(
            jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False), override=True)


# Bumped when saved arrays change meaning. 2: Dense kernels stored (out, in), as PyTorch's Linear (1, unmarked:
# (in, out), gpt-jax before that change). Square kernels would restore silently transposed, so it is checked.
# 3: the blocks' parameters stacked over layers, params["h"] (the layer scan), instead of h_0 ... h_{L-1}.
FORMAT = 3
FORMATS = {1: "Dense kernels stored (in, out)", 2: "one parameter group per layer, h_0 ... h_{L-1}",
           3: "the blocks' parameters stacked over layers"}


class Checkpointer:
    def __init__(self, workdir: str, max_to_keep: Optional[int] = 3, create: bool = True):
        _no_replica_slicing_on_cpu()
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=create,
                                               cleanup_tmp_directories=create, read_only=not create)
        self.directory = checkpoint_dir(workdir)
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             item_names=("params", "opt_state", "train", "meta"))

    def latest_step(self) -> Optional[int]:
        return self.manager.latest_step()

    def save(self, step: int, params, opt_state, train: dict, meta: dict) -> None:
        """Saves asynchronously; call `wait()` before relying on the files (done at exit)."""
        self.manager.save(step, args=ocp.args.Composite(
            params=ocp.args.StandardSave(params),
            opt_state=ocp.args.StandardSave(opt_state),
            train=ocp.args.StandardSave(train),
            meta=ocp.args.JsonSave({**meta, "checkpoint_format": FORMAT}),
        ))

    def save_state(self, step: int, state, meta: dict) -> None:
        """A `TrainState` (params, opt_state, step, rng) plus the run's meta."""
        self.save(step, state.params, state.opt_state, {"step": state.step, "rng": state.rng}, meta)

    def save_on_interrupt(self, state, start: int, meta: dict) -> int:
        """Ctrl-C: checkpoint the step reached (unless saved or being saved: `latest_step()` counts a step whose
        asynchronous save is still running), wait for the files; returns that step."""
        done = int(jax.device_get(state.step))
        if done > start and self.latest_step() != done:
            self.save_state(done, state, meta)
        self.wait()
        return done

    def restore(self, step: int, abstract: dict[str, Any]) -> dict[str, Any]:
        """Restores the items named in `abstract` (name -> abstract pytree with shardings, or None for meta)."""
        if any(name != "meta" for name in abstract):
            found = self._restore(step, {"meta": None})["meta"].get("checkpoint_format", 1)
            if found != FORMAT:
                self.close()
                raise CheckpointError(
                    f"checkpoint step {step} in {self.directory} has checkpoint format {found} "
                    f"({FORMATS.get(found, 'unknown')}); this gpt-jax reads format {FORMAT} ({FORMATS[FORMAT]}): "
                    "retrain into a new --workdir, or load it with the gpt-jax version that wrote it")
        return self._restore(step, abstract)

    def _restore(self, step: int, abstract: dict[str, Any]) -> dict[str, Any]:
        args = {}
        for name, target in abstract.items():
            args[name] = ocp.args.JsonRestore() if name == "meta" else ocp.args.StandardRestore(target)
        try:
            return self.manager.restore(step, args=ocp.args.Composite(**args))
        except Exception as e:
            earlier = [s for s in self.manager.all_steps() if s < step]
            self.close()  # the error ends the run
            fix = (f"resume from an earlier step with --config.train.restore_step={max(earlier)} (steps here: "
                   f"{sorted(earlier)})" if earlier else "use a new --workdir")
            raise CheckpointError(
                f"checkpoint step {step} in {self.directory} cannot be read ({type(e).__name__}); it is "
                f"damaged or was written by another model or gpt-jax version: {fix}") from e

    def restore_state(self, step: int, abstract):
        """The `TrainState` saved by `save_state` at `step`, restored onto `abstract`'s shapes and shardings (a
        TrainState of ShapeDtypeStructs, e.g. `optim.abstract_state`)."""
        restored = self.restore(step, {"params": abstract.params, "opt_state": abstract.opt_state,
                                       "train": {"step": abstract.step, "rng": abstract.rng}})
        return abstract.replace(step=restored["train"]["step"], params=restored["params"],
                                opt_state=restored["opt_state"], rng=restored["train"]["rng"])

    def read_meta(self, step: int) -> dict:
        """The meta dict the run saved at `step` (without the checkpoint format stamp)."""
        meta = self._restore(step, {"meta": None})["meta"]
        meta.pop("checkpoint_format", None)
        return meta

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


class StopRequested(KeyboardInterrupt):
    """Raised by a training loop between steps after Ctrl-C or SIGTERM (see `stop_on_signals`); `signum` is the
    signal, so the process can exit with 128 + signum as a shell expects."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__()
        self.signum = int(signum)


class _StopFlag(threading.Event):
    """Set by the first Ctrl-C / SIGTERM; `signum` says which."""
    signum: int = signal.SIGINT


@contextlib.contextmanager
def stop_on_signals():
    """Inside: Ctrl-C (SIGINT) and SIGTERM only set `flag.is_set()`; the training loop checks it between steps,
    raises StopRequested and checkpoints, so the signal never lands inside a half-done step or an Orbax save.
    A second signal acts at once (KeyboardInterrupt / termination). Handlers are only installed on the main
    thread (elsewhere the flag stays unset and signals behave as usual)."""
    flag = _StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def handler(sig, frame):
        flag.signum = sig
        flag.set()
        signal.signal(sig, previous[sig])  # the next one is not deferred

    for sig in previous:
        signal.signal(sig, handler)
    try:
        yield flag
    finally:
        for sig, h in previous.items():
            signal.signal(sig, h)


@contextlib.contextmanager
def interruptible(ckpt: "Checkpointer", current_state, start: int, meta: dict):
    """A training loop's Ctrl-C / SIGTERM handling: inside, signals are deferred (`stop_on_signals`; the loop raises
    StopRequested at a step boundary once `flag.is_set()`), and a KeyboardInterrupt leaving the block checkpoints
    `current_state()` (the loop's newest state, read when it happens) before it propagates."""
    with stop_on_signals() as flag:
        try:
            yield flag
        except KeyboardInterrupt:
            done = ckpt.save_on_interrupt(current_state(), start, meta)
            print(f"\ninterrupted at step {done}; checkpoint saved, rerun the same command to resume",
                  file=sys.stderr, flush=True)
            raise


def abstract_like(tree, sharding):
    """ShapeDtypeStructs of `tree` (arrays or ShapeDtypeStructs) placed with `sharding`."""
    return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def newest_meta(workdir: str) -> Optional[dict]:
    """The meta saved with WORKDIR's newest complete checkpoint; None when it has none."""
    if not os.path.isdir(checkpoint_dir(workdir)):
        return None
    ckpt = Checkpointer(workdir, create=False)
    try:
        step = ckpt.latest_step()
        return None if step is None else ckpt.read_meta(step)
    finally:
        ckpt.close()


def restore_params(workdir: str, abstract_params, sharding) -> Any:
    """The params of WORKDIR's newest checkpoint, restored onto `sharding` with `abstract_params`' shapes."""
    ckpt = Checkpointer(workdir, create=False)
    try:
        step = ckpt.latest_step()
        return ckpt.restore(step, {"params": abstract_like(abstract_params, sharding)})["params"]
    finally:
        ckpt.close()
