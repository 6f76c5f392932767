"""The sort-free token selection (`filter_logits`, `sample_logits`) against the sort-based code it replaced, kept
here as the reference: the same kept sets and the same sampled ids for the same key."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gpt_jax.sampling import _categorical, filter_logits, sample_logits
from gpt_jax.utils import NEG_INF


def ref_filter(logits, top_k=0, top_p=1.0):
    """The previous `sample_logits` filtering: logits (B, V) -> (B, V) with -inf outside the kept set."""
    if top_k and top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, top_k)[0][:, -1:]  # (B, 1): the k-th largest logit
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p < 1.0:
        desc = jnp.sort(logits, axis=-1)[:, ::-1]  # (B, V)
        probs = jax.nn.softmax(desc, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # probability mass strictly above each token
        keep = before < top_p
        threshold = jnp.min(jnp.where(keep, desc, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < threshold, -jnp.inf, logits)
    return logits


def ref_sample(logits, rng, temperature, top_k=0, top_p=1.0):
    return jax.random.categorical(rng, ref_filter(logits / temperature, top_k, top_p), axis=-1).astype(jnp.int32)


new_filter = jax.jit(filter_logits, static_argnums=(1, 2))
old_filter = jax.jit(ref_filter, static_argnums=(1, 2))


def make_logits(seed, B, V, kind):
    """(B, V) float32 logits: 'flat' (a random-init GPT-2's spread), 'peaked' (a trained one's), 'ties' (rounded to
    1 decimal: many equal values), 'masked' (a third at NEG_INF, as padded vocab columns, a few at -inf)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(B, V)) * {"flat": 0.7, "peaked": 3.0, "ties": 2.0, "masked": 2.0}[kind]
    if kind == "ties":
        x = np.round(x, 1)
    if kind == "masked":
        x[:, rng.permutation(V)[: V // 3]] = NEG_INF
        x[:, rng.permutation(V)[: max(1, V // 50)]] = -np.inf
        x[:, 0] = 5.0  # at least one finite logit
    return jnp.asarray(x, jnp.float32)


def near_boundary(logits, top_k, top_p, new, old, tol=1e-5):
    """Rows where the two kept sets differ only by tokens whose mass above them, computed in float64, lies within
    `tol` of top_p: both sums are float32 in different orders (a cumsum over the sorted row against a masked sum),
    so there the cut is decided by rounding. Returns (rows that differ, those of them explained so)."""
    x = np.asarray(ref_filter(logits, top_k, 1.0), np.float64)  # top-k's set exactly (both agree on it)
    differ = np.nonzero(np.any(np.isfinite(new) != np.isfinite(old), axis=-1))[0]
    explained = []
    for b in differ:
        p = np.exp(x[b] - np.max(x[b]))
        p /= p.sum()
        tokens = np.nonzero(np.isfinite(new[b]) != np.isfinite(old[b]))[0]
        above = np.array([p[x[b] > x[b, t]].sum() for t in tokens])
        if np.all(np.abs(above - top_p) < tol):
            explained.append(b)
    return differ, explained


@pytest.mark.parametrize("V", [7, 100, 1000, 50257])
@pytest.mark.parametrize("kind", ["flat", "peaked", "ties", "masked"])
def test_top_k_equals_reference(V, kind):
    logits = make_logits(V, 4, V, kind)
    for k in sorted({1, 2, 5, 50, 200, V - 1, V, V + 3}):
        np.testing.assert_array_equal(new_filter(logits, k, 1.0), old_filter(logits, k, 1.0), err_msg=f"k={k}")


@pytest.mark.parametrize("V", [7, 100, 1000, 50257])
@pytest.mark.parametrize("kind", ["flat", "peaked", "ties", "masked"])
def test_top_p_and_both_equal_reference(V, kind):
    logits = make_logits(V + 1, 4, V, kind)
    n_rows = n_boundary = 0
    for k, p in [(0, 1e-6), (0, 0.3), (0, 0.9), (0, 0.999), (200, 0.9), (5, 0.5), (V, 0.95), (1, 0.9)]:
        new, old = np.asarray(new_filter(logits, k, p)), np.asarray(old_filter(logits, k, p))
        differ, explained = near_boundary(logits, k, p, new, old)
        assert list(differ) == list(explained), f"k={k} p={p}: rows {list(differ)} differ away from the boundary"
        n_rows, n_boundary = n_rows + len(new), n_boundary + len(differ)
    assert n_boundary <= n_rows // 16  # rounding decides a cut only rarely


def test_ties_keep_whole_value_groups():
    logits = jnp.asarray([[3.0, 1.0, 3.0, 2.0, 1.0, 3.0, 0.0], [1.0] * 7], jnp.float32)
    kept = np.isfinite(np.asarray(new_filter(logits, 2, 1.0)))
    np.testing.assert_array_equal(kept, [[1, 0, 1, 0, 0, 1, 0], [1] * 7])  # ties at the k-th value all stay
    kept = np.isfinite(np.asarray(new_filter(logits, 0, 0.5)))
    np.testing.assert_array_equal(kept, [[1, 0, 1, 0, 0, 1, 0], [1] * 7])  # 0 mass above any 3.0 or any 1.0
    zeros = jnp.asarray([[-0.0, 0.0, -1.0, 0.0]], jnp.float32)  # -0.0 == 0.0, as the reference's `<` sees it
    np.testing.assert_array_equal(new_filter(zeros, 1, 1.0), old_filter(zeros, 1, 1.0))


@pytest.mark.parametrize("B,V", [(1, 7), (4, 100), (4, 50257), (8, 50257), (3, 50304)])
def test_categorical_same_ids_as_jax(B, V):
    logits = make_logits(B * V, B, V, "masked" if V > 7 else "flat")
    ours = jax.jit(_categorical)
    theirs = jax.jit(lambda key, x: jax.random.categorical(key, x, axis=-1).astype(jnp.int32))
    for seed in range(20):
        key = jax.random.PRNGKey(seed)
        np.testing.assert_array_equal(ours(key, logits), theirs(key, logits))
    typed = jax.random.key(3)  # new-style typed keys too
    np.testing.assert_array_equal(ours(typed, logits), theirs(typed, logits))


@pytest.mark.parametrize("kind", ["flat", "peaked", "ties"])
def test_same_ids_as_reference_for_the_same_key(kind):
    logits = make_logits(7, 4, 50257, kind)
    for temperature, k, p in [(1.0, 0, 1.0), (0.8, 200, 1.0), (0.8, 0, 0.9), (0.8, 200, 0.9), (1.3, 1, 1.0)]:
        new = jax.jit(sample_logits, static_argnums=(2, 3, 4))
        old = jax.jit(ref_sample, static_argnums=(2, 3, 4))
        same_set = np.all(np.isfinite(np.asarray(new_filter(logits / temperature, k, p)))
                          == np.isfinite(np.asarray(old_filter(logits / temperature, k, p))), axis=-1)
        for seed in range(5):
            key = jax.random.PRNGKey(seed)
            a, b = np.asarray(new(logits, key, temperature, k, p)), np.asarray(old(logits, key, temperature, k, p))
            np.testing.assert_array_equal(a[same_set], b[same_set])
