"""The fused output projection + cross-entropy against the plain logits -> cross_entropy computation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gpt_jax.losses import chunk_rows, cross_entropy, lm_loss

N, C, V, VOCAB = 203, 32, 384, 300  # V > VOCAB: padded / extra-token columns, which must carry no probability


def inputs(seed=0):
    rng = np.random.default_rng(seed)
    h = jnp.asarray(rng.standard_normal((N, C), dtype=np.float32))
    w = jnp.asarray(0.3 * rng.standard_normal((V, C), dtype=np.float32))
    targets = jnp.asarray(rng.integers(0, VOCAB, N).astype(np.int32))
    weights = jnp.asarray(rng.random(N).astype(np.float32)).at[:10].set(0.0)  # some padding rows
    return h, w, targets, weights


def reference(h, w, targets, weights):
    logits = jnp.where(jnp.arange(V) < VOCAB, h @ w.T, -1e30)
    return jnp.sum(weights * cross_entropy(logits, targets))


@pytest.mark.parametrize("rows", [0, 16, 64, 203, 1000])  # several chunks, a ragged last chunk, one chunk
def test_value_and_gradients_match_the_unfused_loss(rows):
    h, w, t, wt = inputs()
    fused = jax.value_and_grad(lambda h, w: lm_loss(h, w, t, wt, VOCAB, rows), argnums=(0, 1))(h, w)
    ref = jax.value_and_grad(lambda h, w: reference(h, w, t, wt), argnums=(0, 1))(h, w)
    assert float(fused[0]) == pytest.approx(float(ref[0]), rel=1e-6)
    np.testing.assert_allclose(fused[1][0], ref[1][0], atol=2e-6)
    np.testing.assert_allclose(fused[1][1], ref[1][1], atol=5e-6)
    assert float(jnp.abs(fused[1][1][VOCAB:]).max()) == 0.0  # masked columns get no gradient
    assert float(lm_loss(h, w, t, wt, VOCAB, rows)) == pytest.approx(float(ref[0]), rel=1e-6)  # no-grad path


def test_cotangent_scales_the_gradients_and_batch_shapes_flatten():
    h, w, t, wt = inputs(1)
    g3 = jax.grad(lambda h: 3.0 * lm_loss(h.reshape(7, 29, C), w, t.reshape(7, 29), wt.reshape(7, 29), VOCAB))(h)
    g1 = jax.grad(lambda h: reference(h, w, t, wt))(h)
    np.testing.assert_allclose(g3, 3.0 * g1, atol=1e-5)


def test_bfloat16_hidden_states():
    h, w, t, wt = inputs(2)
    loss, (dh, dw) = jax.value_and_grad(lambda h, w: lm_loss(h, w, t, wt, VOCAB), argnums=(0, 1))(
        h.astype(jnp.bfloat16), w)
    assert dh.dtype == jnp.bfloat16 and dw.dtype == jnp.float32
    assert float(loss) == pytest.approx(float(reference(h, w, t, wt)), rel=2e-2)


def test_chunk_rows():
    assert chunk_rows(1024, 50304) == 256  # 4 even chunks of <= 64 MB of float32 logits
    assert chunk_rows(1000, 50304) == 256  # 4 chunks, 24 padding rows in the last
    assert chunk_rows(12288, 50304) == 336  # 37 chunks (a GPT-2 microbatch of 12 x 1024 on an accelerator)
    assert chunk_rows(1024, 65) == 1024  # small vocabularies: one chunk
    assert chunk_rows(5, 50304) == 5
