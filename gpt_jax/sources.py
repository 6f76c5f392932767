"""Where a model comes from: one meaning of `init_from` (and of sample.py's --workdir) everywhere.

A source is one of
- a run folder: a train.py workdir (its newest checkpoint; the tokenizer it was trained with),
- a known name (gpt2, gpt2-medium, gpt2-large, gpt2-xl, openai-gpt), fetched once from the Hugging Face hub,
- a local folder in the Hugging Face layout (config.json + weights).
`load(source)` turns it into (ModelConfig, params, tokenizer, run meta or None). A fine-tuning run is refused
unless the caller asks for one: its parameters include a task head and extra token rows.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Optional

import jax

from gpt_jax import checkpoint as ckpt_lib
from gpt_jax import tokenizer as tok_lib
from gpt_jax.config import ModelConfig
from gpt_jax.model import init_params

KNOWN = "a train.py run folder, gpt2, gpt2-medium, gpt2-large, gpt2-xl, openai-gpt or a Hugging Face model folder"


class SourceError(ValueError):
    """A model source that cannot be used for what was asked."""


@dataclasses.dataclass
class Source:
    config: ModelConfig
    params: Any  # GPT params (float32), on the requested device(s)
    tokenizer: tok_lib.Tokenizer
    meta: Optional[dict]  # the run's saved meta (model, tokenizer, config, ...) for a run folder; else None


def is_finetuning_run(meta: Optional[dict]) -> bool:
    return meta is not None and "finetune" in meta


def load(source: str, *, what: str = "init_from", run_only: bool = False, sharding=None) -> Source:
    """The pre-trained GPT behind `source` (see the module docstring; `run_only`: a run folder and nothing else).
    `what` names the flag in errors; params go to `sharding` (default: the first local device), whatever devices
    wrote them."""
    if not source:
        raise SourceError(f"no model given: set {what} to {KNOWN}")
    if run_only and not os.path.isdir(ckpt_lib.checkpoint_dir(source)):
        raise SourceError(f"no checkpoints in {source}: train first (python train.py --config=... "
                          f"--workdir={source}), or pass the folder of a finished run")
    meta = ckpt_lib.newest_meta(source)
    if meta is None and os.path.isdir(ckpt_lib.checkpoint_dir(source)):
        raise SourceError(f"no complete checkpoint in {ckpt_lib.checkpoint_dir(source)} (the run stopped before "
                          "its first save): train it further, or pass another run folder")
    if meta is None:
        return _from_pretrained(source, what)
    if is_finetuning_run(meta):
        raise SourceError(f"{source} is a fine-tuning run (finetune.py); {what} takes a pre-training run or released "
                          f"weights. To use the fine-tuned model: python finetune.py --workdir={source} "
                          "--predict_file=FILE")
    cfg = ModelConfig.from_dict(meta["model"])
    sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    shapes = jax.eval_shape(lambda: init_params(cfg, jax.random.PRNGKey(0)))
    params = ckpt_lib.restore_params(source, shapes, sharding)
    return Source(cfg, params, tok_lib.from_meta(meta["tokenizer"]), meta)


def _from_pretrained(source: str, what: str) -> Source:
    # imported here: the weight readers and huggingface_hub stay off the start-up path of runs that need neither
    from gpt_jax import pretrained

    if os.path.isdir(source) and not os.path.isfile(os.path.join(source, pretrained.CONFIG_FILE)):
        raise SourceError(f"{what}={source} is neither a run folder (no checkpoints/ in it) nor a Hugging Face model "
                          f"folder (no config.json); pass {KNOWN}")
    model, params, tokenizer = pretrained.load(source, with_tokenizer=True)
    if tokenizer is None:
        raise SourceError(f"{source} has no tokenizer files this project can read; put its tokenizer.json in the "
                          "folder")
    return Source(model.cfg, params, tokenizer, None)
