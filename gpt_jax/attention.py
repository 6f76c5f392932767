"""Causal self-attention without the (B, H, T, T) scores in memory: a fused kernel per platform, XLA elsewhere.

Shapes: B batch, T tokens, H heads, D head dim. q, k, v are (B, T, H, D), q already multiplied by 1/sqrt(D)
(the model scales q, not the scores), so no kernel here scales again.

`flash_attention` picks the kernel with `jax.lax.platform_dependent`, by the platform the program is lowered for
(the devices `jax.jit` compiles for), so a program compiled on a CPU host for a TPU takes the TPU kernel:
    TPU  -> Pallas splash attention (jax.experimental.pallas.ops.tpu.splash_attention), causal mask, with its
            own backward kernels (custom VJP);
    CUDA -> cuDNN flash attention through `jax.nn.dot_product_attention(implementation="cudnn")`;
    else -> `xla_attention`, the plain einsum / causal mask / float32 softmax, as the model's XLA path.
Where a platform's kernel does not take the shapes or dtype (see `flash_supported`), that platform gets
`xla_attention` too, so `flash_attention` runs everywhere. None of the kernels has dropout on the probabilities:
`flash_supported` says no when attention dropout is on.

Splash attention rather than the older Pallas TPU `flash_attention` op: both take causal masks, head dim 64 and
custom VJPs, but only splash exposes Pallas interpret mode (`make_splash_mha(..., interpret=True)`), which lets the
tests run the TPU kernel's own code on CPU (`flash_attention(..., interpret=True)`). Head dim 64 (GPT-2's) needs
no padding to 128: a block spanning the whole head dim is legal for Mosaic, and padding would only double the
bytes of q, k, v read.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as splash_mask
from jax.sharding import Mesh, PartitionSpec as P

from gpt_jax.utils import NEG_INF

# Splash tiles: q and kv blocks must be multiples of the TPU's 128 lanes. A block covers `block` query rows
# against `block` keys; larger blocks mean fewer grid steps (each has a fixed cost) for the same work, and a
# 512 x 512 float32 score tile is 1 MiB of VMEM. The first of these that divides T is used; forward and backward
# compile for v5e at every T in 128, 256, 384, 512, 768, 1024, 1536, 2048 and 4096.
TPU_BLOCKS = (512, 256, 128)
TPU_MIN_BLOCK = TPU_BLOCKS[-1]
CUDNN_MAX_HEAD_DIM = 128  # cuDNN flash attention on pre-Hopper GPUs; Hopper allows 256, not relied on here


def xla_attention(q, k, v):
    """Plain causal attention: q, k, v (B, T, H, D), q pre-scaled -> (B, T, H, D) in q.dtype.

    Materializes the (B, H, T, T) scores; softmax in float32, probabilities cast back to the compute dtype before
    the product with v, as the model's XLA path."""
    T = q.shape[1]
    att = jnp.einsum("bthd,bshd->bhts", q, k)  # (B, H, T, S=T)
    causal = jnp.tril(jnp.ones((T, T), dtype=bool))  # (T, S): itself and the past only
    att = jnp.where(causal, att.astype(jnp.float32), NEG_INF)
    probs = jax.nn.softmax(att, axis=-1).astype(q.dtype)
    return jnp.einsum("bhts,bshd->bthd", probs, v).astype(q.dtype)  # (B, T, H, D)


def flash_supported(*, platform: str, seq_len: int, head_dim: int, dtype, dropout: float) -> tuple[bool, str]:
    """Whether `attention="auto"` should take the kernel on `platform` ('tpu', 'gpu' / 'cuda', 'cpu').

    Returns (True, "") or (False, a short reason)."""
    platform = platform.lower()
    if dropout > 0:
        return False, f"attention dropout {dropout} > 0: the fused kernels have no dropout on the probabilities"
    if platform == "tpu":
        if seq_len < TPU_MIN_BLOCK or seq_len % TPU_MIN_BLOCK:
            return False, f"seq_len {seq_len} is not a multiple of the TPU kernel's {TPU_MIN_BLOCK}-token blocks"
        if jnp.dtype(dtype) not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16)):
            name = jnp.dtype(dtype).name
            return False, f"dtype {name}: the TPU kernel takes float32 or bfloat16 (float16 fails in Mosaic)"
        return True, ""  # any head_dim: 32, 60, 64, 80, 100, 128, 192, 512 all compile for v5e, forward and backward
    if platform in ("gpu", "cuda"):
        if jnp.dtype(dtype) not in (jnp.dtype(jnp.float16), jnp.dtype(jnp.bfloat16)):
            return False, f"dtype {jnp.dtype(dtype).name}: cuDNN flash attention needs float16 or bfloat16"
        if head_dim > CUDNN_MAX_HEAD_DIM or head_dim % 8:
            return False, f"head_dim {head_dim}: cuDNN needs <= {CUDNN_MAX_HEAD_DIM} and a multiple of 8"
        return True, ""
    if platform == "cpu":
        return False, "CPU: no fused kernel, XLA attention"
    return False, f"no fused attention kernel for platform {platform!r}"


def flash_attention(q, k, v, *, interpret: bool = False, mesh: Mesh | None = None):
    """Causal attention without materializing (B, H, T, T) scores: q, k, v (B, T, H, D), q pre-scaled by 1/sqrt(D)
    -> (B, T, H, D) in q.dtype.

    The kernel is chosen by the platform the program is lowered for (module docstring). interpret=True runs the
    TPU kernel in Pallas interpret mode on any platform, directly (for tests on CPU: slow, same numbers).

    mesh: the data-parallel mesh, where the program spans more than one device. XLA cannot partition a Pallas
    (Mosaic) kernel itself: compiling one for several TPUs without shard_map fails ("Mosaic kernels cannot be
    automatically partitioned"). With a mesh, each device attends over its own rows of the batch, split over all
    the mesh's axes as `gpt_jax.sharding.batch_sharding` splits a batch; B must divide over the mesh."""
    if mesh is not None and mesh.size > 1:
        rows = P(mesh.axis_names)  # (B, ...) split over every mesh axis
        per_device = functools.partial(flash_attention, interpret=interpret)
        return jax.shard_map(per_device, mesh=mesh, in_specs=(rows, rows, rows), out_specs=rows, check_vma=False)(
            q, k, v)
    _, T, _, D = q.shape
    if interpret:
        ok, reason = flash_supported(platform="tpu", seq_len=T, head_dim=D, dtype=q.dtype, dropout=0.0)
        if not ok:
            raise ValueError(f"the TPU kernel does not take these inputs: {reason}")
        return _splash_attention(q, k, v, interpret=True)
    branches = {}
    if flash_supported(platform="tpu", seq_len=T, head_dim=D, dtype=q.dtype, dropout=0.0)[0]:
        branches["tpu"] = functools.partial(_splash_attention, interpret=False)
    if flash_supported(platform="cuda", seq_len=T, head_dim=D, dtype=q.dtype, dropout=0.0)[0] and _cudnn_traces(q):
        branches["cuda"] = _cudnn_attention
    if not branches:
        return xla_attention(q, k, v)
    return jax.lax.platform_dependent(q, k, v, **branches, default=xla_attention)


def _splash_attention(q, k, v, *, interpret: bool):
    """The Pallas TPU splash kernel, causal: (B, T, H, D) -> (B, T, H, D). It takes one sequence (H, T, D) at a
    time; vmap adds the batch."""
    _, T, H, _ = q.shape
    kernel = _splash_kernel(T, H, interpret)
    to_heads = lambda x: x.transpose(0, 2, 1, 3)  # (B, T, H, D) <-> (B, H, T, D)
    y = jax.vmap(kernel)(to_heads(q), to_heads(k), to_heads(v))  # (B, H, T, D)
    return to_heads(y).astype(q.dtype)


@functools.lru_cache(maxsize=None)
def _splash_kernel(seq_len: int, n_head: int, interpret: bool):
    """The splash kernel for a causal (seq_len, seq_len) mask on every head, built once per shape.

    The kernel carries its mask's block tables as arrays; computed eagerly (ensure_compile_time_eval), so a
    kernel first built inside a jit trace holds constants, not that trace's tracers, in this cache."""
    block = next(b for b in TPU_BLOCKS if seq_len % b == 0)
    mask = splash_mask.MultiHeadMask([splash_mask.CausalMask((seq_len, seq_len))] * n_head)
    sizes = splash.BlockSizes(
        block_q=block, block_kv=block, block_kv_compute=block,  # forward
        block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,  # backward: dk, dv
        block_q_dq=block, block_kv_dq=block,  # backward: dq
    )
    with jax.ensure_compile_time_eval():
        return splash.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret)


def _cudnn_attention(q, k, v):
    """cuDNN flash attention, causal, no scaling (q is pre-scaled): (B, T, H, D) -> (B, T, H, D)."""
    return jax.nn.dot_product_attention(q, k, v, is_causal=True, scale=1.0, implementation="cudnn")


def _cudnn_traces(q) -> bool:
    """Whether the cuDNN call can be traced for q's shape and dtype here. jax traces every platform_dependent
    branch, and the cuDNN one raises at trace time where this jaxlib has no cuDNN (a CPU or TPU install)."""
    try:
        spec = jax.ShapeDtypeStruct(q.shape, q.dtype)
        jax.eval_shape(_cudnn_attention, spec, spec, spec)
    except (RuntimeError, NotImplementedError, ValueError):
        return False
    return True
