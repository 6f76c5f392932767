"""Next-token cross-entropy, and the fused output projection + cross-entropy used for training and evaluation.

`lm_loss(h, w, targets, weights)` is sum_i weights_i * -log softmax(h_i @ w.T)[targets_i] without ever holding the
(tokens, vocab) logits: rows of `h` go through in chunks of at most 64 MB of logits, and under
`jax.grad` each chunk also produces its share of the gradients at once (d logits = softmax - one-hot is known as
soon as the chunk's softmax is), so the backward pass is a multiply by the incoming cotangent. Against
`cross_entropy(h @ w.T)` this removes the full logits tensor and its passes (mask, softmax, the one-hot scatter
of `take_along_axis`' gradient, the transposed copy for dW; docs/performance.md has the measurements), and on
accelerators the (tokens, 50k) activation memory. The matmul FLOPs are those of the unfused loss (forward logits,
d h, d w); nothing is recomputed.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from gpt_jax.utils import NEG_INF

CHUNK_ELEMENTS = 1 << 24  # float32 logits per chunk at most (64 MB): big matmuls, bounded memory


def cross_entropy(logits, targets):
    """Per-token -log p(target): logits (..., V) float32, targets (...) int32 -> (...)."""
    lse = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return lse - picked


def chunk_rows(n_rows: int, n_cols: int) -> int:
    """Rows per chunk: the fewest chunks of at most CHUNK_ELEMENTS logits, split evenly (little padding), a
    multiple of 8 rows."""
    max_rows = max(8, CHUNK_ELEMENTS // max(n_cols, 1))
    k = -(-n_rows // max_rows)
    return min(n_rows, -(-(-(-n_rows // k)) // 8) * 8)


def _chunks(h, targets, weights, rows: int):
    """(N, C), (N,), (N,) -> (K, rows, C), (K, rows), (K, rows): zero-weight padding rows at the end."""
    n = h.shape[0]
    k = -(-n // rows)
    pad = k * rows - n
    if pad:
        h = jnp.pad(h, ((0, pad), (0, 0)))
        targets = jnp.pad(targets, (0, pad))
        weights = jnp.pad(weights, (0, pad))
    return h.reshape(k, rows, -1), targets.reshape(k, rows), weights.reshape(k, rows)


def _scan(h, w, targets, weights, vocab_size: int, rows: int, with_grads: bool):
    """The chunked pass: the weighted loss sum, and (d h, d w) of that sum when with_grads."""
    n, c = h.shape
    v = w.shape[0]
    hs, ts, ws = _chunks(h, targets, weights, rows)
    real = jnp.arange(v) < vocab_size  # (V,): padded and extra-token columns carry no probability
    wc = w.astype(h.dtype)

    def chunk(h_c, t_c, w_c):  # (R, C), (R,), (R,) -> loss sum, and d h (R, C), d w (V, C) of it
        logits = jnp.einsum("rc,vc->rv", h_c, wc, preferred_element_type=jnp.float32)  # (R, V)
        logits = jnp.where(real, logits, NEG_INF)
        m = jnp.max(logits, axis=-1, keepdims=True)
        e = jnp.exp(logits - m)
        s = jnp.sum(e, axis=-1, keepdims=True)
        picked = jnp.take_along_axis(logits, t_c[:, None], axis=-1)
        loss = jnp.sum(w_c * (m + jnp.log(s) - picked)[:, 0])
        if not with_grads:
            return loss
        # d loss / d logits = weight * (softmax - one-hot), then both matmuls of the chunk
        dlogits = ((e / s - (jnp.arange(v) == t_c[:, None])) * w_c[:, None]).astype(h.dtype)  # (R, V)
        dh = jnp.einsum("rv,vc->rc", dlogits, wc, preferred_element_type=jnp.float32).astype(h.dtype)
        dw = jnp.einsum("rv,rc->vc", dlogits, h_c, preferred_element_type=jnp.float32)
        return loss, dh, dw

    if not with_grads:
        return jax.lax.map(lambda xs: chunk(*xs), (hs, ts, ws)).sum()
    # the first chunk outside the loop: its d w starts the sum (no zero-filled (V, C) carry)
    loss, dh, dw = chunk(hs[0], ts[0], ws[0])

    def body(dw, xs):
        loss, dh, dw_c = chunk(*xs)
        return dw + dw_c, (loss, dh)

    dw, (losses, dhs) = jax.lax.scan(body, dw, (hs[1:], ts[1:], ws[1:]))
    dh = jnp.concatenate([dh, dhs.reshape(-1, c)])[:n]
    return loss + losses.sum(), dh, dw.astype(w.dtype)


@partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _lm_loss(h, w, targets, weights, vocab_size: int, rows: int):
    return _scan(h, w, targets, weights, vocab_size, rows, with_grads=False)


def _lm_loss_fwd(h, w, targets, weights, vocab_size, rows):
    loss, dh, dw = _scan(h, w, targets, weights, vocab_size, rows, with_grads=True)
    return loss, (dh, dw)


def _lm_loss_bwd(vocab_size, rows, res, g):
    dh, dw = res
    return dh * g.astype(dh.dtype), dw * g.astype(dw.dtype), None, None


_lm_loss.defvjp(_lm_loss_fwd, _lm_loss_bwd)


def lm_loss(h, w, targets, weights, vocab_size: int, rows: int = 0):
    """sum_i weights_i * -log p(targets_i | h_i) with logits h @ w.T over the first `vocab_size` columns.

    h (..., C) hidden states (any float dtype), w (V, C) output projection (V >= vocab_size: padded and extra
    columns are masked), targets (...) int32, weights (...) float32 (e.g. 1 / n_tokens for a mean, or 0 for
    padding). Differentiable in h and w. rows: tokens per chunk (0 = `chunk_rows`)."""
    weights = jnp.broadcast_to(jnp.asarray(weights, jnp.float32), targets.shape).reshape(-1)
    h, targets = h.reshape(-1, h.shape[-1]), targets.reshape(-1)
    rows = rows or chunk_rows(h.shape[0], w.shape[0])
    return _lm_loss(h, w, targets, weights, int(vocab_size), int(rows))
