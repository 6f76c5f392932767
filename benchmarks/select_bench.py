"""Token selection alone: `sample_logits` against the sort-based code it replaced, per call on (B, V) logits,
interleaved in one process; prints one JSON line per (batch, setting) with the medians and the ratio.

    python benchmarks/select_bench.py                      # batch 1 and 8, V = 50257 (GPT-2), 4 settings
    python benchmarks/select_bench.py --batch=1 --rounds=9

Each timed call runs `--calls` selections inside one jitted `lax.fori_loop` (a fresh key each), as the decode loop
does, so dispatch is not counted. Logits: normal with std 0.7 (a random-init GPT-2's spread at temperature 1, the
flat case that makes top-p keep ~80% of the vocabulary) or --std.
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from gpt_jax.sampling import sample_logits  # noqa: E402

SETTINGS = {"greedy": (0.0, 0, 1.0), "temp 0.8": (0.8, 0, 1.0), "temp 0.8 top-k 200": (0.8, 200, 1.0),
            "temp 0.8 top-p 0.9": (0.8, 0, 0.9), "temp 0.8 top-k 200 top-p 0.9": (0.8, 200, 0.9)}


def sort_based(logits, rng, temperature, top_k, top_p):
    """The previous sample_logits (tests/test_token_selection.py keeps it as the reference)."""
    if temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / temperature
    if top_k and top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p < 1.0:
        desc = jnp.sort(logits, axis=-1)[:, ::-1]
        probs = jax.nn.softmax(desc, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs
        threshold = jnp.min(jnp.where(before < top_p, desc, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < threshold, -jnp.inf, logits)
    return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


def looped(fn, settings, calls):
    """A jitted function of (logits, key) running `calls` selections in a fori_loop; each depends on the last."""

    @jax.jit
    def run(logits, key):
        def body(_, carry):
            acc, key = carry
            key, sub = jax.random.split(key)
            ids = fn(logits + acc, sub, *settings)  # (B,)
            return acc + 0.0 * jnp.sum(ids).astype(jnp.float32), key

        return jax.lax.fori_loop(0, calls, body, (jnp.zeros((), jnp.float32), key))[0]

    return run


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, nargs="*", default=[1, 8])
    p.add_argument("--vocab", type=int, default=50257)
    p.add_argument("--std", type=float, default=0.7)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--calls", type=int, default=20)
    a = p.parse_args()
    for B in a.batch:
        logits = jnp.asarray(np.random.default_rng(0).normal(size=(B, a.vocab)) * a.std, jnp.float32)
        runs = {(name, side): looped(fn, s, a.calls) for name, s in SETTINGS.items()
                for side, fn in (("new", sample_logits), ("old", sort_based)) if side == "new" or s[0] > 0}
        for run in runs.values():
            jax.block_until_ready(run(logits, jax.random.PRNGKey(0)))  # compile
        times = {k: [] for k in runs}
        for r in range(a.rounds):
            for k, run in runs.items():
                start = time.perf_counter()
                jax.block_until_ready(run(logits, jax.random.PRNGKey(r)))
                times[k].append(1000 * (time.perf_counter() - start) / a.calls)
        greedy = float(np.median(times[("greedy", "new")]))
        for name in SETTINGS:
            new = float(np.median(times[(name, "new")]))
            old = float(np.median(times[(name, "old")])) if (name, "old") in times else new
            print(json.dumps({"batch": B, "vocab": a.vocab, "setting": name, "old_ms": round(old, 3),
                              "new_ms": round(new, 3), "speedup": round(old / new, 2),
                              "new_minus_greedy_ms": round(new - greedy, 3)}), flush=True)


if __name__ == "__main__":
    main()
