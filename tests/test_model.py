import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gpt_jax.config import ModelConfig
from gpt_jax.model import GPT, Dense, count_params, init_cache, init_params


def small(norm="pre", **kw):
    base = dict(n_layer=2, n_head=4, d_model=32, d_ff=64, block_size=16, vocab_size=50, dropout=0.0,
                norm_position=norm)
    base.update(kw)
    return ModelConfig(**base)


def ids_for(cfg, B=3, T=None, seed=1):
    T = cfg.block_size if T is None else T
    return jax.random.randint(jax.random.PRNGKey(seed), (B, T), 0, cfg.vocab_size)


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_shapes(norm):
    cfg = small(norm)
    params = init_params(cfg, jax.random.PRNGKey(0))
    model = GPT(cfg)
    ids = ids_for(cfg, B=3, T=10)
    logits = model.apply({"params": params}, ids)
    assert logits.shape == (3, 10, cfg.vocab_size) and logits.dtype == jnp.float32
    padded, hidden = model.apply({"params": params}, ids, padded=True, return_hidden=True)
    assert padded.shape == (3, 10, cfg.padded_vocab) == (3, 10, 128)
    assert hidden.shape == (3, 10, cfg.d_model)
    assert np.all(np.asarray(padded[..., cfg.vocab_size:]) < -1e29)  # padded columns carry no probability
    np.testing.assert_allclose(padded[..., : cfg.vocab_size], logits, rtol=0, atol=0)
    assert ("ln_f" in params) == (norm == "pre")
    assert params["wte"].shape == (128, 32)
    assert params["h"]["attn"]["c_attn"]["kernel"].shape == (2, 96, 32)  # (layers, out, in)


def test_pre_and_post_ln_differ():
    ids = ids_for(small(), T=8)
    outs = [GPT(small(n)).apply({"params": init_params(small(n), jax.random.PRNGKey(0))}, ids) for n in ("pre", "post")]
    assert float(jnp.abs(outs[0] - outs[1]).max()) > 1e-3


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_causality(norm):
    cfg = small(norm)
    params = init_params(cfg, jax.random.PRNGKey(0))
    model = GPT(cfg)
    ids = ids_for(cfg)
    changed = ids.at[:, 9].set((ids[:, 9] + 1) % cfg.vocab_size)
    a = model.apply({"params": params}, ids)
    b = model.apply({"params": params}, changed)
    np.testing.assert_array_equal(a[:, :9], b[:, :9])  # earlier positions untouched
    assert float(jnp.abs(a[:, 9:] - b[:, 9:]).max()) > 1e-4  # later ones do see the change


@pytest.mark.parametrize("norm,B", [("pre", 2), ("post", 2), ("pre", 1)])
def test_cached_decoding_equals_full_forward(norm, B):
    """B = 1 decodes through the one-row matmuls; B = 2, on this CPU host, through the few-rows form of both the
    Dense layers and the tied head (`gpt_jax.backend.linear`: w @ x.T)."""
    cfg = small(norm)
    params = init_params(cfg, jax.random.PRNGKey(0))
    model = GPT(cfg)
    ids = ids_for(cfg, B=B)
    full = model.apply({"params": params}, ids)
    step = jax.jit(lambda p, x, c: model.apply({"params": p}, x, cache=c))
    cache = init_cache(cfg, B)
    logits, cache = step(params, ids[:, :5], cache)  # prefill 5 tokens
    np.testing.assert_allclose(logits, full[:, :5], atol=1e-5)
    for t in range(5, cfg.block_size):  # then one token at a time
        logits, cache = step(params, ids[:, t : t + 1], cache)
        np.testing.assert_allclose(logits[:, 0], full[:, t], atol=1e-5, err_msg=f"position {t}")
    assert int(cache["pos"]) == cfg.block_size
    assert cache["k"][0].shape == (B * cfg.n_head, cfg.head_dim, cfg.block_size)  # (B * H, D, S)
    assert cache["v"][0].shape == (B * cfg.n_head, cfg.block_size, cfg.head_dim)  # (B * H, S, D)


@pytest.mark.parametrize("rows,decoding", [(1, True), (8, True), (8, False), (100, True)])  # 8 decoding: kernel @ x.T
def test_dense_matches_numpy_with_kernel_out_in(rows, decoding):
    dense = Dense(24, std=0.5)
    x = jax.random.normal(jax.random.PRNGKey(0), (rows, 16))
    params = dense.init(jax.random.PRNGKey(1), x)["params"]
    assert params["kernel"].shape == (24, 16)  # (out, in), as PyTorch's Linear
    params = {"kernel": params["kernel"], "bias": jnp.arange(24.0) / 10}
    k, b = np.asarray(params["kernel"], np.float64), np.asarray(params["bias"], np.float64)
    y = dense.apply({"params": params}, x, decoding=decoding)
    np.testing.assert_allclose(y, np.asarray(x, np.float64) @ k.T + b, atol=1e-5)
    g = jax.grad(lambda p, x: jnp.sum(dense.apply({"params": p}, x, decoding=decoding) ** 2), argnums=(0, 1))(params, x)
    y = np.asarray(x, np.float64) @ k.T + b
    np.testing.assert_allclose(g[0]["kernel"], 2 * y.T @ np.asarray(x, np.float64), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(g[1], 2 * y @ k, rtol=1e-4, atol=1e-4)


def test_dropout_only_in_training():
    cfg = small(dropout=0.5)
    params = init_params(cfg, jax.random.PRNGKey(0))
    model = GPT(cfg)
    ids = ids_for(cfg)
    a = model.apply({"params": params}, ids)
    b = model.apply({"params": params}, ids)
    np.testing.assert_array_equal(a, b)
    t1 = model.apply({"params": params}, ids, train=True, rngs={"dropout": jax.random.PRNGKey(1)})
    t2 = model.apply({"params": params}, ids, train=True, rngs={"dropout": jax.random.PRNGKey(2)})
    assert float(jnp.abs(t1 - t2).max()) > 1e-3


def test_init_statistics_and_count():
    cfg = small(n_layer=4, d_model=64, d_ff=256, vocab_size=300)
    params = init_params(cfg, jax.random.PRNGKey(0))
    assert abs(float(jnp.std(params["wte"])) - 0.02) < 0.002
    assert abs(float(jnp.std(params["h"]["mlp"]["c_fc"]["kernel"])) - 0.02) < 0.002
    # GPT-2's scaled init of residual projections: 0.02 / sqrt(2 * n_layer)
    assert abs(float(jnp.std(params["h"]["mlp"]["c_proj"]["kernel"])) - 0.02 / np.sqrt(8)) < 0.001
    assert float(jnp.abs(params["h"]["attn"]["c_attn"]["bias"]).max()) == 0.0
    kernels = params["h"]["attn"]["c_attn"]["kernel"]  # (L, 3C, C): each scanned layer draws its own init
    assert kernels.shape[0] == 4
    assert not np.allclose(kernels[0], kernels[1])
    C, F, L = 64, 256, 4
    per_layer = 3 * C * C + 3 * C + C * C + C + C * F + F + F * C + C + 4 * C
    assert count_params(params) == cfg.padded_vocab * C + cfg.block_size * C + L * per_layer + 2 * C


def test_untied_head_and_bf16():
    cfg = small(tie_embeddings=False, dtype="bfloat16")
    params = init_params(cfg, jax.random.PRNGKey(0))
    assert params["lm_head"]["kernel"].shape == (128, 32)  # (padded vocab, d_model): (out, in)
    assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(params))  # fp32 master weights
    logits = GPT(cfg).apply({"params": params}, ids_for(cfg))
    assert logits.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(logits)))


def test_sequence_longer_than_context_is_an_error():
    cfg = small()
    params = init_params(cfg, jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="exceeds the model's context"):
        GPT(cfg).apply({"params": params}, jnp.zeros((1, cfg.block_size + 1), jnp.int32))


def test_bad_model_config():
    with pytest.raises(ValueError, match="not divisible"):
        small(n_head=5)
    with pytest.raises(ValueError, match="norm_position"):
        small(norm="middle")
    with pytest.raises(ValueError, match="unknown model config keys"):
        ModelConfig.from_dict({"n_layers": 3})
