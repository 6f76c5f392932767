"""gpt_jax.attention: the TPU kernel run in Pallas interpret mode against the XLA reference (values, gradients,
causality), the CPU branch, `flash_supported`, and (with libtpu) a program compiled for a TPU taking the kernel.

Interpret mode runs the kernel's grid step by step in Python-driven XLA: small shapes only. T=384 with the
kernel's 128-token blocks gives a 3 x 3 block grid, so the causal masking inside a diagonal block, the skipping
of blocks above the diagonal and the running softmax across kv blocks all take part; T=256 is one 256 block.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from gpt_jax.attention import flash_attention, flash_supported, xla_attention


def _qkv(B, T, H, D, dtype=jnp.float32, seed=0):
    """Random q, k, v (B, T, H, D); q scaled by 1/sqrt(D) as the model does."""
    kq, kk, kv = jax.random.split(jax.random.key(seed), 3)
    q = jax.random.normal(kq, (B, T, H, D), jnp.float32) / np.sqrt(D)
    k = jax.random.normal(kk, (B, T, H, D), jnp.float32)
    v = jax.random.normal(kv, (B, T, H, D), jnp.float32)
    return q.astype(dtype), k.astype(dtype), v.astype(dtype)


interpreted = jax.jit(lambda q, k, v: flash_attention(q, k, v, interpret=True))


@pytest.mark.parametrize("B, T, H, D", [(2, 256, 2, 64), (1, 384, 2, 64), (1, 128, 2, 128)])
def test_interpreted_kernel_matches_xla_float32(B, T, H, D):
    q, k, v = _qkv(B, T, H, D)
    y = interpreted(q, k, v)  # (B, T, H, D)
    assert y.shape == (B, T, H, D) and y.dtype == jnp.float32
    np.testing.assert_allclose(y, xla_attention(q, k, v), rtol=1e-5, atol=1e-5)


def test_interpreted_kernel_matches_xla_bfloat16():
    q, k, v = _qkv(1, 384, 2, 64, jnp.bfloat16)
    y = interpreted(q, k, v)
    assert y.dtype == jnp.bfloat16
    # Both round to bfloat16 (8 significant bits) at different points; the exact answer is the float32 one.
    exact = xla_attention(*(x.astype(jnp.float32) for x in (q, k, v)))
    np.testing.assert_allclose(y.astype(jnp.float32), exact, rtol=2e-2, atol=2e-2)
    np.testing.assert_allclose(y.astype(jnp.float32), xla_attention(q, k, v).astype(jnp.float32), rtol=2e-2, atol=2e-2)


def test_interpreted_kernel_gradients_match_xla():
    q, k, v = _qkv(1, 384, 2, 64, seed=1)
    w = jax.random.normal(jax.random.key(2), q.shape)  # a loss that weighs every output differently

    def grads(attention):
        loss = lambda q, k, v: jnp.sum(attention(q, k, v) * w)
        return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v)

    got = grads(lambda q, k, v: flash_attention(q, k, v, interpret=True))
    want = grads(xla_attention)
    for name, g, r in zip("qkv", got, want):
        scale = float(jnp.max(jnp.abs(r)))
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-5 * scale, err_msg=f"d loss / d {name}")


def test_interpreted_kernel_is_causal():
    q, k, v = _qkv(1, 384, 2, 64, seed=3)
    t = 200  # inside the second 128-token block: masking within a diagonal block counts
    k2 = k.at[:, t:].set(jax.random.normal(jax.random.key(4), k[:, t:].shape))
    v2 = v.at[:, t:].set(jax.random.normal(jax.random.key(5), v[:, t:].shape))
    y, y2 = interpreted(q, k, v), interpreted(q, k2, v2)
    np.testing.assert_allclose(y2[:, :t], y[:, :t], rtol=1e-6, atol=1e-6)  # the past never sees the future
    assert float(jnp.min(jnp.max(jnp.abs(y2[:, t:] - y[:, t:]), axis=(0, 2, 3)))) > 1e-2  # each later row changed


def test_flash_attention_on_cpu_is_the_xla_reference():
    assert jax.default_backend() == "cpu"
    q, k, v = _qkv(2, 256, 2, 64)
    hlo = jax.jit(flash_attention).lower(q, k, v).as_text()
    assert "tpu_custom_call" not in hlo and "cudnn" not in hlo  # only the default branch is lowered for CPU
    np.testing.assert_allclose(jax.jit(flash_attention)(q, k, v), xla_attention(q, k, v), rtol=1e-6, atol=1e-6)
    grads = lambda attention: jax.jit(jax.grad(lambda *qkv: jnp.sum(attention(*qkv) ** 2), argnums=(0, 1, 2)))(q, k, v)
    for g, r in zip(grads(flash_attention), grads(xla_attention)):
        np.testing.assert_allclose(g, r, rtol=1e-6, atol=1e-6)


def test_flash_supported():
    ok = dict(seq_len=1024, head_dim=64, dtype=jnp.bfloat16, dropout=0.0)
    assert flash_supported(platform="tpu", **ok) == (True, "")
    assert flash_supported(platform="gpu", **ok) == (True, "")
    assert flash_supported(platform="cuda", **ok) == (True, "")
    assert flash_supported(platform="tpu", **{**ok, "dtype": jnp.float32})[0]
    assert flash_supported(platform="tpu", **{**ok, "head_dim": 80})[0]
    rejected = [
        ("tpu", {"dropout": 0.1}), ("gpu", {"dropout": 0.1}), ("cpu", {}), ("rocm", {}),
        ("tpu", {"seq_len": 1000}), ("tpu", {"seq_len": 64}), ("tpu", {"dtype": jnp.float16}),
        ("gpu", {"dtype": jnp.float32}), ("gpu", {"head_dim": 256}), ("gpu", {"head_dim": 60}),
    ]
    for platform, change in rejected:
        supported, reason = flash_supported(platform=platform, **{**ok, **change})
        assert not supported and reason, (platform, change)
    with pytest.raises(ValueError, match="not a multiple"):
        flash_attention(*_qkv(1, 200, 1, 64), interpret=True)


def _tpu_mesh(monkeypatch, topology_name, chips_per_host_bounds):
    """A ("data",) mesh over the devices of a TPU topology that exists only to compile for (needs libtpu)."""
    pytest.importorskip("libtpu")
    from jax.experimental import topologies

    # Only compiling here, no TPU is touched: let libtpu load even while another process holds its lock file.
    monkeypatch.setenv("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    topology = topologies.get_topology_desc(topology_name=topology_name, platform="tpu",
                                            chips_per_host_bounds=chips_per_host_bounds)
    return Mesh(np.array(topology.devices), ("data",))


def test_compiled_for_tpu_takes_the_pallas_kernel(monkeypatch):
    sharding = NamedSharding(_tpu_mesh(monkeypatch, "v5e:1x1", (1, 1, 1)), P())
    x = jax.ShapeDtypeStruct((16, 1024, 12, 64), jnp.bfloat16, sharding=sharding)  # GPT-2 small: T=1024, H=12

    def compile_for_tpu(attention):
        compiled = jax.jit(attention).lower(x, x, x).compile()
        return compiled, compiled.memory_analysis().temp_size_in_bytes

    flash, flash_temp = compile_for_tpu(flash_attention)
    xla, xla_temp = compile_for_tpu(xla_attention)
    assert "tpu_custom_call" in flash.as_text()
    assert "tpu_custom_call" not in xla.as_text()
    # XLA keeps the (B, H, T, T) scores: 16 * 12 * 1024 * 1024 float32 is 805 MB on its own.
    print(f"TPU temp bytes, B=16 T=1024 H=12 D=64 bf16: flash {flash_temp:,} xla {xla_temp:,}")
    assert xla_temp >= 16 * 12 * 1024 * 1024 * 4 > 4 * flash_temp


def test_compiled_for_several_tpus_runs_the_kernel_per_device(monkeypatch):
    mesh = _tpu_mesh(monkeypatch, "v5e:2x2", (2, 2, 1))
    x = jax.ShapeDtypeStruct((8, 256, 2, 64), jnp.bfloat16, sharding=NamedSharding(mesh, P("data")))
    loss = lambda q, k, v: jnp.sum(flash_attention(q, k, v, mesh=mesh).astype(jnp.float32))
    compiled = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2))).lower(x, x, x).compile()
    hlo = compiled.as_text()
    assert "tpu_custom_call" in hlo
    assert "all-gather" not in hlo  # each device keeps its own rows: no gathering of q, k, v
