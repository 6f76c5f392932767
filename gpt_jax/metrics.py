"""Run logs (metrics.jsonl + TensorBoard), the loss-curve PNG, and the FLOP / MFU arithmetic."""

from __future__ import annotations

import functools
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from gpt_jax.config import ModelConfig
from gpt_jax.utils import atomic_write


def flops_per_token(cfg: ModelConfig, n_params: int, seq_len: int) -> float:
    """Training FLOPs per token, PaLM appendix B: 6N + 12 * L * T * d.

    N counts every parameter except the position table (the tied token embedding is counted: it is the
    output-layer matmul). Causal attention is *not* halved, as in the PaLM and nanoGPT estimates.
    A forward pass alone is a third of this.
    """
    return 6.0 * n_params + 12.0 * cfg.n_layer * seq_len * cfg.d_model


def program_matmul_flops(fn, *args) -> float:
    """The matrix-multiply FLOPs of one call of `fn(*args)` (args may be ShapeDtypeStructs), counted in its jaxpr:
    2 * (output size) * (contracted size) per dot_general, a scan's body times its length, a shard_map's body
    times its devices, a cond's costliest branch; rematerialized blocks are counted each time they run.

    XLA's own count (`compiled.cost_analysis()["flops"]`) counts the body of a loop once, so it undercounts a
    program whose layers run under `lax.scan`."""
    import math

    def count(jaxpr) -> float:
        total = 0.0
        for eqn in jaxpr.eqns:
            name = eqn.primitive.name
            if name == "dot_general":
                (lhs_contract, _), _ = eqn.params["dimension_numbers"]
                lhs = eqn.invars[0].aval.shape
                total += 2.0 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in lhs_contract)
                continue
            subs = []
            for value in eqn.params.values():
                for v in value if isinstance(value, (tuple, list)) else (value,):
                    if hasattr(v, "jaxpr") and hasattr(v, "consts"):  # a ClosedJaxpr
                        subs.append(v.jaxpr)
                    elif hasattr(v, "eqns"):  # a Jaxpr
                        subs.append(v)
            if not subs:
                continue
            if name == "cond":
                total += max(count(s) for s in subs)
                continue
            times = eqn.params.get("length", 1) if name == "scan" else 1
            if name == "shard_map":
                times = eqn.params["mesh"].size
            total += times * sum(count(s) for s in subs)
        return total

    return count(jax.make_jaxpr(fn)(*args).jaxpr)


# bf16 dense peaks (FLOP/s) of common accelerators, per chip, from their vendors' data sheets.
_PEAKS = {"TPU v2": 45e12, "TPU v3": 123e12, "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12,
          "TPU v5p": 459e12, "TPU v6 lite": 918e12, "A100": 312e12, "H100": 989e12, "H200": 989e12,
          "L4": 121e12, "T4": 65e12, "V100": 125e12}


@functools.lru_cache(maxsize=None)
def measured_matmul_peak(n: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of a jitted fp32 (n, n) matmul on the default device, median of `repeats` (the practical peak)."""
    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        f(a).block_until_ready()
        times.append(time.perf_counter() - t)
    return 2 * n**3 / float(np.median(times))


def device_peak_flops(given: float = 0.0) -> float:
    """Peak FLOP/s summed over all devices: `given` (per device) if set, a data-sheet figure for known
    accelerators, else a matmul measured on the spot (CPU)."""
    devices = jax.devices()
    if given:
        return given * len(devices)
    kind = devices[0].device_kind
    for name, peak in _PEAKS.items():
        if name.lower() in kind.lower():
            return peak * len(devices)
    return measured_matmul_peak()  # CPU: all simulated "devices" share the same cores


def _summary_writer_class():
    """tensorboardX's SummaryWriter. Its module imports torch, when installed, only to accept torch tensors (we log
    floats), which costs seconds of start-up, so torch is hidden during that import unless something already loaded
    it. Imported here: runs with tensorboard=False never load it."""
    if "torch" in sys.modules:
        from tensorboardX import SummaryWriter

        return SummaryWriter
    sys.modules["torch"] = None  # `import torch` raises ImportError, which tensorboardX handles
    try:
        from tensorboardX import SummaryWriter
    finally:
        del sys.modules["torch"]
    return SummaryWriter


class MetricsWriter:
    """Appends one JSON object per event to WORKDIR/metrics.jsonl and mirrors scalars to TensorBoard."""

    def __init__(self, workdir: str, tensorboard: bool = True):
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.tb = None
        if tensorboard:
            self.tb = _summary_writer_class()(os.path.join(workdir, "tensorboard"))

    def truncate_after(self, step: int) -> None:
        """On resume: drop events logged after the restored step (they will be logged again)."""
        if not os.path.exists(self.path):
            return
        kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= step]
        atomic_write(self.path, lambda f: f.writelines(json.dumps(r) + "\n" for r in kept))

    def write(self, step: int, **scalars) -> None:
        record = {"step": int(step), **{k: (float(v) if v is not None else None) for k, v in scalars.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in scalars.items():
                if v is not None:
                    self.tb.add_scalar(k, float(v), step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def read_metrics(path: str) -> list[dict]:
    out = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:  # a line cut short by a kill; ignore it
                    pass
    return out


def plot_losses(metrics_path: str, png_path: str) -> None:
    import matplotlib  # imported here: heavy, and only needed once a run ends

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, style in (("train_loss", "-"), ("val_loss", "o-")):
        pts = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
        if pts:
            ax.plot(*zip(*pts), style, label=key, markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
