"""End to end through the command lines, on configs/tiny.py: train, kill -9, resume, sample; bad inputs."""

import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, run_cli
from gpt_jax.metrics import read_metrics

TRAIN = ["train.py", "--config=configs/tiny.py", "--config.train.max_steps=60", "--config.train.checkpoint_every=10",
         "--config.train.log_every=1", "--config.train.eval_every=30"]


def by_step(workdir, key):
    return {r["step"]: r[key] for r in read_metrics(os.path.join(workdir, "metrics.jsonl")) if key in r}


def finished_steps(workdir):
    d = os.path.join(workdir, "checkpoints")
    return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if os.path.isdir(d) else []


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An uninterrupted run, and the same run killed with SIGKILL after its step-20 checkpoint, then resumed."""
    tmp = tmp_path_factory.mktemp("runs")
    full, killed = str(tmp / "full"), str(tmp / "killed")
    first = run_cli(TRAIN + [f"--workdir={full}"])
    env = dict(os.environ, GPT_JAX_COMPILE_CACHE="")
    proc = subprocess.Popen([sys.executable, *TRAIN, f"--workdir={killed}"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not any(s >= 20 for s in finished_steps(killed)):
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    at_kill = finished_steps(killed)
    resumed = run_cli(TRAIN + [f"--workdir={killed}"])
    return {"full": full, "killed": killed, "at_kill": at_kill, "first": first, "resumed": resumed,
            "returncode": proc.returncode}


def test_train_writes_run_artifacts(runs):
    full = runs["full"]
    assert "final val loss" in runs["first"].stdout.strip().splitlines()[-1]
    for name in ("metrics.jsonl", "loss.png", "config.json", "data/manifest.json", "data/train_000000.bin"):
        assert os.path.exists(os.path.join(full, name)), name
    assert finished_steps(full) == [40, 50, 60]  # max_to_keep = 3
    rows = read_metrics(os.path.join(full, "metrics.jsonl"))
    assert {"step", "train_loss", "lr", "tokens_per_sec", "mfu"} <= set(rows[0])
    val = by_step(full, "val_loss")
    assert sorted(val) == [30, 60]
    losses = by_step(full, "train_loss")
    assert sum(losses[s] for s in range(51, 61)) < sum(losses[s] for s in range(1, 11))  # it learns


def test_kill_9_then_resume_gives_the_same_losses(runs):
    assert runs["returncode"] == -signal.SIGKILL
    assert runs["at_kill"] and max(runs["at_kill"]) < 60, "the run finished before it could be killed"
    assert "resumed from" in runs["resumed"].stderr
    full, killed = by_step(runs["full"], "train_loss"), by_step(runs["killed"], "train_loss")
    assert sorted(killed) == list(range(1, 61))  # every step logged once
    for s in range(1, 61):
        assert killed[s] == pytest.approx(full[s], rel=1e-5, abs=1e-6), s
    assert by_step(runs["killed"], "val_loss") == pytest.approx(by_step(runs["full"], "val_loss"), rel=1e-5)


def test_rerun_of_a_finished_run_does_not_train_again(runs):
    again = run_cli(TRAIN + [f"--workdir={runs['full']}"])
    assert "already finished at step 60" in again.stderr
    final = lambda proc: proc.stdout.strip().splitlines()[-1].split(" (")[0]  # "final val loss X at step N"
    assert final(again) == final(runs["first"])


def test_sample_is_seeded_and_streams(runs):
    args = ["sample.py", f"--workdir={runs['full']}", "--prompt=ROMEO:", "--max_new_tokens=40", "--seed=3"]
    a, b = run_cli(args), run_cli(args)
    assert a.stdout == b.stdout and a.stdout.startswith("ROMEO:")
    assert len(a.stdout) == len("ROMEO:") + 40 + 1  # 40 characters and a newline
    c = run_cli(args[:-1] + ["--seed=4"])
    assert c.stdout != a.stdout
    greedy = run_cli(args + ["--temperature=0", "--num_samples=2"])
    parts = greedy.stdout.split("---------- sample ")
    assert len(parts) == 3 and parts[1][1:] == parts[2][1:]  # greedy: both samples the same


@pytest.mark.parametrize("args,message", [
    (["train.py", "--config=configs/tiny.py", "--config.data.dataset=/no/such/corpus.txt"], "not found"),
    (["train.py", "--config=configs/tiny.py", "--config.train.batch_sizee=4"], "batch_sizee"),
    (["train.py", "--config=configs/nope.py"], "nope.py"),
    (["train.py", "--config=configs/tiny.py", "--config.train.batch_size=7",
      "--config.train.grad_accum_steps=2"], "divisible"),
    (["sample.py", "--workdir=/tmp/gpt_jax_no_such_run"], "no checkpoints"),
])
def test_bad_inputs_fail_clearly(args, message):
    proc = run_cli(args, check=False)
    assert proc.returncode != 0
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("extra,message", [
    (["--prompt="], "empty prompt"),
    (["--prompt=" + "a" * 40], "shorten the prompt"),
    (["--prompt=ROMEO: 🤖"], "not in this run's character vocabulary"),
    (["--prompt_file=/no/such/prompt.txt"], "cannot read --prompt_file"),
])
def test_bad_prompts_fail_clearly(runs, extra, message):
    proc = run_cli(["sample.py", f"--workdir={runs['full']}", *extra], check=False)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0  # one line


def test_ctrl_c_saves_a_checkpoint_and_resumes(tmp_path):
    workdir = str(tmp_path / "run")
    args = [sys.executable, "train.py", "--config=configs/tiny.py", "--config.train.max_steps=100000",
            "--config.train.checkpoint_every=10", f"--workdir={workdir}"]
    proc = subprocess.Popen(args, cwd=ROOT, env=dict(os.environ, GPT_JAX_COMPILE_CACHE=""),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and not finished_steps(workdir):
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "checkpoint saved, rerun the same command to resume" in err
    step = int(err.split("interrupted at step ")[1].split(";")[0])
    assert max(finished_steps(workdir)) == step > 0
