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

from gpt_jax.model import init_cache
from gpt_jax.utils import round_up

BUCKET = 64  # prompt and buffer lengths are rounded up to this, so similar lengths share one compile


class SamplingError(ValueError):
    """A prompt or setting the sampler cannot use."""


def sample_logits(logits, rng, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0):
    """logits (B, V) float32 -> token ids (B,) int32. temperature 0 = greedy; top_k 0 / top_p 1 = off."""
    if temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / temperature
    if top_k and top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, top_k)[0][:, -1:]  # (B, 1): the k-th largest logit
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p < 1.0:
        desc = jnp.sort(logits, axis=-1)[:, ::-1]  # (B, V)
        probs = jax.nn.softmax(desc, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # probability mass strictly above each token
        keep = before < top_p  # the smallest set reaching top_p (never empty: the first has 0 before it)
        threshold = jnp.min(jnp.where(keep, desc, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < threshold, -jnp.inf, logits)
    return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


class Sampler:
    def __init__(self, logits_fn: Callable, make_cache: Callable, block_size: int, eos_id: Optional[int] = None):
        self.logits_fn, self.make_cache = logits_fn, make_cache
        self.block_size, self.eos_id = block_size, eos_id
        self._jitted: dict = {}
        self.traces = 0  # how many times a step function was traced (compiled); tests check it stays flat

    # ------------------------------------------------------------------------------------ pure pieces

    def _prefill(self, params, prompt, n, key, *, total: int, cache_len: int, settings):
        """prompt (B, P) right-padded with n real tokens -> the decode state."""
        self.traces += 1
        B, P = prompt.shape
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

    return Sampler(logits_fn, lambda b, n: init_cache(cfg, b, n), cfg.block_size, eos_id)
