import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gpt_jax.config import ModelConfig
from gpt_jax.model import GPT, init_params
from gpt_jax.sampling import Sampler, SamplingError, model_sampler, sample_logits

V = 20


def stub_sampler(block_size=64, eos_id=None):
    """A stub model whose most likely next token is (last token + 1) % V; the cache only counts positions."""

    def logits_fn(params, ids, cache):
        logits = 10.0 * jax.nn.one_hot((ids + 1) % V, V)  # (B, T, V)
        return logits, dict(cache, pos=cache["pos"] + ids.shape[1])

    return Sampler(logits_fn, lambda b, n: {"pos": jnp.zeros((), jnp.int32)}, block_size, eos_id)


def test_greedy_with_stub():
    out = stub_sampler().generate(None, [3, 4], jax.random.PRNGKey(0), max_new_tokens=25, temperature=0.0)
    np.testing.assert_array_equal(out[0], (np.arange(25) + 5) % V)


def test_stops_at_eos_per_row():
    s = stub_sampler(eos_id=9)
    out = s.generate(None, [5], jax.random.PRNGKey(0), max_new_tokens=30, temperature=0.0, num_samples=2)
    np.testing.assert_array_equal(out[0], [6, 7, 8, 9])  # loop ends once every row has emitted eos


def test_one_compile_for_many_tokens_and_prompts():
    s = stub_sampler()
    key = jax.random.PRNGKey(0)
    s.generate(None, [1, 2, 3], key, max_new_tokens=10, temperature=0.7, top_k=5)
    traces = s.traces
    assert traces == 2  # prefill + decode loop, once each
    s.generate(None, [4, 5, 6, 7, 8], key, max_new_tokens=20, temperature=0.7, top_k=5)  # same buckets
    chunks = list(s.stream(None, [1], key, max_new_tokens=40, temperature=0.7, top_k=5, chunk=8))  # 5 calls
    assert s.traces == traces
    assert [c.shape[1] for c in chunks] == [8, 8, 8, 8, 8]


def test_streamed_chunks_equal_one_call():
    s = stub_sampler()
    key = jax.random.PRNGKey(3)
    whole = s.generate(None, [1, 2], key, max_new_tokens=30, temperature=1.0)
    parts = np.concatenate(list(s.stream(None, [1, 2], key, max_new_tokens=30, temperature=1.0, chunk=7)), 1)
    np.testing.assert_array_equal(whole, parts)


def test_top_k_and_top_p_filtering():
    logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]] * 2000))
    keys = jax.random.PRNGKey(0)
    draw = lambda **kw: set(np.asarray(sample_logits(logits, keys, 1.0, **kw)).tolist())
    assert draw() == {0, 1, 2, 3}
    assert draw(top_k=2) == {0, 1}
    assert draw(top_k=1) == {0}
    assert draw(top_p=0.5) == {0}  # 0.5 alone reaches p
    assert draw(top_p=0.6) == {0, 1}
    assert draw(top_p=0.9) == {0, 1, 2}
    assert set(np.asarray(sample_logits(logits, keys, 0.0)).tolist()) == {0}  # temperature 0 = greedy


def test_same_seed_same_text_and_batch_rows_differ():
    s = stub_sampler()
    a = s.generate(None, [1], jax.random.PRNGKey(5), max_new_tokens=20, temperature=2.0, num_samples=3)
    b = s.generate(None, [1], jax.random.PRNGKey(5), max_new_tokens=20, temperature=2.0, num_samples=3)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a[0], a[1])


@pytest.mark.parametrize("prompt,kw,match", [
    ([], {}, "empty prompt"),
    (list(range(64)), {}, "shorten the prompt"),
    ([1], {"max_new_tokens": 0}, "max_new_tokens"),
    ([1], {"top_p": 0.0}, "top_p"),
])
def test_bad_requests(prompt, kw, match):
    kw = {"max_new_tokens": 5, **kw}
    with pytest.raises(SamplingError, match=match):
        stub_sampler().generate(None, prompt, jax.random.PRNGKey(0), **kw)


def naive_greedy(model, params, prompt, n_new, cache_len):
    """Reference without a cache: a full forward pass per token, over the same window the sampler keeps
    (the whole sequence until the context is full, then the last half-context)."""
    tokens, w0, keep = list(prompt), 0, cache_len // 2
    fwd = jax.jit(lambda p, x: model.apply({"params": p}, x))
    for _ in range(n_new):
        logits = fwd(params, jnp.asarray([tokens[w0:]]))
        tokens.append(int(jnp.argmax(logits[0, -1])))
        if len(tokens) - 1 - w0 == cache_len:  # the cache could not take the new token: rebuild
            w0 = len(tokens) - keep
    return tokens[len(prompt):]


@pytest.mark.parametrize("norm,n_new", [("pre", 30), ("post", 30), ("pre", 70)])  # 70: past the context
def test_model_greedy_equals_uncached_reference(norm, n_new):
    cfg = ModelConfig(n_layer=2, n_head=2, d_model=32, d_ff=64, block_size=32, vocab_size=V, dropout=0.0,
                      norm_position=norm)
    params = init_params(cfg, jax.random.PRNGKey(1))
    model = GPT(cfg)
    prompt = [1, 5, 7, 2]
    out = model_sampler(model).generate(params, prompt, jax.random.PRNGKey(0), max_new_tokens=n_new,
                                         temperature=0.0)
    assert out.shape == (1, n_new)
    assert out[0].tolist() == naive_greedy(model, params, prompt, n_new, cache_len=min(32, 64))
