"""Token shards -> batches. No JAX in here: a batch is a dict of int32 numpy arrays.

The batch at step `s` is a pure function of `(seed, s)` over the whole training token stream, whatever the shard
boundaries and the number of processes: every process draws the same global batch and reads only its own rows.
A resumed run needs nothing but the step number to see the same data.

Preparing the shards (corpus -> tokens, resumable, on every core) is `gpt_jax.prepare`'s job; the training loop
reaches it through `prepare` here, and reads what it returns with `Batches` and `eval_batches`.
"""

from __future__ import annotations

import numpy as np

from gpt_jax.corpus import DataError
from gpt_jax.prepare import make_tokenizer, prepare
from gpt_jax.shards import TokenStream

__all__ = ["Batches", "DataError", "TokenStream", "eval_batches", "make_tokenizer", "prepare"]


def _check_length(tokens: TokenStream, block_size: int, what: str) -> None:
    if len(tokens) < block_size + 1:
        raise DataError(f"the {what} split has {len(tokens)} tokens, fewer than block_size + 1 = {block_size + 1}; "
                        "use more text, a larger --config.data.val_fraction or a smaller --config.model.block_size")


def process_rows(batch_size: int, process_index: int, process_count: int) -> slice:
    """The rows of a global batch that process `process_index` of `process_count` reads."""
    if process_count < 1 or not 0 <= process_index < process_count:
        raise DataError(f"process_index={process_index} is not one of process_count={process_count} processes")
    if batch_size % process_count:
        raise DataError(f"batch size {batch_size} does not split evenly over {process_count} processes; use a "
                        "multiple of the process count")
    rows = batch_size // process_count
    return slice(process_index * rows, (process_index + 1) * rows)


class Batches:
    """`batches(step)` -> {"inputs", "targets"}: (B / process_count, T) int32 random windows of the token stream.

    The global batch (B rows) at `step` is a pure function of (seed, step); process `process_index` gets its
    rows [process_index * B / process_count, (process_index + 1) * B / process_count) and reads only those."""

    def __init__(self, tokens, block_size: int, batch_size: int, seed: int, process_index: int = 0,
                 process_count: int = 1):
        self.tokens = TokenStream.from_array(tokens)
        _check_length(self.tokens, block_size, "train")
        self.block_size, self.batch_size, self.seed = block_size, batch_size, seed
        self.rows = process_rows(batch_size, process_index, process_count)

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, step])
        starts = rng.integers(0, len(self.tokens) - self.block_size, size=self.batch_size)  # the global batch
        windows = self.tokens.windows(starts[self.rows], self.block_size + 1)  # (B / processes, T + 1)
        return {"inputs": windows[:, :-1], "targets": windows[:, 1:]}


def eval_batches(tokens, block_size: int, batch_size: int, max_windows: int = 0, process_index: int = 0,
                 process_count: int = 1):
    """Fixed evaluation batches: non-overlapping windows over the split (all of them, or `max_windows` evenly
    spaced ones when the split is larger). Each batch has a `weights` (B,) float32 entry; the last batch is
    padded with zero-weight rows so every batch has the same shape (one compile). With several processes, each
    gets its rows of every global batch, as `Batches` does."""
    tokens = TokenStream.from_array(tokens)
    _check_length(tokens, block_size, "val")
    rows = process_rows(batch_size, process_index, process_count)
    n = (len(tokens) - 1) // block_size
    starts = np.arange(n) * block_size
    if max_windows and n > max_windows:
        starts = starts[np.linspace(0, n - 1, max_windows).round().astype(int)]
    out = []
    for i in range(0, len(starts), batch_size):
        batch_starts = starts[i : i + batch_size]
        weights = np.ones(batch_size, np.float32)
        if len(batch_starts) < batch_size:
            weights[len(batch_starts):] = 0.0
            batch_starts = np.concatenate([batch_starts, np.zeros(batch_size - len(batch_starts), starts.dtype)])
        windows = tokens.windows(batch_starts[rows], block_size + 1)
        out.append({"inputs": windows[:, :-1], "targets": windows[:, 1:], "weights": weights[rows]})
    return out
