"""The GPT decoder stack in Flax Linen: GPT-1 (post-LN) and GPT-2 (pre-LN) behind one switch.

Shapes: B batch, T tokens in this call, S cache length, C = d_model, H heads, D = C // H, V padded vocab.

The blocks run under `nn.scan`: one block's program, applied n_layer times, so XLA compiles one block instead
of n_layer unrolled copies (GPT-1's train step compiles for a TPU in about a minute, not three). Their parameters
are stacked over a leading layer axis, `params["h"][...]` of shape (n_layer, ...). On CPU the layers run unrolled
(`model.layer_loop`), each applied to its slice of the stack: XLA:CPU ran the scan's loop 2x slower in decoding
(every weight sliced per token) and 1.14x in training. The sampler hands an unrolled model its layers as a list
(`unstack_layers`), sliced once before decoding. `model.remat` rematerializes
each block in the backward pass (`REMAT_POLICIES`), trading compute for activation memory.

KV cache (an explicit pytree, passed in and returned; see `init_cache`):
    {"k": (n_layer, B * H, D, S), "v": (n_layer, B * H, S, D), "pos": int32 ()}
Batch and heads flattened, keys stored transposed: each attention product is a plain batched matmul over the
cache as stored, `q (T, D) @ k (D, S)` and `att (T, S) @ v (S, D)`, with the batch dimension leading and the
contraction on the inner dimensions. So a call transposes only its own T new keys and values, never the
S-long cache. The cache is carried through the layer scan and updated in place, layer i's T new entries at
[i, :, :, pos] (see CausalSelfAttention).
`pos` is how many positions are already filled; a call with T tokens writes positions [pos, pos + T)
and returns the cache with pos + T. `pos` is a traced value, so decoding never recompiles per token.
A call with a cache is decoding: its matmuls go through `gpt_jax.backend.linear` with `decoding=True`, which
may pick a faster form for the platform the program is compiled for. Training never passes a cache.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from gpt_jax.attention import flash_attention
from gpt_jax.backend import linear
from gpt_jax.config import ModelConfig
from gpt_jax.utils import NEG_INF

Cache = dict[str, Any]


def _dtype(cfg: ModelConfig):
    """The compute dtype. "auto" is resolved for the devices by `ModelConfig.for_platform` before a run builds
    its model; one left unresolved computes in float32."""
    return jnp.bfloat16 if cfg.dtype == "bfloat16" else jnp.float32


# model.remat -> what a block keeps for the backward pass (None: everything; otherwise a jax.checkpoint policy).
REMAT_POLICIES = {
    "block": jax.checkpoint_policies.nothing_saveable,  # only the block's input: all of it recomputed
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # the dense layers' outputs; attention,
    #   GELU, LayerNorm and dropout recomputed
}


def _init(std: float):
    return nn.initializers.normal(stddev=std)


def init_cache(cfg: ModelConfig, batch_size: int, length: Optional[int] = None, dtype=None) -> Cache:
    """An empty cache for `batch_size` sequences of up to `length` (default: block_size) positions."""
    length = cfg.block_size if length is None else length
    if length > cfg.block_size:
        raise ValueError(f"cache length {length} exceeds the model's context block_size={cfg.block_size}")
    dtype = _dtype(cfg) if dtype is None else dtype
    k_shape = (cfg.n_layer, batch_size * cfg.n_head, cfg.head_dim, length)  # (L, B * H, D, S)
    v_shape = (cfg.n_layer, batch_size * cfg.n_head, length, cfg.head_dim)  # (L, B * H, S, D)
    return {"k": jnp.zeros(k_shape, dtype), "v": jnp.zeros(v_shape, dtype), "pos": jnp.zeros((), jnp.int32)}


def _fmix32(x):
    """MurmurHash3's 32-bit finalizer: a bijection of uint32 whose every output bit depends on every input bit."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x85EBCA6B)
    x = x ^ (x >> 13)
    x = x * jnp.uint32(0xC2B2AE35)
    return x ^ (x >> 16)


def _hash_keep(key, keep_prob: float, shape):
    """A Bernoulli(keep_prob) mask from a counter hash: element i keeps iff fmix32(fmix32(i ^ k0) + k1) is below
    keep_prob * 2^32, (k0, k1) the threefry key's words (every row, layer and dropout site has its own key).
    Two multiply-xorshift rounds per element where threefry takes twenty: for dropout masks, not for statistics."""
    words = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    words = words.astype(jnp.uint32).reshape(-1)
    counter = jax.lax.iota(jnp.uint32, math.prod(shape)).reshape(shape)
    bits = _fmix32(_fmix32(counter ^ words[0]) + words[1])
    return bits < jnp.uint32(min(int(keep_prob * 2.0 ** 32), 2 ** 32 - 1))


class Dropout(nn.Module):
    """Dropout as flax's nn.Dropout (inputs / keep_prob where kept, else 0), with the mask's random bits chosen by
    the platform the program is compiled for: on CPU jax's threefry (`jax.random.bernoulli`, flax's own mask); on
    TPU and GPU a counter hash (`_hash_keep`). Threefry for every mask of GPT-1 (embedding, attention
    probabilities, two residual branches, recomputed in the backward pass) made its TPU train step compile in 98 s
    instead of 37 (docs/performance.md). Both are per-row keyed, so masks do not depend on how a batch is split."""
    rate: float

    @nn.compact
    def __call__(self, x, deterministic: bool):
        if deterministic or self.rate == 0.0:
            return x
        keep_prob = 1.0 - self.rate
        key = self.make_rng("dropout")
        keep = jax.lax.platform_dependent(
            key, cpu=lambda k: jax.random.bernoulli(k, keep_prob, x.shape),
            default=lambda k: _hash_keep(k, keep_prob, x.shape))
        return jax.lax.select(keep, x / keep_prob, jnp.zeros_like(x))


class Dense(nn.Module):
    """y = x @ kernel.T + bias, with the kernel stored (out, in), as PyTorch's Linear.

    Decoding multiplies one row, or a few, by every weight at every token; with each output's weights
    contiguous, a row's product reads the kernel front to back. (The importers transpose HF's Conv1D weights,
    stored (in, out), once at load time.) `decoding` marks a call with a KV cache (see `gpt_jax.backend.linear`).
    Initialization as nn.Dense: N(0, std) kernel, zero bias."""
    features: int
    std: float = 0.02
    dtype: Any = jnp.float32
    use_bias: bool = True

    @nn.compact
    def __call__(self, x, *, decoding: bool = False):  # (..., in) -> (..., out)
        kernel = self.param("kernel", _init(self.std), (self.features, x.shape[-1])).astype(self.dtype)  # (out, in)
        y = linear(x.astype(self.dtype), kernel, decoding=decoding)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,)).astype(self.dtype)
        return y


class CausalSelfAttention(nn.Module):
    cfg: ModelConfig
    mesh: Any = None  # the training mesh: the flash kernel runs per device over it (gpt_jax.attention)

    @nn.compact
    def __call__(self, x, *, train: bool, kv=None, pos=None, layer=None):
        # x: (B, T, C); kv: optional (k, v) cache of every layer, (L, B * H, D, S) and (L, B * H, S, D), of which
        # this one is `layer` (int32 ()); pos: int32 ()
        cfg = self.cfg
        B, T, C = x.shape
        H, D = cfg.n_head, cfg.head_dim
        decoding = kv is not None
        dense = lambda n, std, name: Dense(n, std, _dtype(cfg), name=name)
        qkv = dense(3 * C, 0.02, "c_attn")(x, decoding=decoding)  # (B, T, 3C), one fused matmul
        q, k, v = jnp.split(qkv.reshape(B, T, 3, H, D), 3, axis=2)
        q, k, v = q[:, :, 0], k[:, :, 0], v[:, :, 0]  # (B, T, H, D)
        q = q * (1.0 / math.sqrt(D))  # scaled here, not the (B, H, T, S) scores: T / D times fewer multiplies

        if kv is None and cfg.attention == "flash":  # fused kernel: no (B, H, T, T) scores in memory
            y, new_kv = flash_attention(q, k, v, mesh=self.mesh), None  # (B, T, H, D)
        elif kv is None:  # training / full forward: keys and values are (B, T, H, D), s indexes T
            att = jnp.einsum("bthd,bshd->bhts", q, k)  # (B, H, T, S=T)
            att = self._probs(att, jnp.arange(T), jnp.arange(T), train)
            y = jnp.einsum("bhts,bshd->bthd", att, v)  # (B, T, H, D)
            new_kv = None
        else:  # with a cache: write this call's keys and values at [pos, pos + T), attend over the whole cache
            # Batch and heads flattened (B * H), keys transposed: the cache enters the attention matmuls as
            # stored, `q (T, D) @ k (D, S)` and `att (T, S) @ v (S, D)`; only the T new entries are transposed,
            # and the update is in place (the module docstring has the layout).
            k_all, v_all = kv  # (L, B * H, D, S), (L, B * H, S, D)
            S = k_all.shape[-1]
            k_new = k.transpose(0, 2, 3, 1).reshape(1, B * H, D, T).astype(k_all.dtype)
            v_new = v.transpose(0, 2, 1, 3).reshape(1, B * H, T, D).astype(v_all.dtype)
            k_all = jax.lax.dynamic_update_slice(k_all, k_new, (layer, 0, 0, pos))
            v_all = jax.lax.dynamic_update_slice(v_all, v_new, (layer, 0, pos, 0))
            new_kv = (k_all, v_all)
            k_cache = jax.lax.dynamic_index_in_dim(k_all, layer, keepdims=False)  # (B * H, D, S)
            v_cache = jax.lax.dynamic_index_in_dim(v_all, layer, keepdims=False)  # (B * H, S, D)
            q = q.transpose(0, 2, 1, 3).reshape(B * H, T, D)
            att = jnp.einsum("ntd,nds->nts", q, k_cache.astype(q.dtype))  # (B * H, T, S)
            att = self._probs(att.reshape(B, H, T, S), pos + jnp.arange(T), jnp.arange(S), train)
            y = jnp.einsum("nts,nsd->ntd", att.reshape(B * H, T, S), v_cache.astype(q.dtype))  # (B * H, T, D)
            y = y.reshape(B, H, T, D).transpose(0, 2, 1, 3)  # (B, T, H, D)
        y = y.reshape(B, T, C)
        y = dense(C, 0.02 / math.sqrt(2 * cfg.n_layer), "c_proj")(y, decoding=decoding)  # GPT-2's scaled residual init
        y = Dropout(cfg.dropout)(y, deterministic=not train)
        return y, new_kv

    def _probs(self, att, q_pos, k_pos, train: bool):
        """Attention scores (B, H, T, S) -> causal softmax probabilities (in float32, then the compute dtype)."""
        bias = jnp.where(k_pos[None, :] <= q_pos[:, None], 0.0, NEG_INF)  # (T, S): itself and the past only
        probs = jax.nn.softmax(att.astype(jnp.float32) + bias, axis=-1).astype(att.dtype)
        return Dropout(self.cfg.dropout)(probs, deterministic=not train)


class MLP(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x, *, train: bool, decoding: bool = False):  # (B, T, C) -> (B, T, C)
        cfg = self.cfg
        h = Dense(cfg.d_ff, 0.02, _dtype(cfg), name="c_fc")(x, decoding=decoding)  # (B, T, F)
        h = jax.nn.gelu(h, approximate=cfg.activation == "gelu_tanh")  # tanh GELU, as GPT-1/2
        h = Dense(cfg.d_model, 0.02 / math.sqrt(2 * cfg.n_layer), _dtype(cfg), name="c_proj")(h, decoding=decoding)
        return Dropout(cfg.dropout)(h, deterministic=not train)


class Block(nn.Module):
    """One decoder block, the body of the layer scan: carry (x (B, T, C), kv, layer) -> (carry, None), where kv is
    None or the whole cache's (k, v) and `layer` this block's index in it."""
    cfg: ModelConfig
    mesh: Any = None

    @nn.compact
    def __call__(self, carry, train: bool, pos):
        x, kv, layer = carry
        cfg = self.cfg
        ln_1 = nn.LayerNorm(epsilon=cfg.ln_eps, dtype=_dtype(cfg), name="ln_1")
        ln_2 = nn.LayerNorm(epsilon=cfg.ln_eps, dtype=_dtype(cfg), name="ln_2")
        attn = CausalSelfAttention(cfg, self.mesh, name="attn")
        mlp = MLP(cfg, name="mlp")
        decoding = kv is not None
        if cfg.norm_position == "pre":  # GPT-2: x + f(LN(x))
            a, kv = attn(ln_1(x), train=train, kv=kv, pos=pos, layer=layer)
            x = x + a
            x = x + mlp(ln_2(x), train=train, decoding=decoding)
        else:  # GPT-1: LN(x + f(x))
            a, kv = attn(x, train=train, kv=kv, pos=pos, layer=layer)
            x = ln_1(x + a)
            x = ln_2(x + mlp(x, train=train, decoding=decoding))
        return (x, kv, layer + 1), None


def scanned_blocks(cfg: ModelConfig, mesh=None, name: str = "h"):
    """The n_layer blocks as one `nn.scan`ned module (parameters stacked on axis 0; each layer its own dropout
    and init keys), each block rematerialized in the backward pass as `cfg.remat` says."""
    block = Block
    # "none", or "auto" left unresolved: nothing recomputed; train (argument 2, counting self) is a static bool
    if cfg.remat in REMAT_POLICIES:
        block = nn.remat(Block, policy=REMAT_POLICIES[cfg.remat], prevent_cse=False, static_argnums=(2,))
    return nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
                   in_axes=(nn.broadcast, nn.broadcast), length=cfg.n_layer)(cfg, mesh, name=name)


def unstack_layers(params) -> dict:
    """params with the stacked blocks `h` (n_layer, ...) given as a list of per-layer trees: what an unrolled model
    reads without slicing a weight inside its program (the sampler does it once, before its decoding loop)."""
    h = params["h"]
    if isinstance(h, (list, tuple)):
        return params
    n = jax.tree_util.tree_leaves(h)[0].shape[0]
    return {**params, "h": [jax.tree_util.tree_map(lambda p, i=i: p[i], h) for i in range(n)]}


class GPT(nn.Module):
    """cfg: the model; mesh: the devices a training step spans, needed only by the flash attention kernel (which
    XLA cannot partition by itself)."""
    cfg: ModelConfig
    mesh: Any = None

    def setup(self):
        cfg = self.cfg
        if cfg.attention == "flash" and cfg.dropout > 0:
            raise ValueError(f"model.attention='flash' has no attention dropout, and model.dropout={cfg.dropout}: set "
                             "model.dropout=0 or model.attention='xla' (or 'auto', which picks)")
        self.wte = self.param("wte", _init(0.02), (cfg.padded_vocab, cfg.d_model))  # (V, C)
        self.wpe = self.param("wpe", _init(0.02), (cfg.block_size, cfg.d_model))  # (block_size, C)
        self.blocks = scanned_blocks(cfg, self.mesh)  # params["h"]: every block's parameters, stacked (n_layer, ...)
        if cfg.norm_position == "pre":
            self.ln_f = nn.LayerNorm(epsilon=cfg.ln_eps, dtype=_dtype(cfg), name="ln_f")
        if not cfg.tie_embeddings:
            self.lm_head = Dense(cfg.padded_vocab, 0.02, _dtype(cfg), use_bias=False, name="lm_head")
        self.drop = Dropout(cfg.dropout)

    def hidden(self, ids, *, train: bool = False, cache: Optional[Cache] = None):
        """Final hidden states (B, T, C) (after ln_f for pre-LN) and the updated cache (or None)."""
        cfg = self.cfg
        B, T = ids.shape
        pos = jnp.zeros((), jnp.int32) if cache is None else cache["pos"]
        if cache is None and T > cfg.block_size:
            raise ValueError(f"sequence of {T} tokens exceeds the model's context block_size={cfg.block_size}")
        wpe = jax.lax.dynamic_slice_in_dim(self.wpe, pos, T, axis=0)  # (T, C)
        x = (jnp.take(self.wte, ids, axis=0) + wpe[None]).astype(_dtype(cfg))  # (B, T, C)
        x = self.drop(x, deterministic=not train)
        kv = None if cache is None else (cache["k"], cache["v"])
        if cfg.layer_loop == "scan" or self.is_initializing():
            (x, kv, _), _ = self.blocks((x, kv, jnp.zeros((), jnp.int32)), train, pos)
        else:  # unrolled: each layer's parameters taken from the stack (or a list of them: `unstack_layers`)
            layers = self.variables["params"]["h"]
            block_class = Block
            if cfg.remat in REMAT_POLICIES:
                block_class = nn.remat(Block, policy=REMAT_POLICIES[cfg.remat], prevent_cse=False, static_argnums=(2,))
            block = block_class(cfg, self.mesh, parent=None)  # unbound: applied to each layer's parameters
            for i in range(cfg.n_layer):
                p = layers[i] if isinstance(layers, (list, tuple)) else jax.tree_util.tree_map(lambda a: a[i], layers)
                rngs = {"dropout": jax.random.fold_in(self.make_rng("dropout"), i)} if train and cfg.dropout else {}
                (x, kv, _), _ = block.apply({"params": p}, (x, kv, i), train, pos, rngs=rngs)
        if cfg.norm_position == "pre":
            x = self.ln_f(x)
        new_cache = None if cache is None else {"k": kv[0], "v": kv[1], "pos": pos + T}
        return x, new_cache

    def logits(self, h, *, padded: bool = False, decoding: bool = False):
        """(B, T, C) hidden states -> float32 logits (B, T, vocab_size), or (B, T, padded_vocab) if padded.

        Padded columns (extra tokens and rounding) are set to a large negative number, so they are never
        sampled and carry no probability in the loss. `decoding`: the hidden states come from a call with a cache.
        """
        cfg = self.cfg
        if cfg.tie_embeddings:
            logits = linear(h, self.wte.astype(h.dtype), decoding=decoding)  # (B, T, V): h @ wte.T
        else:
            logits = self.lm_head(h, decoding=decoding)
        logits = logits.astype(jnp.float32)
        if padded:
            return jnp.where(jnp.arange(cfg.padded_vocab) < cfg.vocab_size, logits, NEG_INF)
        return logits[..., : cfg.vocab_size]

    def __call__(self, ids, *, train: bool = False, cache: Optional[Cache] = None, padded: bool = False,
                 return_hidden: bool = False):
        """ids (B, T) int32 -> logits (B, T, vocab_size); with a cache: (logits, new_cache).

        return_hidden=True adds the final hidden states (B, T, C) as the last output.
        """
        h, new_cache = self.hidden(ids, train=train, cache=cache)
        logits = self.logits(h, padded=padded, decoding=cache is not None)
        out = (logits,) if cache is None else (logits, new_cache)
        if return_hidden:
            out = out + (h,)
        return out[0] if len(out) == 1 else out


def init_params(cfg: ModelConfig, rng) -> dict:
    """Fresh parameters (float32), drawn from `rng`."""
    ids = jnp.zeros((1, min(8, cfg.block_size)), jnp.int32)
    return GPT(cfg).init({"params": rng}, ids)["params"]


def count_params(params, *, exclude_positions: bool = False) -> int:
    n = sum(x.size for x in jax.tree_util.tree_leaves(params))
    if exclude_positions:
        n -= params["wpe"].size
    return int(n)


def head_weight(params, cfg: ModelConfig):
    """The output projection as (padded_vocab, C): the tied token embedding, or the untied head's kernel."""
    return params["wte"] if cfg.tie_embeddings else params["lm_head"]["kernel"]
