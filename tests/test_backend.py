"""gpt_jax.backend: the CPU decoding rewrite follows the platform a program is lowered for, and never reaches
training or the full forward pass. Programs are exported for named platforms with `jax.export`, which needs no
TPU or GPU: the test reads the StableHLO for the rewrite's `optimization_barrier`."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gpt_jax import backend
from gpt_jax.config import ModelConfig
from gpt_jax.model import GPT, init_cache, init_params

REWRITE_MARK = "optimization_barrier"  # what `backend._weight_first` adds to a program; nothing else adds it


def small(**kw):
    base = dict(n_layer=2, n_head=4, d_model=32, d_ff=64, block_size=16, vocab_size=50, dropout=0.0)
    return ModelConfig(**{**base, **kw})


def lowered_for(platform: str, fn, *args) -> str:
    """The StableHLO text of jit(fn) lowered for `platform`, from abstract arguments (nothing runs)."""
    return jax.export.export(jax.jit(fn), platforms=(platform,))(*args).mlir_module()


def abstract_params(cfg):
    return jax.eval_shape(partial(init_params, cfg), jax.random.PRNGKey(0))


def ids_spec(B, T):
    return jax.ShapeDtypeStruct((B, T), jnp.int32)


def decode_step(cfg):
    model = GPT(cfg)
    return lambda params, ids, cache: model.apply({"params": params}, ids, cache=cache)


@pytest.mark.parametrize("tie", [True, False])
def test_decode_step_has_the_cpu_rewrite_only_when_lowered_for_cpu(tie):
    cfg = small(tie_embeddings=tie)
    args = (abstract_params(cfg), ids_spec(2, 1), jax.eval_shape(lambda: init_cache(cfg, 2)))
    assert REWRITE_MARK in lowered_for("cpu", decode_step(cfg), *args)
    for platform in ("tpu", "cuda"):  # compiled on this CPU host for an accelerator: none of the CPU rewrite
        assert REWRITE_MARK not in lowered_for(platform, decode_step(cfg), *args), platform
    assert REWRITE_MARK in jax.jit(decode_step(cfg)).lower(*args).as_text()  # this host's devices are CPUs


def test_decoding_one_row_or_many_rows_takes_no_rewrite():
    cfg = small(block_size=128)
    params = abstract_params(cfg)
    for B, T in [(1, 1), (1, 65), (8, 16)]:  # 1 row: already a matrix-vector product; over FEW_ROWS: plain
        args = (params, ids_spec(B, T), jax.eval_shape(lambda: init_cache(cfg, B)))
        assert REWRITE_MARK not in lowered_for("cpu", decode_step(cfg), *args), (B, T)


@pytest.mark.parametrize("B,T", [(2, 1), (2, 8), (4, 16)])
def test_full_forward_never_takes_the_rewrite(B, T):
    cfg = small()
    model = GPT(cfg)
    forward = lambda params, ids: model.apply({"params": params}, ids)
    assert REWRITE_MARK not in lowered_for("cpu", forward, abstract_params(cfg), ids_spec(B, T))


def test_training_with_per_row_dropout_never_takes_the_rewrite():
    """The training step's dropout form: the model applied to one row at a time under `vmap`, each with its own
    key. Inside the vmap a call sees T rows (8 here), in the few-rows range; it is still training."""
    cfg = small(dropout=0.1)
    model = GPT(cfg)

    def loss(params, ids, key):
        keys = jax.vmap(jax.random.fold_in, (None, 0))(key, jnp.arange(ids.shape[0]))

        def one_row(row, row_key):  # (T,) -> (T, vocab)
            return model.apply({"params": params}, row[None], train=True, rngs={"dropout": row_key})[0]

        return jnp.mean(jax.vmap(one_row)(ids, keys) ** 2)

    grads = jax.grad(loss)
    args = (abstract_params(cfg), ids_spec(2, 8), jax.ShapeDtypeStruct((2,), jnp.uint32))
    assert REWRITE_MARK not in lowered_for("cpu", grads, *args)
    assert REWRITE_MARK not in jax.jit(grads).lower(*args).as_text()


@pytest.mark.parametrize("rows", [1, 2, 8, 64, 100])
@pytest.mark.parametrize("decoding", [False, True])
def test_linear_is_x_times_w_transposed_in_every_form(rows, decoding):
    x = jax.random.normal(jax.random.PRNGKey(0), (rows, 24))
    w = jax.random.normal(jax.random.PRNGKey(1), (40, 24))
    want = np.asarray(x, np.float64) @ np.asarray(w, np.float64).T
    got = jax.jit(partial(backend.linear, decoding=decoding))(x, w)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    got_3d = jax.jit(partial(backend.linear, decoding=decoding))(x.reshape(1, rows, 24), w)
    np.testing.assert_allclose(got_3d[0], want, rtol=1e-5, atol=1e-4)
