"""The fit-check table of docs/performance.md: `train.py --compile_only=T` for configs x TPU types x knobs, each in its
own process (a cold compile), printed as a markdown table. Needs libtpu (pip install "jax[tpu]==<jax version>").

    python benchmarks/fit_table.py                       # every config on v5e-1, v6e-1, v5e-8, then the knobs
    python benchmarks/fit_table.py --only=knobs          # the HBM effect of bf16, remat, flash and accumulation
"""

import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = ["configs/gpt1.py", "configs/gpt2.py", "configs/gpt2_medium.py"]
TARGETS = ["v5e-1", "v6e-1", "v5e-8"]
KNOBS = [  # (config, what changes): each knob against the config's defaults on v5e-1 (rows of the first table)
    ("configs/gpt1.py", ["--config.model.dtype=float32"]),
    ("configs/gpt1.py", ["--config.model.remat=none"]),
    ("configs/gpt1.py", ["--config.model.remat=block"]),
    ("configs/gpt2.py", ["--config.model.attention=xla"]),
    ("configs/gpt2.py", ["--config.train.grad_accum_steps=30"]),
]


def fit_check(config: str, target: str, overrides: list[str]) -> dict:
    cmd = [sys.executable, "train.py", f"--config={config}", f"--compile_only={target}",
           "--workdir=/tmp/fit_table_run", *overrides]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, GPT_JAX_COMPILE_CACHE=""))
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"{' '.join(cmd)} printed no report:\n{proc.stderr[-2000:]}")
    return json.loads(lines[-1])


def row(config: str, target: str, overrides: list[str], r: dict) -> str:
    need = "-" if r["hbm_gib_needed"] is None else f"{r['hbm_gib_needed']:.2f}"
    pct = "-" if r["hbm_fraction"] is None else f"{100 * r['hbm_fraction']:.0f}%"
    knobs = " ".join(o.replace("--config.", "") for o in overrides) or "(defaults)"
    return (f"| {os.path.basename(config)} | {target} | {knobs} | {r['micro_batch']} x {r['grad_accum_steps']} | "
            f"{r['dtype']} | {r['remat']} | {r['attention']} | {need} / {r['hbm_gib_per_chip']:.2f} ({pct}) | "
            f"{'yes' if r['fits'] else '**no**'} | {r['compile_s']:.0f} |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", choices=["configs", "knobs"], default=None)
    args = ap.parse_args()
    runs = []
    if args.only in (None, "configs"):
        runs += [(c, t, []) for c in CONFIGS for t in TARGETS]
    if args.only in (None, "knobs"):
        runs += [(c, "v5e-1", o) for c, o in KNOBS]
    print("| config | TPU | knobs | micro x accum | dtype | remat | attention | HBM GiB needed / per chip | fits | "
          "compile s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for config, target, overrides in runs:
        print(row(config, target, overrides, fit_check(config, target, overrides)), flush=True)


if __name__ == "__main__":
    main()
