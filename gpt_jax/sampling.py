"""Text generation with a KV cache: the prompt is prefilled once, then one token per step inside a jitted
`lax.while_loop`, the cache an explicit pytree carried through the loop. Nothing recompiles per token: one
compile per (batch size, prompt-length bucket, total-length bucket, sampling settings).

The sampler only needs `logits_fn(params, ids (B, T), cache) -> (logits (B, T, V), cache)` and
`make_cache(batch, length) -> cache`, so it can be tested with a stub model.

Generating past the model's context: when the cache is full, it is rebuilt from the last half-context of
tokens (one prefill over `cache_len` tokens, then half a context of cheap steps), inside the same loop.
"""

from __future__ import annotations

from functools import partial
from typing import Callable, Iterator, Optional

import jax
import jax.numpy as jnp
import numpy as np

from gpt_jax.model import init_cache, unstack_layers
from gpt_jax.utils import round_up

BUCKET = 64  # prompt and buffer lengths are rounded up to this, so similar lengths share one compile


class SamplingError(ValueError):
    """A prompt or setting the sampler cannot use."""


def sample_logits(logits, rng, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0):
    """logits (B, V) float32 -> token ids (B,) int32. temperature 0 = greedy; top_k 0 / top_p 1 = off.

    Divides by the temperature, keeps the logits >= the k-th largest (ties included), then of those the smallest
    set of the most likely tokens whose mass before each one (in descending order) is < top_p, and draws one of
    the kept tokens as `jax.random.categorical(rng, kept_logits)` does, the same token for the same key. Neither
    cut sorts: each is a threshold found by bisection over the float32 values (`_cut`: 17-19 passes over a
    50257-token row in our tests, 32 at most), and the draw computes the categorical's noise without its rolled
    loop (`_categorical`).
    """
    if temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return _categorical(rng, filter_logits(logits / temperature, top_k, top_p))


def filter_logits(logits, top_k: int = 0, top_p: float = 1.0):
    """logits (B, V) float32 -> (B, V): -inf outside top-k's set, then outside top-p's set of what is left.

    Top-k keeps the logits >= the k-th largest of the row, ties included. Top-p keeps each token whose mass
    strictly above it (the probabilities of the larger logits, renormalized over top-k's set) is < top_p: the
    smallest descending prefix reaching top_p, with its ties. Both are cuts {logits >= t}, t found by `_cut`.
    """
    V = logits.shape[-1]
    if not ((top_k and top_k < V) or top_p < 1.0):
        return logits
    keys = _ordered(logits)  # (B, V) uint32, in the logits' order
    lo = jnp.min(keys, axis=-1, keepdims=True)  # (B, 1): every token kept so far
    if top_k and top_k < V:
        lo = _cut(keys, lo, lambda ge: _count(ge) >= top_k, enough=top_k)
        logits = jnp.where(keys >= lo, logits, -jnp.inf)
    if top_p < 1.0:
        probs = jax.nn.softmax(logits, axis=-1)  # over top-k's set, as with -inf outside it
        # the mass of {keys >= t} as a dot product: XLA:CPU runs it about twice as fast as a masked sum. In full
        # float32 (accelerators' default for a float32 dot may round the inputs to bfloat16 / tf32)
        mass = lambda ge: jnp.einsum("bv,bv->b", jnp.where(ge, 1.0, 0.0), probs,  # noqa: E731
                                     precision=jax.lax.Precision.HIGHEST)[:, None]
        lo = _cut(keys, lo, lambda ge: mass(ge) >= top_p)
        logits = jnp.where(keys >= lo, logits, -jnp.inf)
    return logits


def _ordered(x):
    """float32 (...) -> uint32 (...) in the same order: x < y iff key(x) < key(y); -0.0 and 0.0 share a key."""
    bits = jax.lax.bitcast_convert_type(jnp.where(x == 0, 0.0, x), jnp.uint32)
    return jnp.where(bits >> 31 == 1, ~bits, bits | jnp.uint32(0x80000000))


def _cut(keys, lo, reaches: Callable, enough: Optional[int] = None):
    """Per row, a threshold t (B, 1) keeping {keys >= t} == {keys >= t*}, t* the largest t with reaches(keys >= t).

    keys (B, V) uint32 (`_ordered`); lo (B, 1) uint32 reaches (or is the row's smallest key: then it is kept
    whole); `reaches` maps a mask (B, V) to (B, 1) bool and is monotone: True up to t*, False above. t* is a key
    of the row, since the count / mass of {keys >= t} only changes at one.

    Bisection over the uint32 keys with [lo, hi) holding t* (lo reaches, hi does not): at most 32 passes, each a
    count and a `reaches` over the row. A row stops once no other key lies inside [lo, hi) (one key in it, or
    hi == lo + 1), or once exactly `enough` keys are >= lo (top-k's usual end): then {keys >= lo} is the answer.
    """
    top = jnp.max(keys, axis=-1, keepdims=True)
    hi = jnp.where(top == jnp.uint32(0xFFFFFFFF), top, top + 1)  # (B, 1): nothing is >= hi

    def running(s):
        lo, hi, n_lo, n_hi = s
        go = (hi - lo > 1) & (n_lo - n_hi > 1)  # (B, 1)
        return go if enough is None else go & (n_lo > enough)

    def body(s):
        lo, hi, n_lo, n_hi = s
        go = running(s)
        mid = lo + (hi - lo) // 2  # (B, 1), strictly inside (lo, hi) where go
        ge = keys >= mid
        n_mid, up = _count(ge), reaches(ge)
        up_, down = go & up, go & ~up
        return (jnp.where(up_, mid, lo), jnp.where(down, mid, hi), jnp.where(up_, n_mid, n_lo),
                jnp.where(down, n_mid, n_hi))

    s = (lo, hi, _count(keys >= lo), jnp.zeros(lo.shape, jnp.float32))
    lo, hi, n_lo, n_hi = jax.lax.while_loop(lambda s: jnp.any(running(s)), body, s)
    return lo


def _count(mask):
    """mask (B, V) bool -> (B, 1) float32 count, exact below 2^24 (XLA:CPU sums float32 far faster than int32)."""
    return jnp.sum(jnp.where(mask, 1.0, 0.0), axis=-1, keepdims=True)


def _categorical(rng, logits):
    """logits (B, V) float32 -> ids (B,) int32: `jax.random.categorical(rng, logits, axis=-1)`, token for token.

    That function adds Gumbel noise from jax's threefry bits, which on CPU it computes in a rolled loop; this is
    the same arithmetic unrolled, with the bits computed over rows padded to a multiple of 128 so XLA vectorizes
    them. Anything but the default threefry with partitionable bits goes to jax.random.categorical itself; tests
    check that both agree. Measured on the 2-core CPU for V = 50257, per call: 2.2 against 4.0-4.4 ms at batch 1,
    2.8 against 12.6-13.2 ms at batch 8."""
    if getattr(jax.config, "jax_threefry_partitionable", None) is not True or not _is_threefry(rng):
        return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)
    B, V = logits.shape
    Vp = round_up(V, 128)
    k = rng if rng.dtype == jnp.uint32 else jax.random.key_data(rng)  # (2,) uint32
    flat = jnp.arange(Vp, dtype=jnp.uint32)[None, :] + jnp.uint32(V) * jnp.arange(B, dtype=jnp.uint32)[:, None]
    bits = _threefry2x32(k[0], k[1], flat)  # (B, Vp): jax.random.bits(rng, (B, V)) in the first V columns
    floats = jax.lax.bitcast_convert_type((bits >> 9) | jnp.uint32(0x3F800000), jnp.float32) - 1.0  # [0, 1)
    tiny = jnp.finfo(jnp.float32).tiny
    uniform = jnp.maximum(tiny, floats * (1.0 - tiny) + tiny)  # jax.random.uniform(minval=tiny, maxval=1)
    if B == 1:  # the rest on the padded row too: 2.2 against 2.8-3.1 ms (but 16.7 against 2.8 ms at batch 8)
        logits, V = jnp.pad(logits, ((0, 0), (0, Vp - V)), constant_values=-jnp.inf), Vp
    noisy = logits - jnp.log(-jnp.log(uniform[:, :V]))  # (B, V)
    # argmax as max, then the first index at it: two float reductions (XLA:CPU runs an int32 min as a slow tree
    # of reduce-windows; indices < 2^24 are exact in float32)
    best = jnp.max(noisy, axis=-1, keepdims=True)
    first = jnp.min(jnp.where(noisy == best, jnp.arange(V, dtype=jnp.float32), float(V)), axis=-1)
    return first.astype(jnp.int32)


def _is_threefry(rng) -> bool:
    if rng.dtype == jnp.uint32:  # a raw key (jax.random.PRNGKey): the default implementation's
        return rng.shape == (2,) and getattr(jax.config, "jax_default_prng_impl", None) == "threefry2x32"
    return rng.shape == () and "threefry" in str(jax.random.key_impl(rng))


def _threefry2x32(k1, k2, count):
    """jax's threefry2x32 hash of the counts (0, count) under the key (k1, k2), its two words xor-ed: the bits
    `jax.random.bits` gives the element at flat index `count`. count (...) uint32 -> (...) uint32."""
    rotl = lambda v, r: (v << jnp.uint32(r)) | (v >> jnp.uint32(32 - r))  # noqa: E731
    ks = [k1, k2, k1 ^ k2 ^ jnp.uint32(0x1BD11BDA)]
    x0, x1 = jnp.zeros_like(count) + ks[0], count + ks[1]
    for i in range(5):
        for r in ((13, 15, 26, 6), (17, 29, 16, 24))[i % 2]:
            x0 = x0 + x1
            x1 = x0 ^ rotl(x1, r)
        x0, x1 = x0 + ks[(i + 1) % 3], x1 + ks[(i + 2) % 3] + jnp.uint32(i + 1)
    return x0 ^ x1


class Sampler:
    """prepare_params(params) -> params runs once per device call, before the decoding loop (e.g. the model's
    layers sliced out of their stack, `gpt_jax.model.unstack_layers`), so nothing in the loop re-derives them."""

    def __init__(self, logits_fn: Callable, make_cache: Callable, block_size: int, eos_id: Optional[int] = None,
                 prepare_params: Callable = lambda params: params):
        self.logits_fn, self.make_cache, self.prepare_params = logits_fn, make_cache, prepare_params
        self.block_size, self.eos_id = block_size, eos_id
        self._jitted: dict = {}
        self.traces = 0  # how many times a step function was traced (compiled); tests check it stays flat

    # ------------------------------------------------------------------------------------ pure pieces

    def _prefill(self, params, prompt, n, key, *, total: int, cache_len: int, settings):
        """prompt (B, P) right-padded with n real tokens -> the decode state."""
        self.traces += 1
        B, P = prompt.shape
        params = self.prepare_params(params)
        cache = self.make_cache(B, cache_len)
        logits, cache = self.logits_fn(params, prompt, cache)  # (B, P, V); writes positions [0, P)
        cache["pos"] = n  # positions >= n hold padding; they are overwritten before anyone attends to them
        last = jax.lax.dynamic_index_in_dim(logits, n - 1, axis=1, keepdims=False)  # (B, V)
        tokens = jnp.zeros((B, total + cache_len), jnp.int32)  # + cache_len: room for the refill window
        tokens = jax.lax.dynamic_update_slice(tokens, prompt[:, : min(P, total)], (0, 0))
        return {"cache": cache, "tokens": tokens, "n": n, "logits": last, "rng": key,
                "done": jnp.zeros((B,), bool)}

    def _decode(self, params, state, until, *, cache_len: int, settings):
        """Generates tokens into state["tokens"] until n == until or every row has emitted eos."""
        self.traces += 1
        params = self.prepare_params(params)
        temperature, top_k, top_p = settings
        keep = cache_len // 2

        def running(s):
            return (s["n"] < until) & ~jnp.all(s["done"])

        def emit(s):  # samples the next token from s["logits"] and writes it at position n
            rng, key = jax.random.split(s["rng"])
            tok = sample_logits(s["logits"], key, temperature, top_k, top_p)  # (B,)
            if self.eos_id is not None:
                tok = jnp.where(s["done"], self.eos_id, tok)
                done = s["done"] | (tok == self.eos_id)
            else:
                done = s["done"]
            tokens = jax.lax.dynamic_update_slice(s["tokens"], tok[:, None], (0, s["n"]))
            return dict(s, tokens=tokens, rng=rng, done=done, n=s["n"] + 1), tok

        def step(s):  # one token through the model, attending over the cache
            s, tok = emit(s)
            logits, cache = self.logits_fn(params, tok[:, None], s["cache"])  # (B, 1, V)
            return dict(s, logits=logits[:, 0], cache=cache)

        def refill(s):  # cache full: one token, then the cache rebuilt from the last `keep` tokens (incl. it)
            s, tok = emit(s)
            window = jax.lax.dynamic_slice_in_dim(s["tokens"], s["n"] - keep, cache_len, axis=1)
            logits, cache = self.logits_fn(params, window, self.make_cache(tok.shape[0], cache_len))
            cache["pos"] = jnp.asarray(keep, jnp.int32)
            return dict(s, logits=logits[:, keep - 1], cache=cache)

        def segment(s):
            # Steps until the cache is full (or done), then one refill if still running. The refill's `cond`
            # stays out of the per-token loop: inside it, XLA copied every cache array every token.
            s = jax.lax.while_loop(lambda s: running(s) & (s["cache"]["pos"] < cache_len), step, s)
            return jax.lax.cond(running(s), refill, lambda s: s, s)

        return jax.lax.while_loop(running, segment, state)

    # ------------------------------------------------------------------------------------ driver

    def _fns(self, B, P, total, cache_len, settings):
        key = (B, P, total, cache_len, settings)
        if key not in self._jitted:
            self._jitted[key] = (
                jax.jit(partial(self._prefill, total=total, cache_len=cache_len, settings=settings)),
                jax.jit(partial(self._decode, cache_len=cache_len, settings=settings), donate_argnums=1),
            )
        return self._jitted[key]

    def stream(self, params, prompt_ids, rng, *, max_new_tokens: int, num_samples: int = 1,
               temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
               chunk: Optional[int] = None) -> Iterator[np.ndarray]:
        """Yields the new tokens (num_samples, k) chunk by chunk (`chunk` tokens per device call; None: all at
        once). Rows that emitted eos are padded with eos afterwards. Bad requests raise here, not on iteration."""
        P = len(prompt_ids)
        if P == 0:
            raise SamplingError("empty prompt: pass some text with --prompt=TEXT or --prompt_file=FILE")
        if P >= self.block_size:
            raise SamplingError(f"prompt is {P} tokens, the model's context is {self.block_size}: shorten the "
                                f"prompt to at most {self.block_size - 1} tokens")
        if max_new_tokens < 1 or num_samples < 1:
            raise SamplingError(f"need max_new_tokens >= 1 and num_samples >= 1, got {max_new_tokens} and "
                                f"{num_samples}")
        if temperature < 0 or not 0.0 < top_p <= 1.0 or top_k < 0:
            raise SamplingError("need temperature >= 0, 0 < top_p <= 1 and top_k >= 0")
        P_b = min(round_up(P, BUCKET), self.block_size)
        total = round_up(P + max_new_tokens, BUCKET)
        cache_len = min(self.block_size, total)
        settings = (float(temperature), int(top_k), float(top_p))
        prefill, decode = self._fns(num_samples, P_b, total, cache_len, settings)
        prompt = np.zeros((num_samples, P_b), np.int32)
        prompt[:, :P] = prompt_ids
        return self._chunks(decode, prefill(params, jnp.asarray(prompt), jnp.asarray(P, jnp.int32), rng),
                            params, P, P + max_new_tokens, chunk)

    @staticmethod
    def _chunks(decode, state, params, n, end, chunk):
        while n < end:
            until = end if chunk is None else min(end, n + chunk)
            state = decode(params, state, jnp.asarray(until, jnp.int32))
            new_n = int(state["n"])
            yield np.asarray(state["tokens"][:, n:new_n])
            if new_n < until:  # every row hit eos
                return
            n = new_n

    def generate(self, params, prompt_ids, rng, **kw) -> np.ndarray:
        """All new tokens at once: (num_samples, <= max_new_tokens) int32."""
        parts = list(self.stream(params, prompt_ids, rng, **kw))
        return np.concatenate(parts, axis=1) if parts else np.zeros((kw.get("num_samples", 1), 0), np.int32)


def model_sampler(model, eos_id: Optional[int] = None) -> Sampler:
    """A Sampler over a `gpt_jax.model.GPT`."""
    cfg = model.cfg

    def logits_fn(params, ids, cache):
        return model.apply({"params": params}, ids, cache=cache)

    prepare = unstack_layers if cfg.layer_loop != "scan" else (lambda params: params)
    return Sampler(logits_fn, lambda b, n: init_cache(cfg, b, n), cfg.block_size, eos_id, prepare)
