"""The GPT-1 paper's task formats (its Figure 1) as token ids, truncation, and padded batches. No JAX in here.

`start`, `delim` and `extract` are learned ids right after the BPE vocabulary (vocab_size, +1, +2):

    classification   start text extract
    entailment       start premise delim hypothesis extract
    similarity       start a delim b extract   and   start b delim a extract
    multiple choice  start context delim answer_k extract   for each answer k

A batch is {"ids": (B, S, T) int32, "lengths": (B, S) int32, "weights": (B,) float32, ["labels": (B,)]}: S
sequences per example (1; 2 for similarity; the most answers for multiple choice, missing answers have length
0), right-padded with id 0 to a power-of-two length T (few shapes, few compiles); an example's extract token is
at `lengths - 1`. Rows past the end of the data have weight 0. The batch at a step is a function of (seed, step).
"""

from __future__ import annotations

import dataclasses
from typing import Iterator, Optional, Sequence

import numpy as np

from gpt_jax.finetune.config import TASK_FIELDS
from gpt_jax.finetune.data import FinetuneDataError, LabelSpace
from gpt_jax.tokenizer import TokenizerError
from gpt_jax.utils import ceil_div

EXTRA_TOKENS = 3  # start, delim, extract
MIN_LENGTH = 8  # shortest max_length that leaves room for text beside the special tokens


@dataclasses.dataclass(frozen=True)
class Specials:
    start: int
    delim: int
    extract: int

    @classmethod
    def after(cls, vocab_size: int) -> "Specials":
        return cls(vocab_size, vocab_size + 1, vocab_size + 2)


def truncate(parts: Sequence[list[int]], budget: int) -> tuple[list[list[int]], bool]:
    """Fit `parts` into `budget` tokens by cutting the front of the longest part, again and again (so the ends,
    next to the delim / extract tokens, stay). Returns the parts and whether anything was cut."""
    lengths = [len(p) for p in parts]
    if sum(lengths) <= budget:
        return list(parts), False
    lo, hi = 0, max(lengths)  # the largest cap L with sum(min(len, L)) <= budget
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if sum(min(n, mid) for n in lengths) <= budget:
            lo = mid
        else:
            hi = mid - 1
    keep = [min(n, lo) for n in lengths]
    spare = budget - sum(keep)  # fewer than the parts longer than the cap: one more token each, longest first
    for i in sorted(range(len(parts)), key=lambda i: -lengths[i])[:spare]:
        keep[i] += 1
    return [p[len(p) - k:] for p, k in zip(parts, keep)], True


def format_example(task: str, ids: dict, sp: Specials, max_length: int) -> tuple[list[list[int]], bool]:
    """The token sequences of one example (its fields already tokenized) and whether one was truncated."""
    s, d, e = sp.start, sp.delim, sp.extract
    if task == "classification":
        (text,), cut = truncate([ids["text"]], max_length - 2)
        return [[s, *text, e]], cut
    if task in ("entailment", "similarity"):
        (a, b), cut = truncate([ids[f] for f in TASK_FIELDS[task]], max_length - 3)
        seqs = [[s, *a, d, *b, e]]
        if task == "similarity":  # no natural order between the two texts: both orders
            seqs.append([s, *b, d, *a, e])
        return seqs, cut
    seqs, cut = [], False
    for answer in ids["choices"]:
        (context, answer), c = truncate([ids["context"], answer], max_length - 3)
        seqs.append([s, *context, d, *answer, e])
        cut = cut or c
    return seqs, cut


@dataclasses.dataclass
class Encoded:
    seqs: list[list[list[int]]]  # per example, its sequences
    targets: Optional[np.ndarray]  # (N,) int32 class / answer ids or float32 standardized scores; None: no labels
    n_seq: int  # S: sequences per example in a batch
    n_truncated: int  # examples with a truncated sequence

    def __len__(self) -> int:
        return len(self.seqs)


def encode_examples(examples: list[dict], task: str, tokenizer, sp: Specials, max_length: int,
                    labels: Optional[LabelSpace] = None, path: str = "", n_seq: int = 0) -> Encoded:
    """Tokenize and format `examples`; with `labels`, their targets too. `n_seq` (multiple choice) pads every
    example to at least that many answers, e.g. the training file's most."""
    cache: dict[str, list[int]] = {}

    def tok(text: str) -> list[int]:
        if text not in cache:
            cache[text] = tokenizer.encode(text)
        return cache[text]

    seqs, n_cut = [], 0
    for ex in examples:
        try:
            ids = {f: ([tok(t) for t in ex[f]] if f == "choices" else tok(ex[f])) for f in TASK_FIELDS[task]}
        except TokenizerError as e:
            raise FinetuneDataError(f"{path} line {ex.get('line')}: {e}") from None
        s, cut = format_example(task, ids, sp, max_length)
        seqs.append(s)
        n_cut += cut
    targets = None
    if labels is not None:
        dtype = np.float32 if labels.kind == "regression" else np.int32
        targets = np.asarray([labels.encode(ex, path) for ex in examples], dtype)
    return Encoded(seqs, targets, max([n_seq] + [len(s) for s in seqs]), n_cut)


def bucket_length(n: int, max_length: int) -> int:
    """Padded length of a batch whose longest sequence has n tokens: a power of two (>= 16), at most max_length."""
    return min(max_length, max(16, 1 << (max(n, 1) - 1).bit_length()))


def make_batch(enc: Encoded, idx: np.ndarray, batch_size: int, max_length: int) -> dict[str, np.ndarray]:
    rows = [enc.seqs[i] for i in idx]
    B, S = batch_size, enc.n_seq
    T = bucket_length(max(len(s) for r in rows for s in r), max_length)
    ids = np.zeros((B, S, T), np.int32)
    lengths = np.zeros((B, S), np.int32)
    for b, row in enumerate(rows):
        for j, seq in enumerate(row):
            ids[b, j, : len(seq)] = seq
            lengths[b, j] = len(seq)
    weights = np.zeros(B, np.float32)
    weights[: len(rows)] = 1.0
    batch = {"ids": ids, "lengths": lengths, "weights": weights}
    if enc.targets is not None:
        batch["labels"] = np.zeros(B, enc.targets.dtype)
        batch["labels"][: len(rows)] = enc.targets[idx]
    return batch


def steps_per_epoch(n_examples: int, batch_size: int) -> int:
    return ceil_div(n_examples, batch_size)


def train_batch(enc: Encoded, batch_size: int, max_length: int, seed: int, step: int) -> dict[str, np.ndarray]:
    """The batch of optimizer step `step` (0-based): epoch e visits the examples in the order
    permutation(seed, e); its last batch is topped up with weight-0 rows."""
    epoch, k = divmod(step, steps_per_epoch(len(enc), batch_size))
    order = np.random.default_rng([seed, epoch]).permutation(len(enc))
    return make_batch(enc, order[k * batch_size : (k + 1) * batch_size], batch_size, max_length)


def eval_batches(enc: Encoded, batch_size: int, max_length: int) -> Iterator[dict[str, np.ndarray]]:
    """Every example once, in file order."""
    for i in range(0, len(enc), batch_size):
        yield make_batch(enc, np.arange(i, min(i + batch_size, len(enc))), batch_size, max_length)
