"""Will a training run fit its accelerator? The exact train and eval steps compiled ahead of time, for the machine's
own devices or for a Cloud TPU type on a machine without one (libtpu's compiler runs on any CPU host), and the
HBM each chip needs read from XLA's `memory_analysis()`.

    python train.py --config=configs/gpt1.py --compile_only=v5e-1    # a Colab v5e-1, from a laptop with libtpu
    python train.py --config=configs/gpt1.py --compile_only=here     # this machine's devices

Also home of the automatic gradient accumulation (`train.grad_accum_steps=0`): the fewest microbatches whose
compiled step fits the devices' memory.
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
from typing import Callable, Optional

import jax
import numpy as np

GiB = 1024 ** 3

# Cloud TPU generations: topology name, HBM a program may use per chip (what libtpu's compiler reports as available,
# e.g. "exceeds available HBM (15.75G)"), and whether the type's number counts TensorCores (v4, v5p: 2 per chip)
# or chips (v5e, v6e).
@dataclasses.dataclass(frozen=True)
class TpuKind:
    topology: str
    hbm_gib: float
    cores_per_chip: int


TPU_KINDS = {"v5e": TpuKind("v5e", 15.75, 1), "v6e": TpuKind("v6e", 31.25, 1), "v4": TpuKind("v4", 31.25, 2),
             "v5p": TpuKind("v5p", 95.0, 2)}


class FitError(ValueError):
    """A fit check that cannot run (unknown TPU type, no libtpu) or a run that does not fit."""


@dataclasses.dataclass(frozen=True)
class Target:
    """The devices a program is compiled for: a named Cloud TPU type, or this machine's own devices."""
    name: str
    devices: tuple
    hbm_bytes_per_chip: Optional[float]  # None: unknown (CPU)

    @property
    def platform(self) -> str:
        return self.devices[0].platform


def _grid(chips: int, three_d: bool) -> str:
    """A topology string for `chips` chips: 2-D (v5e, v6e: 1x1, 2x2, 2x4, 4x4, 4x8, 8x8, ...) or 3-D (v4, v5p)."""
    if three_d:
        dims, n, i = [1, 1, 1], chips, 0
        while n > 1:
            dims[i % 3] *= 2
            n //= 2
            i += 1
        return "x".join(str(d) for d in sorted(dims))
    a = 1 << ((chips.bit_length() - 1) // 2)
    return f"{a}x{chips // a}"


def tpu_target(name: str) -> Target:
    """`v5e-8`, `v6e-1`, `v4-8`, `v5p-8`, `v5e-16`, ... -> that slice's TPU devices, for compiling only."""
    m = re.fullmatch(r"(v5e|v6e|v4|v5p)-(\d+)", name.strip().lower())
    if not m:
        raise FitError(f"unknown TPU type {name!r}; use e.g. v5e-1, v5e-4, v5e-8, v6e-1, v6e-8, v4-8, v5p-8, v5e-16, "
                       "or 'here' for this machine's devices")
    kind, count = TPU_KINDS[m.group(1)], int(m.group(2))
    chips = count // kind.cores_per_chip
    if chips < 1 or chips & (chips - 1):
        raise FitError(f"TPU type {name!r}: {count} is not a slice size ({kind.cores_per_chip} per chip, a power of "
                       "two chips)")
    three_d = kind.cores_per_chip == 2
    topology = f"{kind.topology}:{_grid(chips, three_d)}"
    per_host = (1, 1, 1) if chips == 1 else None
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # compiles only: never opens a TPU
    try:
        from jax.experimental import topologies

        kw = {"chips_per_host_bounds": per_host} if per_host else {}
        topo = topologies.get_topology_desc(topology_name=topology, platform="tpu", **kw)
    except Exception as e:  # no libtpu, or a topology it does not know
        raise FitError(f"cannot get TPU devices for {name} ({topology}): {str(e).splitlines()[0][:200]}; the fit "
                       f"check needs libtpu: pip install \"jax[tpu]=={jax.__version__}\"") from None
    return Target(name, tuple(topo.devices), kind.hbm_gib * GiB)


def here_target() -> Target:
    """This machine's devices, with their memory limit where the runtime reports one (accelerators)."""
    devices = tuple(jax.devices())
    stats = devices[0].memory_stats() if devices[0].platform != "cpu" else None
    limit = stats.get("bytes_limit") if stats else None
    return Target("here", devices, float(limit) if limit else None)


def target(name: str) -> Target:
    return here_target() if name == "here" else tpu_target(name)


# ----------------------------------------------------------------------------------------- compiling


@dataclasses.dataclass
class Compiled:
    """One compiled program and the memory it needs per device (bytes): XLA's memory_analysis, or the failed
    compile's own figure when it ran out of memory."""
    needed: float
    compile_s: float
    error: str = ""
    compiled: object = None

    @property
    def ok(self) -> bool:
        return not self.error


def needed_bytes(analysis) -> float:
    """Per-device bytes a compiled program holds at its peak: arguments + temporaries + outputs not aliased to
    (donated into) arguments, + generated code."""
    return float(analysis.argument_size_in_bytes + analysis.temp_size_in_bytes + analysis.output_size_in_bytes
                 - analysis.alias_size_in_bytes + analysis.generated_code_size_in_bytes)


def compile_program(fn, *args) -> Compiled:
    """`fn.lower(*args).compile()` (args: ShapeDtypeStructs with shardings), timed; an out-of-memory compile is
    reported, not raised."""
    t = time.perf_counter()
    try:
        compiled = fn.lower(*args).compile()
    except Exception as e:  # XlaRuntimeError RESOURCE_EXHAUSTED: the program does not fit
        msg = str(e)
        if "RESOURCE_EXHAUSTED" not in msg and "exceeds" not in msg:
            raise
        m = re.search(r"\(([\d.]+)([MGK])\) exceeds", msg) or re.search(r"Used ([\d.]+)([MGK]) of", msg)
        needed = float(m.group(1)) * {"K": 1024, "M": 1024 ** 2, "G": GiB}[m.group(2)] if m else float("inf")
        return Compiled(needed, time.perf_counter() - t, error=msg.splitlines()[0][:300])
    return Compiled(needed_bytes(compiled.memory_analysis()), time.perf_counter() - t, compiled=compiled)


def fits(c: Compiled, limit: Optional[float]) -> bool:
    return c.ok and (limit is None or c.needed <= limit)


def choose_grad_accum(build: Callable[[int], Compiled], candidates: list[int], limit: Optional[float],
                      log: Callable[[str], None] = print) -> tuple[int, Compiled]:
    """The fewest microbatches (from `candidates`, ascending) whose compiled step fits `limit` bytes per device:
    `build(n)` compiles the step with n microbatches. Returns (n, its Compiled); with no limit (CPU), the first."""
    last = None
    for n in candidates:
        c = build(n)
        log(f"grad_accum_steps={n}: {c.needed / GiB:.2f} GiB per device needed"
            + (f" of {limit / GiB:.2f}" if limit else "") + (" (out of memory)" if not c.ok else ""))
        if fits(c, limit):
            return n, c
        last = c
    raise FitError(f"no gradient accumulation up to {candidates[-1]} microbatches fits: the step needs "
                   f"{last.needed / GiB:.2f} GiB per device with one row per microbatch and device, the devices "
                   f"have {limit / GiB:.2f} GiB; try model.remat=block, model.dtype=bfloat16, a shorter context "
                   "or more devices")


def accumulation_candidates(batch_size: int, n_devices: int) -> list[int]:
    """Microbatch counts that split `batch_size` evenly over the devices: 1, 2, 4, ... then any other divisors."""
    per_device = batch_size // n_devices
    return [n for n in range(1, per_device + 1) if per_device % n == 0]


def report(target: Target, train: Compiled, eval_: Optional[Compiled], **fields) -> dict:
    """The fit check's JSON fields for a compiled train step (+ eval step)."""
    needed = max(train.needed, eval_.needed if eval_ else 0.0)
    limit = target.hbm_bytes_per_chip
    ok = train.ok and (eval_ is None or eval_.ok) and (limit is None or needed <= limit)
    return {
        "topology": target.name, "platform": target.platform, "chips": len(target.devices),
        "device_kind": target.devices[0].device_kind, "fits": bool(ok),
        "hbm_gib_needed": round(needed / GiB, 3) if np.isfinite(needed) else None,
        "hbm_gib_per_chip": round(limit / GiB, 3) if limit else None,
        "hbm_fraction": round(needed / limit, 3) if limit and np.isfinite(needed) else None,
        "train_gib": round(train.needed / GiB, 3) if np.isfinite(train.needed) else None,
        "eval_gib": round(eval_.needed / GiB, 3) if eval_ and np.isfinite(eval_.needed) else None,
        "compile_s": round(train.compile_s, 1),  # the train step's: what a run waits for before its first step
        "eval_compile_s": round(eval_.compile_s, 1) if eval_ else None,
        **fields,
        "error": train.error or (eval_.error if eval_ else ""),
    }


def shortfall(r: dict) -> str:
    """The one-line error of a report that does not fit: what is short, and the knobs that would help."""
    knobs = []
    if r.get("remat") != "block":
        knobs.append("--config.model.remat=" + ("dots or block" if r.get("remat") == "none" else "block"))
    if r.get("dtype") != "bfloat16":
        knobs.append("--config.model.dtype=bfloat16")
    if r.get("micro_batch", 1) > r.get("chips", 1):
        knobs.append("--config.train.grad_accum_steps=0 (the fewest microbatches that fit)")
    knobs.append("a shorter context or a smaller train.batch_size, or more chips")
    need = f"{r['hbm_gib_needed']:.2f} GiB" if r.get("hbm_gib_needed") is not None else "more memory than it has"
    have = f" of the {r['hbm_gib_per_chip']:.2f} GiB it has" if r.get("hbm_gib_per_chip") else ""
    return f"the run does not fit {r['topology']}: it needs {need} per chip{have}; try " + ", ".join(knobs)


def libtpu_available() -> bool:
    """Whether libtpu (the TPU compiler) is installed: `pip install "jax[tpu]"`."""
    import importlib.util

    return importlib.util.find_spec("libtpu") is not None
