"""A Hugging Face `config.json` of a GPT-2 or GPT-1 (openai-gpt) model -> our ModelConfig."""

from __future__ import annotations

import json
import os

from gpt_jax.config import ModelConfig
from gpt_jax.pretrained.errors import PretrainedError

CONFIG_FILE = "config.json"

# Hugging Face activation names -> ModelConfig.activation. GPT-2 reads `activation_function` through
# transformers' ACT2FN ("gelu" there is the exact erf GELU); openai-gpt reads `afn` through its own table, in which
# "gelu" is `gelu_new`, the tanh approximation (as in OpenAI's GPT-1 code).
GPT2_ACTIVATIONS = {"gelu": "gelu", "gelu_python": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
                    "gelu_python_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh", "gelu_accurate": "gelu_tanh"}
OPENAI_GPT_ACTIVATIONS = {"gelu": "gelu_tanh"}


def read_hf_config(folder: str) -> dict:
    """The config.json of `folder`, as a dict."""
    path = os.path.join(folder, CONFIG_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            hf = json.load(f)
    except FileNotFoundError:
        raise PretrainedError(f"{folder} has no config.json; a Hugging Face model folder holds config.json and "
                              "model.safetensors") from None
    except (OSError, ValueError) as e:
        raise PretrainedError(f"cannot read {path}: {e}") from None
    if not isinstance(hf, dict):
        raise PretrainedError(f"{path} is not a JSON object")
    return hf


def model_config(hf: dict) -> ModelConfig:
    """A Hugging Face `config.json` (as a dict) of a GPT-2 or openai-gpt model -> our ModelConfig."""
    kind = hf.get("model_type")
    if kind not in ("gpt2", "openai-gpt"):
        raise PretrainedError(f"config.json has model_type {kind!r}; only GPT-2 ('gpt2') and GPT-1 ('openai-gpt') "
                              "models can be imported")

    def get(*keys, default=None):
        for k in keys:
            if hf.get(k) is not None:
                return hf[k]
        if default is None:
            raise PretrainedError(f"config.json lacks {keys[0]!r}")
        return default

    d_model = int(get("n_embd"))
    if kind == "gpt2":
        for key, ok in (("add_cross_attention", False), ("scale_attn_by_inverse_layer_idx", False),
                        ("scale_attn_weights", True)):
            if bool(hf.get(key, ok)) != ok:
                raise PretrainedError(f"config.json sets {key}={hf[key]}, which this GPT does not implement")
        act_name, table, field = get("activation_function", default="gelu_new"), GPT2_ACTIVATIONS, "activation_function"
    else:
        act_name, table, field = get("afn", default="gelu"), OPENAI_GPT_ACTIVATIONS, "afn"
    if act_name not in table:
        raise PretrainedError(f"config.json's {field}={act_name!r} is an activation this GPT does not have "
                              f"(supported for {kind}: {', '.join(sorted(table))})")
    try:
        return ModelConfig(
            n_layer=int(get("n_layer")),
            n_head=int(get("n_head")),
            d_model=d_model,
            d_ff=int(get("n_inner", default=4 * d_model)),
            block_size=int(get("n_positions", "n_ctx")),
            vocab_size=int(get("vocab_size")),
            dropout=float(get("resid_pdrop", default=0.1)),
            norm_position="pre" if kind == "gpt2" else "post",
            tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
            ln_eps=float(get("layer_norm_epsilon", default=1e-5)),
            activation=table[act_name],
        )
    except (TypeError, ValueError) as e:
        raise PretrainedError(f"config.json does not describe a usable model: {e}") from None
