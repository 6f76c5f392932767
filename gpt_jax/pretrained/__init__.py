"""Released weights: the GPT-2 family and GPT-1 (openai-gpt), from the Hugging Face hub or a local HF folder.

    model, params = load("gpt2")                                   # hub (cached by huggingface_hub)
    model, params, tokenizer = load("/path/to/hf_dir", with_tokenizer=True)

A folder in the Hugging Face layout holds `config.json` plus `model.safetensors` (or `pytorch_model.bin`). Reading
weights needs no torch. The modules, in the order `load` uses them:
    hub.py              a name or a path -> a local folder (`resolve`; `download` through huggingface_hub)
    hf_config.py        config.json -> ModelConfig (`read_hf_config`, `model_config`)
    weight_files.py     the folder's weight files -> lazily read numpy tensors (`find_weight_files`,
                        `read_tensors`; `read_safetensors`, `read_torch_pickle`)
    convert.py          HF tensor names and layouts -> our parameter tree (`convert`)
    tokenizer_files.py  the tokenizer the folder comes with (`load_tokenizer`)
"""

from __future__ import annotations

import os

import jax.numpy as jnp

from gpt_jax.model import GPT
from gpt_jax.pretrained.convert import convert
from gpt_jax.pretrained.errors import PretrainedError
from gpt_jax.pretrained.hf_config import CONFIG_FILE, model_config, read_hf_config
from gpt_jax.pretrained.hub import HUB_MODELS, download, resolve
from gpt_jax.pretrained.tokenizer_files import load_tokenizer
from gpt_jax.pretrained.weight_files import find_weight_files, read_safetensors, read_tensors, read_torch_pickle

__all__ = ["CONFIG_FILE", "HUB_MODELS", "PretrainedError", "convert", "download", "find_weight_files", "load",
           "load_tokenizer", "model_config", "read_hf_config", "read_safetensors", "read_tensors", "read_torch_pickle",
           "resolve"]


def load(name_or_path: str, with_tokenizer: bool = False):
    """`(model, params)`, or `(model, params, tokenizer)` with `with_tokenizer=True`, for a known name (gpt2,
    gpt2-medium, gpt2-large, gpt2-xl, openai-gpt; downloaded once into huggingface_hub's cache) or a local Hugging
    Face folder. `model` is a `gpt_jax.model.GPT` (`model.cfg` its ModelConfig); params are float32 and
    `model.apply({"params": params}, ids)` gives logits (B, T, vocab_size). The tokenizer is a
    `gpt_jax.tokenizer.Tokenizer`, or None when the folder has no tokenizer this project can read."""
    folder = resolve(name_or_path)
    hf = read_hf_config(folder)
    cfg = model_config(hf)
    files = find_weight_files(folder)
    where = ", ".join(os.path.basename(f) for f in files)
    params = convert(read_tensors(files), cfg, hf["model_type"], where=f"the weights in {folder} ({where})",
                     put=jnp.asarray)
    model = GPT(cfg)
    if not with_tokenizer:
        return model, params
    return model, params, load_tokenizer(folder, hf, cfg)
