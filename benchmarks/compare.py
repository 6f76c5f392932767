"""gpt-jax against the PyTorch yardstick on this machine, interleaved: each round runs the PyTorch command, then
ours, each in a fresh process, and the medians over rounds give the ratio. On a shared machine whose speed
drifts by 10-30% over minutes, alternating keeps both sides under the same conditions.

    python benchmarks/compare.py char        # train step: 4 layers, d 128, context 64, batch 12, vocab 65
    python benchmarks/compare.py 124m        # train step: GPT-2 124M shape, context 256, batch 4
    python benchmarks/compare.py sample      # greedy decoding, GPT-2 124M, 16-token prompt + 256 tokens, batch 1
    python benchmarks/compare.py sample8     # ours at batch 8 against ours at batch 1 (no PyTorch side)

Prints one JSON line per round and a summary line: medians, and `speedup` = theirs / ours for step times
(ours / theirs for tokens per second). Needs torch and transformers (requirements-dev.txt).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BENCH = [sys.executable, os.path.join(HERE, "bench.py")]
TORCH = [sys.executable, os.path.join(HERE, "torch_reference.py")]
GPT2_256 = ["--config=configs/gpt2.py", "--config.model.block_size=256", "--config.train.batch_size=4",
            "--config.train.grad_accum_steps=1"]
SAMPLE = ["--config=configs/gpt2.py", "--mode=sample", "--config.sample.temperature=0", "--prompt_len=16",
          "--new_tokens=256"]

# name -> (their command, our command, the field compared, True if lower is better)
CASES = {
    "char": (TORCH + ["--shape=char", "--steps=60"],
             BENCH + ["--config=configs/shakespeare_char.py", "--config.model.n_layer=4", "--config.train.batch_size=12",
                      "--mode=train", "--steps=60"], "ms_per_step", True),
    "124m": (TORCH + ["--shape=124m", "--steps=4", "--warmup=1"],
             BENCH + GPT2_256 + ["--mode=train", "--steps=4"], "ms_per_step", True),
    "sample": (TORCH + ["--shape=hf_sample", "--steps=3", "--warmup=1"],
               BENCH + SAMPLE + ["--steps=3"], "tokens_per_sec", False),
    "sample8": (BENCH + SAMPLE + ["--steps=3"], BENCH + SAMPLE + ["--steps=3", "--sample_batch=8"],
                "tokens_per_sec", False),
}


def run(cmd) -> dict:
    env = dict(os.environ, GPT_JAX_COMPILE_CACHE="")
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.exit(f"error: {' '.join(cmd)} exited {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("case", choices=sorted(CASES))
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()
    theirs_cmd, ours_cmd, field, lower_better = CASES[a.case]
    theirs, ours = [], []
    for r in range(a.rounds):
        t, o = run(theirs_cmd)[field], run(ours_cmd)[field]
        theirs.append(t)
        ours.append(o)
        print(json.dumps({"case": a.case, "round": r, "field": field, "theirs": t, "ours": o}), flush=True)
    mt, mo = statistics.median(theirs), statistics.median(ours)
    print(json.dumps({"case": a.case, "field": field, "rounds": a.rounds, "theirs_median": mt, "ours_median": mo,
                      "speedup": round(mt / mo if lower_better else mo / mt, 3)}), flush=True)


if __name__ == "__main__":
    main()
