"""sample.py's job: load a run (or pretrained weights), encode the prompt, stream the completion."""

from __future__ import annotations

import sys

import jax

from gpt_jax import sources
from gpt_jax.config import COUNT, NON_NEGATIVE, POSITIVE_INT, Range, default_config
from gpt_jax.model import GPT
from gpt_jax.sampling import SamplingError, model_sampler


FLAG_RANGES = {"max_new_tokens": POSITIVE_INT, "temperature": NON_NEGATIVE, "top_k": COUNT,
               "top_p": Range(0, 1, low_open=True), "num_samples": POSITIVE_INT, "seed": COUNT}


def run_sampling(*, workdir=None, init_from=None, prompt=None, prompt_file=None, max_new_tokens=None,
                 temperature=None, top_k=None, top_p=None, num_samples=1, seed=0, out=None) -> list[str]:
    """sample.py's job: load a run (or pretrained weights), encode the prompt, stream the completion to `out`.

    Returns the generated texts (without the prompt)."""
    out = sys.stdout if out is None else out
    if bool(workdir) == bool(init_from):
        raise SamplingError("pass exactly one of --workdir=RUN_FOLDER or --init_from=MODEL")
    flags = {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_k": top_k, "top_p": top_p,
             "num_samples": num_samples, "seed": seed}
    for name, value in flags.items():  # NaN and out-of-range values, before any model is loaded
        valid = FLAG_RANGES[name]
        if value is not None and not valid.contains(value):
            raise SamplingError(f"--{name} must be {valid.describe()}, got {value!r}")
    defaults = default_config().sample.to_dict()
    source = sources.load(workdir or init_from, what="--workdir" if workdir else "--init_from", run_only=bool(workdir))
    cfg, params, tokenizer = source.config, source.params, source.tokenizer
    if source.meta is not None:  # a run's own sampling defaults
        defaults.update(source.meta.get("config", {}).get("sample", {}))
    if prompt_file:
        try:
            with open(prompt_file, encoding="utf-8") as f:
                prompt = f.read()
        except OSError as e:
            raise SamplingError(f"cannot read --prompt_file {prompt_file}: {e.strerror}") from None
    prompt = defaults["prompt"] if prompt is None else prompt
    pick = lambda v, k: defaults[k] if v is None else v
    ids = tokenizer.encode(prompt)
    sampler = model_sampler(GPT(cfg.for_platform(jax.devices()[0].platform)), tokenizer.eot_id)
    stream = sampler.stream(params, ids, jax.random.PRNGKey(seed), max_new_tokens=pick(max_new_tokens,
                            "max_new_tokens"), num_samples=num_samples, temperature=pick(temperature, "temperature"),
                            top_k=pick(top_k, "top_k"), top_p=pick(top_p, "top_p"),
                            chunk=8 if num_samples == 1 else None)
    eos = tokenizer.eot_id
    rows = [[] for _ in range(num_samples)]
    live = num_samples == 1  # one sample streams as it is generated; several print when done
    # Streaming decodes prompt + tokens so far and prints what is new: a word's leading space may belong to
    # the previous token (openai-gpt's BPE), and a multi-byte character may span tokens (held back until whole).
    base, shown = tokenizer.decode(ids), 0
    if live:
        out.write(prompt)
        out.flush()
    for chunk in stream:
        for r, row in enumerate(chunk):
            rows[r].extend(t for t in row.tolist() if t != eos)
        if live:
            text = tokenizer.decode(ids + rows[0])[len(base):]
            stable = len(text.rstrip("\ufffd"))
            out.write(text[shown:stable])
            out.flush()
            shown = stable
    texts = [tokenizer.decode(ids + row)[len(base):] for row in rows]
    for r, text in enumerate(texts):
        if live:
            out.write(text[shown:] + "\n")
        else:
            out.write(f"---------- sample {r + 1}\n{prompt}{text}\n")
    out.flush()
    return texts
