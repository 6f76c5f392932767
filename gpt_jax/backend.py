"""Backend-specific rewrites of the model's decoding computations, kept out of the model.

The model states each computation once, in its plain form. Where one backend runs a different but equal form
faster, the choice is made here, with `jax.lax.platform_dependent`: it picks the branch for the platform the
program is lowered for (the devices `jax.jit` compiles for, or `jax.export`'s `platforms`), so a program
compiled on a CPU host for a TPU carries none of the CPU rewrites. The rewrites apply to decoding only (a call
with a KV cache); training and the full forward pass always run the plain form.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

FEW_ROWS = 64  # decoding up to this many rows (a few sequences at a time) takes the CPU weight-first product


def linear(x, w, *, decoding: bool = False):
    """x @ w.T for a weight stored (out, in), as PyTorch's `F.linear`: x (..., in), w (out, in) -> (..., out).

    Used by the Dense layers and the tied output head. When decoding 2 to FEW_ROWS rows on CPU it is computed as
    `w @ x.T` (see `_weight_first`); elsewhere, and always outside decoding, as the plain contraction. One row
    needs no rewrite: XLA already runs it as a matrix-vector product.
    """
    rows = math.prod(x.shape[:-1])
    if decoding and 1 < rows <= FEW_ROWS:
        return jax.lax.platform_dependent(x, w, cpu=_weight_first, default=_plain)
    return _plain(x, w)


def _plain(x, w):
    return jnp.einsum("...i,oi->...o", x, w)  # contracts `in` of both: no transposed copy of w


def _weight_first(x, w):
    """x @ w.T as (w @ x.T).T. With the weight as the left operand, XLA:CPU streams it through once, as in a
    matrix-vector product, where a few-row x on the left reads it at a lower rate. The optimization barrier
    keeps XLA from rewriting transpose(w @ x.T) back into x @ w.T."""
    rows = math.prod(x.shape[:-1])
    y = jax.lax.optimization_barrier(w @ x.reshape(rows, -1).T)  # (out, rows)
    return y.T.reshape(*x.shape[:-1], w.shape[0])
