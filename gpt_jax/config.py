"""The model's own configuration: a small frozen dataclass, built from a run's ConfigDict."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from gpt_jax.utils import round_up

NORM_POSITIONS = ("pre", "post")
ACTIVATIONS = ("gelu_tanh", "gelu")
DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    n_layer: int = 12  # transformer blocks
    n_head: int = 12  # attention heads per block
    d_model: int = 768  # residual stream width
    d_ff: int = 3072  # MLP hidden width
    block_size: int = 512  # context length (learned position embeddings)
    vocab_size: int = 50257  # real token ids: [0, vocab_size)
    dropout: float = 0.1  # embedding, attention-probability and residual dropout
    norm_position: str = "post"  # "post": GPT-1 (LN after each residual add), "pre": GPT-2 (+ final LN)
    tie_embeddings: bool = True  # logits = h @ wte.T
    ln_eps: float = 1e-5  # LayerNorm epsilon (GPT-1 and GPT-2 both use 1e-5)
    activation: str = "gelu_tanh"  # "gelu_tanh" (GPT-1/2; HF gelu_new and openai-gpt) or "gelu" (exact erf)
    extra_tokens: int = 0  # learned ids after the vocab (fine-tuning's start/delim/extract); never predicted
    dtype: str = "float32"  # compute dtype; parameters stay float32

    def __post_init__(self):
        if self.norm_position not in NORM_POSITIONS:
            raise ValueError(f"model.norm_position must be one of {NORM_POSITIONS}, got {self.norm_position!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"model.activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"model.dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.d_model % self.n_head:
            raise ValueError(f"model.d_model={self.d_model} is not divisible by model.n_head={self.n_head}")
        for name in ("n_layer", "n_head", "d_model", "d_ff", "block_size", "vocab_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"model.{name} must be positive, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.dropout must be in [0, 1), got {self.dropout}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def padded_vocab(self) -> int:
        """Embedding rows: vocab + extra tokens, rounded up to a multiple of 128 (faster matmuls)."""
        n = self.vocab_size + self.extra_tokens
        return round_up(n, 128)

    def replace(self, **kw) -> "ModelConfig":
        return dataclasses.replace(self, **kw)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ModelConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown model config keys {sorted(unknown)}; known: {sorted(names)}")
        return cls(**dict(d))


def model_config(cfg) -> ModelConfig:
    """The model group of a run's ConfigDict (``cfg.model`` or the group itself) as a ModelConfig."""
    group = cfg.model if "model" in cfg else cfg
    return ModelConfig.from_dict(group.to_dict() if hasattr(group, "to_dict") else dict(group))


def default_optim():
    """AdamW + schedule fields shared by pre-training (`default_config`) and fine-tuning configs."""
    from ml_collections import ConfigDict

    o = ConfigDict()
    o.learning_rate = 2.5e-4  # peak learning rate
    o.min_learning_rate = 0.0  # cosine ends here
    o.schedule = "cosine"  # "cosine" | "linear" | "constant", each after a linear warmup from 0
    o.warmup_steps = 2000  # linear warmup steps
    o.beta1 = 0.9  # Adam beta1
    o.beta2 = 0.999  # Adam beta2
    o.eps = 1e-8  # Adam epsilon
    o.weight_decay = 0.01  # decoupled weight decay on matrices only (not biases, not LayerNorm)
    o.grad_clip = 1.0  # global-norm clipping (0 = off)
    return o


def default_config():
    """Every field a training run reads, with its default; `configs/*.py` start from this and override.

    Groups: model (-> ModelConfig), data, optim, train, sample. Unknown keys on the command line fail loudly.
    """
    from ml_collections import ConfigDict

    c = ConfigDict()
    c.seed = 0  # one seed: parameter init, dropout keys (fold_in(key, step)) and the batch stream

    c.model = ConfigDict(ModelConfig().to_dict())  # fields documented on ModelConfig
    c.model.vocab_size = 0  # 0: taken from the tokenizer (char: the corpus' characters; gpt2: 50257)

    c.data = ConfigDict()
    c.data.dataset = "shakespeare"  # "shakespeare" (embedded), a text / JSONL(.gz) / parquet file or a folder of
    #                                  them, or hf:NAME[:CONFIG] (gpt_jax/corpus.py)
    c.data.tokenizer = "gpt2"  # "char" or "gpt2" (tiktoken's GPT-2 BPE, built offline)
    c.data.val_fraction = 0.1  # share of the documents for validation (few documents: of the tokens; see prepare.py)
    c.data.max_documents = 0  # documents to read (0 = all)
    c.data.text_field = "text"  # JSONL key, parquet column or hf: field that holds each document's text
    c.data.shard_tokens = 20_000_000  # tokens per train + val shard pair (~40 MB); a kill loses at most this much work
    c.data.workers = 0  # tokenizer processes (0 = one per CPU core, started after the first 16 MB of text)

    c.optim = default_optim()

    c.train = ConfigDict()
    c.train.batch_size = 64  # sequences per optimizer step (all devices, all microbatches)
    c.train.grad_accum_steps = 1  # microbatches per step (batch_size must divide evenly)
    c.train.max_steps = 100_000  # optimizer steps
    c.train.log_every = 50  # steps between train-loss logs (each one waits for the device)
    c.train.eval_every = 1000  # steps between validation evaluations (and at the end)
    c.train.eval_batch_size = 64  # sequences per eval batch
    c.train.eval_max_windows = 1024  # val windows evaluated (evenly spaced; 0 = the whole split)
    c.train.checkpoint_every = 1000  # steps between checkpoints (and at the end)
    c.train.max_to_keep = 3  # checkpoints kept (0 = all)
    c.train.init_from = ""  # "" (random init), gpt2 / gpt2-medium / ... / openai-gpt, or a local HF folder
    c.train.peak_flops = 0.0  # device peak FLOP/s for MFU (0 = data sheet for TPU/GPU, measured on CPU)
    c.train.progress_bar = True  # tqdm bar with loss, tokens/s and MFU
    c.train.tensorboard = True  # also write TensorBoard event files (tensorboardX)

    c.sample = ConfigDict()
    c.sample.prompt = "\n"  # default prompt of sample.py
    c.sample.max_new_tokens = 200  # tokens to generate
    c.sample.temperature = 0.8  # 0 = greedy
    c.sample.top_k = 200  # 0 = off
    c.sample.top_p = 1.0  # nucleus sampling (1 = off)
    return c
