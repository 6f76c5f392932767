"""Interleaved A/B of two checkouts of gpt-jax on this machine: `benchmarks/bench.py` runs in each, alternating,
each run a fresh process with no compilation cache; medians over the rounds.

    git worktree add --detach ../wt-base 8a48cc0
    python benchmarks/ab_checkouts.py 2 char_train,sample_greedy,sample_topk ../wt-base .
"""
import json
import os
import statistics
import subprocess
import sys

MODES = {
 "char_train": ["benchmarks/bench.py", "--config=configs/shakespeare_char.py", "--config.model.n_layer=4", "--config.train.batch_size=12", "--mode=train", "--steps=60"],
 "sample_greedy": ["benchmarks/bench.py", "--config=configs/gpt2.py", "--mode=sample", "--config.sample.temperature=0", "--prompt_len=16", "--new_tokens=256", "--steps=3"],
 "sample_topk": ["benchmarks/bench.py", "--config=configs/gpt2.py", "--mode=sample", "--prompt_len=16", "--new_tokens=256", "--steps=3"],
 "sample_topp": ["benchmarks/bench.py", "--config=configs/gpt2.py", "--mode=sample", "--config.sample.top_k=0", "--config.sample.top_p=0.9", "--prompt_len=16", "--new_tokens=256", "--steps=3"],
 "sample8_greedy": ["benchmarks/bench.py", "--config=configs/gpt2.py", "--mode=sample", "--config.sample.temperature=0", "--prompt_len=16", "--new_tokens=256", "--steps=3", "--sample_batch=8"],
}
rounds, modes = int(sys.argv[1]), sys.argv[2].split(",")
base_dir, new_dir = os.path.abspath(sys.argv[3]), os.path.abspath(sys.argv[4])
res = {}
for r in range(rounds):
    for m in modes:
        for side, cwd in (("base", base_dir), ("new", new_dir)):
            env = dict(os.environ, GPT_JAX_COMPILE_CACHE="", JAX_PLATFORMS="cpu")
            p = subprocess.run([sys.executable] + MODES[m], cwd=cwd, capture_output=True, text=True, env=env)
            line = [l for l in p.stdout.splitlines() if l.startswith("{")]
            if not line:
                print(m, side, "FAILED", p.stderr[-500:]); continue
            d = json.loads(line[-1])
            v = d.get("ms_per_step") if "train" in m else d.get("tokens_per_sec")
            res.setdefault((m, side), []).append(v)
            print(r, m, side, v, flush=True)
for m in modes:
    b, n = res.get((m, "base"), []), res.get((m, "new"), [])
    if b and n:
        print(f"{m}: base {statistics.median(b):.2f} new {statistics.median(n):.2f} new/base {statistics.median(n)/statistics.median(b):.3f} (rounds {len(b)})")
