"""The model's own configuration: a small frozen dataclass, built from a run's ConfigDict."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

from ml_collections import ConfigDict

from gpt_jax.utils import round_up

NORM_POSITIONS = ("pre", "post")
ACTIVATIONS = ("gelu_tanh", "gelu")
DTYPES = ("auto", "float32", "bfloat16")  # auto: bfloat16 on TPU and GPU, float32 on CPU (`for_platform`)
REMATS = ("auto", "none", "block", "dots")  # see gpt_jax.model.REMAT_POLICIES; auto: dots on TPU/GPU, none on CPU
ATTENTIONS = ("auto", "xla", "flash")  # see gpt_jax.attention
LAYER_LOOPS = ("auto", "scan", "unroll")  # auto: scan on TPU/GPU, unroll on CPU (and when left unresolved)


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
    dtype: str = "float32"  # compute dtype ("auto" | "float32" | "bfloat16"); parameters and optimizer state,
    #                          LayerNorm statistics, softmax and the loss stay float32
    remat: str = "none"  # recompute in the backward pass: "none", "block" (all of each block) or "dots" (all but
    #                       the dense layers' outputs: +2% FLOPs at GPT-1's shape, and no (B, H, T, T) attention
    #                       tensors kept per layer); "auto": dots on TPU/GPU, none on CPU
    attention: str = "xla"  # "auto" (flash where it applies), "xla" (plain; attention dropout), "flash" (kernel)
    layer_loop: str = "auto"  # the blocks as one loop ("scan": one block compiled, fast compiles) or "unroll"ed
    #                           (XLA:CPU runs a loop over stacked weights 2x slower); same parameters either way

    def __post_init__(self):
        if self.norm_position not in NORM_POSITIONS:
            raise ValueError(f"model.norm_position must be one of {NORM_POSITIONS}, got {self.norm_position!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"model.activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        for name, valid in (("dtype", DTYPES), ("remat", REMATS), ("attention", ATTENTIONS),
                            ("layer_loop", LAYER_LOOPS)):
            if getattr(self, name) not in valid:
                raise ValueError(f"model.{name} must be one of {valid}, got {getattr(self, name)!r}")
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

    def for_platform(self, platform: str) -> "ModelConfig":
        """This config with "auto" settled for devices of `platform` ("cpu", "tpu", "gpu"/"cuda"/"rocm"): bfloat16
        compute on accelerators, float32 on CPU; the flash attention kernel where it applies (`gpt_jax.attention`).
        Settings the user chose are kept."""
        from gpt_jax.attention import flash_supported  # imports JAX: not at the config's import time

        cfg = self
        if cfg.dtype == "auto":
            cfg = cfg.replace(dtype="float32" if platform == "cpu" else "bfloat16")
        if cfg.remat == "auto":
            cfg = cfg.replace(remat="none" if platform == "cpu" else "dots")
        if cfg.layer_loop == "auto":
            cfg = cfg.replace(layer_loop="unroll" if platform == "cpu" else "scan")
        if cfg.attention == "auto":
            ok, _ = flash_supported(platform=platform, seq_len=cfg.block_size, head_dim=cfg.head_dim,
                                    dtype=cfg.dtype, dropout=cfg.dropout)
            cfg = cfg.replace(attention="flash" if ok else "xla")
        return cfg

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
    c = ConfigDict()
    c.seed = 0  # one seed: parameter init, dropout keys (fold_in(key, step)) and the batch stream

    c.model = ConfigDict(ModelConfig().to_dict())  # fields documented on ModelConfig
    c.model.vocab_size = 0  # 0: taken from the tokenizer (char: the corpus' characters; gpt2: 50257)
    c.model.dtype = "auto"  # bfloat16 compute on TPU/GPU, float32 on CPU
    c.model.attention = "auto"  # the flash kernel on TPU/GPU when attention dropout is 0 and the shapes suit
    c.model.remat = "auto"  # "dots" on TPU/GPU (the layer scan would otherwise keep every layer's attention
    #                         probabilities for the backward pass), "none" on CPU

    c.data = ConfigDict()
    c.data.dataset = "shakespeare"  # "shakespeare" (embedded), a text / JSONL(.gz) / parquet file or a folder of
    #                                  them, or hf:NAME[:CONFIG] (gpt_jax/corpus.py)
    c.data.tokenizer = "gpt2"  # "char" or "gpt2" (tiktoken's GPT-2 BPE, built offline)
    c.data.val_fraction = 0.1  # share of the documents for validation (few documents: of the tokens; see prepare.py)
    c.data.max_documents = 0  # documents to read (0 = all)
    c.data.eot_in_text = "separator"  # "<|endoftext|>" in a text file: "separator" (ends a document) | "text"
    c.data.text_field = "text"  # JSONL key, parquet column or hf: field that holds each document's text
    c.data.shard_tokens = 20_000_000  # tokens per train + val shard pair (~40 MB); a kill loses at most this much work
    c.data.workers = 0  # tokenizer processes (0 = one per CPU core, started after the first 16 MB of text)

    c.optim = default_optim()

    c.train = ConfigDict()
    c.train.batch_size = 64  # sequences per optimizer step (all devices, all microbatches)
    c.train.grad_accum_steps = 1  # microbatches per step (batch_size must divide evenly); 0 = auto: the fewest
    #                               whose compiled step fits the accelerator's memory (gpt_jax/fit.py)
    c.train.max_steps = 100_000  # optimizer steps
    c.train.log_every = 50  # steps between train-loss logs (each one waits for the device)
    c.train.eval_every = 1000  # steps between validation evaluations (and at the end)
    c.train.eval_batch_size = 64  # sequences per eval batch
    c.train.eval_max_windows = 1024  # val windows evaluated (evenly spaced; 0 = the whole split)
    c.train.checkpoint_every = 1000  # steps between checkpoints (and at the end)
    c.train.max_to_keep = 3  # checkpoints kept (0 = all)
    c.train.init_from = ""  # "" (random init), a train.py run folder, gpt2 / ... / openai-gpt, or a local HF folder
    c.train.restore_step = 0  # resume from this checkpoint step instead of the newest (later ones are set aside)
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


# ----------------------------------------------------------------------------------------- validation


@dataclasses.dataclass(frozen=True)
class Range:
    """The valid values of a numeric config field: an interval, open or closed at each end, integers or reals."""
    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False
    integer: bool = False

    def describe(self) -> str:
        kind = "an integer" if self.integer else "a number"
        low = "-inf" if self.low == -math.inf else f"{self.low:g}"
        high = "inf" if self.high == math.inf else f"{self.high:g}"
        left = "(" if self.low_open or self.low == -math.inf else "["
        right = ")" if self.high_open or self.high == math.inf else "]"
        return f"{kind} in {left}{low}, {high}{right}"

    def contains(self, value) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return False  # NaN and infinities too
        if self.integer and value != int(value):
            return False
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below


POSITIVE_INT, COUNT = Range(1, integer=True), Range(0, integer=True)  # 1, 2, ...; 0, 1, ...
NON_NEGATIVE, POSITIVE, FRACTION = Range(0), Range(0, low_open=True), Range(0, 1, high_open=True)  # [0,1)

OPTIM_RANGES = {
    "optim.learning_rate": POSITIVE, "optim.min_learning_rate": NON_NEGATIVE, "optim.beta1": FRACTION,
    "optim.beta2": FRACTION, "optim.eps": POSITIVE, "optim.weight_decay": NON_NEGATIVE,
    "optim.grad_clip": NON_NEGATIVE,
}
PRETRAINING_RANGES = {
    "seed": Range(0, 2**31 - 1, integer=True), **OPTIM_RANGES, "optim.warmup_steps": COUNT,
    "model.dropout": FRACTION, "model.ln_eps": POSITIVE, "model.vocab_size": COUNT,
    "data.val_fraction": Range(0, 1, low_open=True, high_open=True), "data.max_documents": COUNT,
    "train.batch_size": POSITIVE_INT, "train.grad_accum_steps": COUNT, "train.max_steps": POSITIVE_INT,
    "train.log_every": POSITIVE_INT, "train.eval_every": COUNT, "train.eval_batch_size": POSITIVE_INT,
    "train.eval_max_windows": COUNT, "train.checkpoint_every": COUNT, "train.max_to_keep": COUNT,
    "train.peak_flops": NON_NEGATIVE, "train.restore_step": COUNT,
    "sample.max_new_tokens": POSITIVE_INT, "sample.temperature": NON_NEGATIVE, "sample.top_k": COUNT,
    "sample.top_p": Range(0, 1, low_open=True),
}


def check_ranges(config, ranges: Mapping[str, Range]) -> None:
    """Every numeric field named in `ranges` that the config has, checked once, where the config is read: a value
    out of range (NaN included) is a one-line error that gives the valid range."""
    for name, valid in ranges.items():
        group = config
        *parents, field = name.split(".")
        for part in parents:
            group = group.get(part) if group is not None else None
        if group is None or field not in group:
            continue
        if not valid.contains(group[field]):
            raise ValueError(f"{name} must be {valid.describe()}, got {group[field]!r}")
