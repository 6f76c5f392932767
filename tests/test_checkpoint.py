"""Checkpointer: save / restore round trip, saving on interrupt, and the training loop's deferred Ctrl-C / SIGTERM
(a signal in the middle of an Orbax save once left a half-made step folder and a hung process)."""

import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from gpt_jax import checkpoint as ckpt_lib
from gpt_jax.optim import TrainState
from gpt_jax.train import train_and_evaluate

META = {"model": {"n_layer": 1}}


def state_at(step: int) -> TrainState:
    params = {"w": jnp.full((64, 64), float(step)), "b": jnp.arange(4.0)}
    return TrainState(step=jnp.asarray(step, jnp.int32), params=params, opt_state={"mu": params["w"] * 2},
                      rng=jax.random.PRNGKey(step))


def finished(workdir):
    return sorted(int(n) for n in os.listdir(ckpt_lib.checkpoint_dir(workdir)) if n.isdigit())


def test_save_then_restore_round_trip(tmp_path):
    ckpt = ckpt_lib.Checkpointer(str(tmp_path))
    ckpt.save_state(7, state_at(7), META)
    ckpt.wait()
    s = state_at(0)
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = {"params": ckpt_lib.abstract_like(s.params, sharding),
                "train": ckpt_lib.abstract_like({"step": s.step, "rng": s.rng}, sharding)}
    out = ckpt.restore(7, abstract)
    np.testing.assert_array_equal(out["params"]["w"], np.full((64, 64), 7.0))
    assert int(out["train"]["step"]) == 7 and ckpt.read_meta(7) == META
    ckpt.close()


def test_a_checkpoint_of_another_format_is_refused_with_a_clear_error(tmp_path):
    """Checkpoints from before the (out, in) kernel layout carry no format stamp; their square kernels would
    restore silently transposed, so restoring arrays from one fails with a one-line error instead."""
    ckpt = ckpt_lib.Checkpointer(str(tmp_path))
    s = state_at(3)
    ckpt.manager.save(3, args=ocp.args.Composite(  # as gpt-jax wrote them before the stamp
        params=ocp.args.StandardSave(s.params), opt_state=ocp.args.StandardSave(s.opt_state),
        train=ocp.args.StandardSave({"step": s.step, "rng": s.rng}), meta=ocp.args.JsonSave(META)))
    ckpt.wait()
    assert ckpt.read_meta(3) == META  # the meta alone still reads (train.py compares model configs first)
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    with pytest.raises(ckpt_lib.CheckpointError,
                       match=r"has checkpoint format 1 \(Dense kernels stored \(in, out\)\); this gpt-jax reads "
                             r"format 3"):
        ckpt.restore(3, {"params": ckpt_lib.abstract_like(s.params, sharding)})
    assert finished(str(tmp_path)) == [3]  # nothing of the user's is removed


def test_a_checkpoint_with_one_parameter_group_per_layer_is_refused(tmp_path):
    """Format 2 (h_0 ... h_{L-1}, before the layer scan) would not restore onto the stacked layout: a one-line error
    that says which layout it holds, never a silent misread."""
    ckpt = ckpt_lib.Checkpointer(str(tmp_path))
    s = state_at(3)
    ckpt.manager.save(3, args=ocp.args.Composite(
        params=ocp.args.StandardSave(s.params), opt_state=ocp.args.StandardSave(s.opt_state),
        train=ocp.args.StandardSave({"step": s.step, "rng": s.rng}),
        meta=ocp.args.JsonSave({**META, "checkpoint_format": 2})))
    ckpt.wait()
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    with pytest.raises(ckpt_lib.CheckpointError, match=r"format 2 \(one parameter group per layer, h_0 \.\.\. "
                       r"h_\{L-1\}\); this gpt-jax reads format 3 \(the blocks' parameters stacked over layers\)"):
        ckpt.restore(3, {"params": ckpt_lib.abstract_like(s.params, sharding)})


def test_interrupt_saves_the_step_reached(tmp_path):
    ckpt = ckpt_lib.Checkpointer(str(tmp_path))
    ckpt.save_state(20, state_at(20), META)
    assert ckpt.save_on_interrupt(state_at(23), start=0, meta=META) == 23
    assert finished(str(tmp_path)) == [20, 23]
    assert ckpt.save_on_interrupt(state_at(5), start=5, meta=META) == 5  # nothing new since the start: no save
    assert finished(str(tmp_path)) == [20, 23]
    ckpt.close()


def test_interruptible_checkpoints_the_newest_state_on_the_way_out(tmp_path, capsys):
    """The loops' `with interruptible(ckpt, lambda: state, ...)`: the state saved is the one the loop holds when the
    interrupt leaves the block, not the one it started with."""
    ckpt = ckpt_lib.Checkpointer(str(tmp_path))
    state = state_at(0)
    with pytest.raises(ckpt_lib.StopRequested):
        with ckpt_lib.interruptible(ckpt, lambda: state, 0, META) as stop:
            for step in (1, 2, 3):
                state = state_at(step)
                if step == 3:
                    os.kill(os.getpid(), signal.SIGINT)  # deferred: only sets the flag
                if stop.is_set():
                    raise ckpt_lib.StopRequested
    assert finished(str(tmp_path)) == [3]
    assert "interrupted at step 3; checkpoint saved" in capsys.readouterr().err
    with pytest.raises(ValueError):  # anything else propagates without a save
        with ckpt_lib.interruptible(ckpt, lambda: state_at(4), 3, META):
            raise ValueError
    assert finished(str(tmp_path)) == [3]
    ckpt.close()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signals_are_deferred_to_the_loop_then_restored(sig):
    before = signal.getsignal(sig)
    with ckpt_lib.stop_on_signals() as stop:
        assert not stop.is_set()
        os.kill(os.getpid(), sig)  # handled between bytecodes: no KeyboardInterrupt, no termination
        assert stop.is_set()
        assert signal.getsignal(sig) is before  # a second signal would act at once
    assert signal.getsignal(sig) is before
    assert issubclass(ckpt_lib.StopRequested, KeyboardInterrupt)  # the loops' except-clause saves on it


def test_ctrl_c_during_a_checkpoint_save_stops_cleanly_at_that_step(tmp_path, monkeypatch):
    """SIGINT delivered while the loop is inside Orbax's save of step 10 (the CI failure: the KeyboardInterrupt
    landed mid-save, the interrupt handler saved step 10 again, hit 'File exists: 10.orbax-checkpoint-tmp' and
    hung). Now the save completes, the loop stops at step 10 and step 10 is the run's intact last checkpoint."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("tiny", os.path.join(os.path.dirname(__file__), "..", "configs",
                                                                        "tiny.py"))
    tiny = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tiny)
    config = tiny.get_config()
    config.train.max_steps = 1000
    real_save = ckpt_lib.Checkpointer.save

    def save_with_ctrl_c(self, step, *args, **kw):
        os.kill(os.getpid(), signal.SIGINT)  # the user presses Ctrl-C just as the save starts
        return real_save(self, step, *args, **kw)

    monkeypatch.setattr(ckpt_lib.Checkpointer, "save", save_with_ctrl_c)
    workdir = str(tmp_path / "run")
    with pytest.raises(KeyboardInterrupt):
        train_and_evaluate(config, workdir)
    assert finished(workdir) == [10]
    meta = ckpt_lib.Checkpointer(workdir, create=False).read_meta(10)
    assert meta["model"]["n_layer"] == 2
