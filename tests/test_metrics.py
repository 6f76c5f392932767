"""Run logs: metrics.jsonl, TensorBoard event files (read back record by record), resume truncation."""

import glob
import os
import struct
import sys

from conftest import run_cli
from gpt_jax.metrics import MetricsWriter, read_metrics


def tensorboard_scalars(logdir):
    """(tag, step, value) of every scalar in the event files under logdir (TFRecord framing: length, its crc,
    the Event proto, its crc)."""
    from tensorboardX.proto.event_pb2 import Event

    out = []
    for path in glob.glob(os.path.join(logdir, "events.out.tfevents.*")):
        data = open(path, "rb").read()
        i = 0
        while i < len(data):
            (n,) = struct.unpack("<Q", data[i:i + 8])
            event = Event.FromString(data[i + 12:i + 12 + n])
            i += 12 + n + 4
            out += [(v.tag, event.step, v.simple_value) for v in event.summary.value]
    return out


def test_scalars_reach_jsonl_and_tensorboard(tmp_path):
    w = MetricsWriter(str(tmp_path), tensorboard=True)
    w.write(10, train_loss=2.5, mfu=None)
    w.write(20, train_loss=2.0, val_loss=2.25)
    w.close()
    assert read_metrics(w.path) == [{"step": 10, "train_loss": 2.5, "mfu": None},
                                    {"step": 20, "train_loss": 2.0, "val_loss": 2.25}]
    assert sorted(tensorboard_scalars(str(tmp_path / "tensorboard"))) == [
        ("train_loss", 10, 2.5), ("train_loss", 20, 2.0), ("val_loss", 20, 2.25)]


def test_resume_truncates_later_events_and_a_cut_line_is_skipped(tmp_path):
    w = MetricsWriter(str(tmp_path), tensorboard=False)
    for step in (10, 20, 30):
        w.write(step, train_loss=1.0 / step)
    with open(w.path, "a") as f:
        f.write('{"step": 40, "train_lo')  # a line cut short by kill -9
    assert [r["step"] for r in read_metrics(w.path)] == [10, 20, 30]
    w.truncate_after(20)
    assert [r["step"] for r in read_metrics(w.path)] == [10, 20]


def test_the_tensorboard_writer_does_not_import_torch(tmp_path):
    """tensorboardX imports torch when installed (seconds of start-up); the training CLI never needs it."""
    code = ("import sys; from gpt_jax.metrics import MetricsWriter; "
            f"MetricsWriter({str(tmp_path)!r}).write(1, loss=1.0); print('torch' in sys.modules)")
    assert run_cli(["-c", code]).stdout.strip() == "False"
