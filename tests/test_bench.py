import json

import pytest


@pytest.mark.parametrize("mode", ["train", "eval", "sample"])
def test_bench_prints_one_json_line(cli, mode):
    args = ["benchmarks/bench.py", "--config=configs/tiny.py", f"--mode={mode}", "--steps=2", "--warmup=1",
            "--new_tokens=8", "--peak_tflops=1"]
    out = cli(args).stdout.strip().splitlines()
    assert len(out) == 1
    r = json.loads(out[0])
    assert r["mode"] == mode
    for key in ("ms_per_step", "tokens_per_sec", "model_flops_per_token", "mfu", "compiles", "peak_rss_mb"):
        assert key in r and r[key] >= 0, key
    assert r["compiles"] == 0  # nothing recompiles in the timed steps (sampling: none per token)
    assert r["peak_tflops"] == pytest.approx(r["n_devices"] * 1.0)
    assert r["mfu"] == pytest.approx(r["model_flops_per_token"] * r["tokens_per_sec"] / 1e12 / r["n_devices"],
                                     rel=0.02, abs=1e-4)  # mfu is rounded to 4 places


def test_bench_times_the_asked_batch_when_accumulation_does_not_divide_it(cli):
    """The issue's command overrides configs/gpt2.py's batch of 480 (40 microbatches) with 4 sequences: the
    benchmark times one pass over those 4 instead of failing in a reshape."""
    proc = cli(["benchmarks/bench.py", "--config=configs/tiny.py", "--mode=train", "--steps=1", "--warmup=1",
                "--config.train.batch_size=6", "--config.train.grad_accum_steps=4", "--peak_tflops=1"])
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (r["batch_size"], r["grad_accum_steps"]) == (6, 1)
    assert "grad_accum_steps=4 does not divide train.batch_size=6" in proc.stderr
