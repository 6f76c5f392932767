"""Runs that go wrong, with real processes where it matters: divergence never replaces good checkpoints, one
process per run folder, metrics without duplicates, numbers validated, changed data refused, exit codes."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import ROOT, run_cli
from gpt_jax import checkpoint as ckpt_lib
from gpt_jax.config import ModelConfig
from gpt_jax.model import init_params
from gpt_jax.metrics import read_metrics

TINY = ["train.py", "--config=configs/tiny.py", "--config.train.progress_bar=False",
        "--config.train.tensorboard=False", "--config.train.eval_max_windows=4"]


def steps_saved(workdir):
    folder = ckpt_lib.checkpoint_dir(workdir)
    return sorted(int(n) for n in os.listdir(folder) if n.isdigit()) if os.path.isdir(folder) else []


def one_line_error(proc, *needles, only=False):
    """Exit 2, no traceback, and the cause as the last line of stderr (its only line when `only`: nothing ran)."""
    assert proc.returncode == 2, proc.stderr[-2000:]
    err = proc.stderr.strip()
    last = err.splitlines()[-1]
    assert "Traceback" not in err and last.startswith("error: "), err[-2000:]
    assert not only or err == last, err[-2000:]
    for needle in needles:
        assert needle in last, err


def start(workdir, *flags):
    return subprocess.Popen([sys.executable, *TINY, f"--workdir={workdir}", *flags], cwd=ROOT,
                            env=dict(os.environ, GPT_JAX_COMPILE_CACHE=""), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for(condition, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline and not condition():
        time.sleep(0.05)
    assert condition(), "timed out"


def test_a_second_trainer_is_refused_and_sigterm_saves_and_exits_143(tmp_path):
    workdir = str(tmp_path / "run")
    first = start(workdir, "--config.train.max_steps=100000", "--config.train.checkpoint_every=10")
    try:
        wait_for(lambda: steps_saved(workdir))
        second = run_cli([*TINY, f"--workdir={workdir}", "--config.train.max_steps=5"], check=False)
        one_line_error(second, "in use by another training process", f"pid {first.pid}", only=True)
        first.send_signal(signal.SIGTERM)
        _, err = first.communicate(timeout=120)
    finally:
        first.kill()
    assert first.returncode == 128 + signal.SIGTERM, err[-2000:]
    step = int(err.split("interrupted at step ")[1].split(";")[0])
    assert max(steps_saved(workdir)) == step
    resumed = run_cli([*TINY, f"--workdir={workdir}", f"--config.train.max_steps={step + 2}"])
    assert f"resumed from {ckpt_lib.checkpoint_dir(workdir)} at step {step}" in resumed.stderr


def test_divergence_stops_at_its_step_and_keeps_the_finite_checkpoints(tmp_path):
    workdir = str(tmp_path / "run")
    proc = run_cli([*TINY, f"--workdir={workdir}", "--config.optim.learning_rate=1e12", "--config.optim.grad_clip=0",
                    "--config.optim.warmup_steps=0", "--config.train.checkpoint_every=1",
                    "--config.train.max_to_keep=2", "--config.train.max_steps=200"], check=False)
    one_line_error(proc, "stopped being finite at step", "lower optim.learning_rate")
    bad = int(proc.stderr.split("finite at step ")[1].split(";")[0])
    saved = steps_saved(workdir)
    assert saved and max(saved) < bad
    ckpt = ckpt_lib.Checkpointer(workdir, create=False)
    cfg = ModelConfig.from_dict(ckpt.read_meta(saved[-1])["model"])
    shapes = jax.eval_shape(lambda: init_params(cfg, jax.random.PRNGKey(0)))
    one_device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    for step in saved:  # every checkpoint left holds finite parameters
        params = ckpt.restore(step, {"params": ckpt_lib.abstract_like(shapes, one_device)})["params"]
        assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree_util.tree_leaves(params))
    ckpt.close()


def test_kill_9_before_the_first_checkpoint_leaves_no_duplicate_metrics(tmp_path):
    workdir = str(tmp_path / "run")
    metrics = os.path.join(workdir, "metrics.jsonl")
    proc = start(workdir, "--config.train.max_steps=100000", "--config.train.checkpoint_every=0",
                 "--config.train.log_every=1")
    try:
        wait_for(lambda: os.path.exists(metrics) and len(read_metrics(metrics)) >= 3)
    finally:
        proc.kill()
        proc.communicate()
    assert not steps_saved(workdir)
    run_cli([*TINY, f"--workdir={workdir}", "--config.train.max_steps=6", "--config.train.log_every=1"])
    steps = [r["step"] for r in read_metrics(metrics) if "train_loss" in r]
    assert steps == list(range(1, 7))


@pytest.mark.parametrize("flag,message", [
    ("--config.train.batch_size=0", "train.batch_size must be an integer in [1, inf), got 0"),
    ("--config.optim.learning_rate=-0.1", "optim.learning_rate must be a number in (0, inf), got -0.1"),
    ("--config.optim.learning_rate=nan", "optim.learning_rate must be a number in (0, inf), got nan"),
    ("--config.optim.grad_clip=-1", "optim.grad_clip must be a number in [0, inf)"),
    ("--config.train.max_steps=-1", "train.max_steps must be an integer in [1, inf), got -1"),
    ("--config.train.log_every=0", "train.log_every must be an integer in [1, inf)"),
    ("--config.seed=-3", "seed must be an integer in [0, 2.14748e+09], got -3"),
    ("--config.sample.top_p=0", "sample.top_p must be a number in (0, 1], got 0"),
])
def test_numbers_out_of_range_are_one_line_errors_before_anything_runs(tmp_path, flag, message):
    workdir = tmp_path / "run"
    one_line_error(run_cli([*TINY, f"--workdir={workdir}", flag], check=False), message, only=True)
    assert not os.path.exists(workdir)  # nothing was touched


def test_changed_data_on_resume_is_refused(tmp_path):
    workdir, corpus = str(tmp_path / "run"), tmp_path / "corpus.txt"
    corpus.write_text("abcd efgh\n" * 400)
    char = [f"--workdir={workdir}", f"--config.data.dataset={corpus}", "--config.data.tokenizer=char",
            "--config.train.max_steps=3"]
    run_cli([*TINY, *char])
    corpus.write_text("ijkl mnop\n" * 400)  # same size of vocabulary, other characters
    one_line_error(run_cli([*TINY, *char[:-1], "--config.train.max_steps=6"], check=False),
                   "tokenizer differs from the one the run")
    other = tmp_path / "other.txt"
    other.write_text("abcd efgh\n" * 400)
    one_line_error(run_cli([*TINY, *char[:1], f"--config.data.dataset={other}", *char[2:]], check=False),
                   "data.dataset differ")
    assert steps_saved(workdir) == [3]


def test_a_damaged_newest_checkpoint_names_restore_step_which_resumes_from_an_earlier_one(tmp_path):
    workdir = str(tmp_path / "run")
    run_cli([*TINY, f"--workdir={workdir}", "--config.train.max_steps=4", "--config.train.checkpoint_every=2"])
    params_dir = os.path.join(ckpt_lib.checkpoint_dir(workdir), "4", "params")
    shutil.rmtree(params_dir)
    os.makedirs(params_dir)
    again = run_cli([*TINY, f"--workdir={workdir}", "--config.train.max_steps=6"], check=False)
    one_line_error(again, "checkpoint step 4", "--config.train.restore_step=2")
    resumed = run_cli([*TINY, f"--workdir={workdir}", "--config.train.max_steps=6",
                       "--config.train.restore_step=2"])
    assert "at step 2" in resumed.stderr and steps_saved(workdir) == [2, 6]
    assert os.listdir(os.path.join(workdir, "checkpoints_set_aside")) == ["4"]  # kept, not deleted
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    assert [r["step"] for r in rows if "val_loss" in r] == [6]


def test_a_folder_holding_other_things_is_not_written_into(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    one_line_error(run_cli([*TINY, f"--workdir={tmp_path}"], check=False), "is not a gpt-jax run folder", only=True)
    assert os.listdir(tmp_path) == ["notes.txt"]


@pytest.mark.parametrize("flag,message", [
    ("--temperature=nan", "--temperature must be a number in [0, inf), got nan"),
    ("--top_p=1.5", "--top_p must be a number in (0, 1], got 1.5"),
    ("--num_samples=0", "--num_samples must be an integer in [1, inf), got 0"),
])
def test_sampling_flags_out_of_range_are_one_line_errors(tmp_path, flag, message):
    one_line_error(run_cli(["sample.py", f"--workdir={tmp_path}", flag], check=False), message, only=True)
