"""The tokenizer that comes with a model folder: GPT-2's own (tiktoken), or the folder's Hugging Face files."""

from __future__ import annotations

import json
import os
from typing import Optional

from gpt_jax import tokenizer as tok_lib
from gpt_jax.config import ModelConfig
from gpt_jax.pretrained.errors import PretrainedError

TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json",
                   "special_tokens_map.json")


def load_tokenizer(folder: str, hf: dict, cfg: ModelConfig):
    """The tokenizer for the model in `folder`: GPT-2's own (tiktoken) for GPT-2 models with its vocabulary, the
    folder's tokenizer files otherwise; None when there is none."""
    has_files = os.path.isfile(os.path.join(folder, "tokenizer.json")) or all(
        os.path.isfile(os.path.join(folder, f)) for f in ("vocab.json", "merges.txt"))
    gpt2_like = hf.get("model_type") == "gpt2" and cfg.vocab_size == tok_lib.GPT2Tokenizer.vocab_size
    if gpt2_like and (not has_files or _has_gpt2_vocab(folder)):
        return tok_lib.GPT2Tokenizer()
    if not has_files:
        return None
    tok = tok_lib.HFTokenizer(folder)
    if tok.vocab_size > cfg.vocab_size:
        raise PretrainedError(f"the tokenizer in {folder} has {tok.vocab_size} tokens, more than the model's "
                              f"vocab_size={cfg.vocab_size}: they do not belong together")
    eot = _eos_token(folder)
    if eot is None and isinstance(hf.get("eos_token_id"), int):
        eot = tok.tok.id_to_token(hf["eos_token_id"])
    if eot is not None and tok.tok.token_to_id(eot) is not None:
        tok = tok_lib.HFTokenizer(folder, eot)
    return tok


def _has_gpt2_vocab(folder: str) -> bool:
    """Whether the folder's tokenizer files hold exactly GPT-2's vocabulary."""
    try:
        if os.path.isfile(os.path.join(folder, "tokenizer.json")):
            with open(os.path.join(folder, "tokenizer.json"), encoding="utf-8") as f:
                vocab = json.load(f).get("model", {}).get("vocab")
        else:
            with open(os.path.join(folder, "vocab.json"), encoding="utf-8") as f:
                vocab = json.load(f)
        with open(tok_lib.gpt2_files()[1], encoding="utf-8") as f:
            return vocab == json.load(f)
    except (OSError, ValueError, AttributeError):
        return False


def _eos_token(folder: str) -> Optional[str]:
    """tokenizer_config.json's eos_token, if any."""
    try:
        with open(os.path.join(folder, "tokenizer_config.json"), encoding="utf-8") as f:
            eos = json.load(f).get("eos_token")
    except (OSError, ValueError, AttributeError):
        return None
    if isinstance(eos, dict):
        eos = eos.get("content")
    return str(eos) if eos else None
