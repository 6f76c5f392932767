"""Text -> uint16 token shards (nanoGPT-style `train.bin` / `val.bin` + `meta.json`) -> batches.

No JAX in here: a batch is a dict of int32 numpy arrays, and the batch at step `s` is a pure function of
`(seed, s)`, so a resumed run needs nothing but the step number to see the same data.

`config.data.dataset` takes
  - "shakespeare" (or ""): the embedded tiny shakespeare corpus shipped inside the package;
  - a local text file, or a folder of `*.txt` files (read in sorted order, one document each);
  - "hf:NAME" or "hf:NAME:CONFIG": a Hugging Face dataset streamed through `datasets` (online users only).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from typing import Iterator, Optional

import numpy as np

from gpt_jax import tokenizer as tok_lib
from gpt_jax.utils import atomic_write, write_json

EMBEDDED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tinyshakespeare.txt")
FORMAT_VERSION = 1


class DataError(ValueError):
    """A dataset that cannot be found, read or used."""


# ----------------------------------------------------------------------------------------- sources


def _local_files(dataset: str) -> list[str]:
    if dataset in ("", "shakespeare"):
        return [EMBEDDED]
    path = os.path.abspath(os.path.expanduser(dataset))
    if os.path.isfile(path):
        return [path]
    if os.path.isdir(path):
        files = sorted(glob.glob(os.path.join(path, "**", "*.txt"), recursive=True))
        if not files:
            raise DataError(f"dataset folder {dataset} holds no *.txt files; put text files in it")
        return files
    raise DataError(f"dataset {dataset!r} not found: pass an existing text file or folder with "
                    "--config.data.dataset=PATH, 'shakespeare' for the embedded corpus, or hf:NAME")


def _fingerprint(files: list[str]) -> str:
    h = hashlib.sha256()
    for f in files:
        st = os.stat(f)
        h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    return h.hexdigest()


def _hf_documents(spec: str, max_documents: int) -> Iterator[str]:
    """Documents of a Hugging Face dataset, streamed (needs network access and `pip install datasets`)."""
    parts = spec.split(":")
    name, conf = parts[0], (parts[1] if len(parts) > 1 else None)
    try:
        import datasets
    except ImportError:
        raise DataError("hf: datasets need the `datasets` package: pip install datasets") from None
    try:
        ds = datasets.load_dataset(name, conf, split="train", streaming=True)
    except Exception as e:  # network, unknown name, ...
        raise DataError(f"could not open Hugging Face dataset {name!r} ({type(e).__name__}: {e}); offline, "
                        "save the text to a file and pass --config.data.dataset=PATH") from None
    for i, row in enumerate(ds):
        if max_documents and i >= max_documents:
            break
        yield row["text"]


# ----------------------------------------------------------------------------------------- shards


def make_tokenizer(name: str, text_sample: Optional[str] = None) -> tok_lib.Tokenizer:
    if name == "char":
        return tok_lib.CharTokenizer.from_text(text_sample or "")
    if name == "gpt2":
        return tok_lib.GPT2Tokenizer()
    raise DataError(f"unknown tokenizer {name!r}: set --config.data.tokenizer to 'char' or 'gpt2'")


def prepare(data_cfg, cache_dir: str, tokenizer: Optional[tok_lib.Tokenizer] = None
            ) -> tuple[np.ndarray, np.ndarray, tok_lib.Tokenizer]:
    """Tokenize `data_cfg.dataset` once into `cache_dir/{train,val}.bin` + `meta.json`; reuse when unchanged.

    `tokenizer` (e.g. a pretrained model's) overrides `data_cfg.tokenizer`.
    Returns memmapped (train_tokens, val_tokens) and the tokenizer.
    """
    dataset = data_cfg.dataset
    tok_name = data_cfg.tokenizer if tokenizer is None else tokenizer.meta()
    val_fraction = float(data_cfg.val_fraction)
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"data.val_fraction must be in (0, 1), got {val_fraction}")
    if dataset.startswith("hf:"):
        files, fingerprint = None, hashlib.sha256(f"{dataset}\0{data_cfg.max_documents}".encode()).hexdigest()
    else:
        files = _local_files(dataset)
        fingerprint = _fingerprint(files)
    key = {"format": FORMAT_VERSION, "dataset": dataset, "fingerprint": fingerprint, "tokenizer": tok_name,
           "val_fraction": val_fraction}
    meta_path = os.path.join(cache_dir, "meta.json")
    if os.path.exists(meta_path):
        with open(meta_path) as f:
            meta = json.load(f)
        if meta.get("key") == key:
            return _open(cache_dir, meta)

    if files is None:
        docs = list(_hf_documents(dataset[3:], int(data_cfg.max_documents)))
    else:
        docs = []
        for path in files:
            try:
                with open(path, encoding="utf-8") as f:
                    docs.append(f.read())
            except UnicodeDecodeError:
                raise DataError(f"{path} is not UTF-8 text; convert it or leave it out of the dataset") from None
    if not any(docs):
        raise DataError(f"dataset {dataset!r} is empty; give it some text")
    if tokenizer is None:
        tokenizer = make_tokenizer(tok_name, "".join(docs) if tok_name == "char" else None)
    pieces = []
    for doc in docs:
        pieces.append(np.asarray(tokenizer.encode(doc), dtype=np.int64))
        if tokenizer.eot_id is not None and len(docs) > 1:
            pieces.append(np.asarray([tokenizer.eot_id], np.int64))  # document separator
    ids = np.concatenate(pieces)
    dtype = np.uint16 if tokenizer.vocab_size <= 65536 else np.uint32
    n_val = max(int(len(ids) * val_fraction), 1)
    train, val = ids[:-n_val].astype(dtype), ids[-n_val:].astype(dtype)
    os.makedirs(cache_dir, exist_ok=True)
    atomic_write(os.path.join(cache_dir, "train.bin"), lambda f: f.write(train.tobytes()), binary=True)
    atomic_write(os.path.join(cache_dir, "val.bin"), lambda f: f.write(val.tobytes()), binary=True)
    meta = {"key": key, "tokenizer": tokenizer.meta(), "vocab_size": tokenizer.vocab_size,
            "dtype": np.dtype(dtype).name, "train_tokens": int(len(train)), "val_tokens": int(len(val))}
    write_json(meta_path, meta)  # written last
    return _open(cache_dir, meta)


def _open(cache_dir: str, meta: dict):
    arrays = []
    for split in ("train", "val"):
        n = meta[f"{split}_tokens"]
        arrays.append(np.memmap(os.path.join(cache_dir, f"{split}.bin"), dtype=meta["dtype"], mode="r", shape=(n,)))
    return arrays[0], arrays[1], tok_lib.from_meta(meta["tokenizer"])


# ----------------------------------------------------------------------------------------- batches


def _check_length(tokens: np.ndarray, block_size: int, what: str) -> None:
    if len(tokens) < block_size + 1:
        raise DataError(f"the {what} split has {len(tokens)} tokens, fewer than block_size + 1 = {block_size + 1}; "
                        "use more text or a smaller --config.model.block_size")


class Batches:
    """`batches(step)` -> {"inputs", "targets"}: (B, T) int32 random windows, a pure function of (seed, step)."""

    def __init__(self, tokens: np.ndarray, block_size: int, batch_size: int, seed: int):
        _check_length(tokens, block_size, "train")
        self.tokens, self.block_size, self.batch_size, self.seed = tokens, block_size, batch_size, seed
        self._offsets = np.arange(block_size + 1)

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, step])
        starts = rng.integers(0, len(self.tokens) - self.block_size, size=self.batch_size)
        windows = np.asarray(self.tokens[starts[:, None] + self._offsets], dtype=np.int32)  # (B, T + 1)
        return {"inputs": windows[:, :-1], "targets": windows[:, 1:]}


def eval_batches(tokens: np.ndarray, block_size: int, batch_size: int, max_windows: int = 0):
    """Fixed evaluation batches: non-overlapping windows over the split (all of them, or `max_windows` evenly
    spaced ones when the split is larger). Each batch has a `weights` (B,) float32 entry; the last batch is
    padded with zero-weight rows so every batch has the same shape (one compile)."""
    _check_length(tokens, block_size, "val")
    n = (len(tokens) - 1) // block_size
    starts = np.arange(n) * block_size
    if max_windows and n > max_windows:
        starts = starts[np.linspace(0, n - 1, max_windows).round().astype(int)]
    offsets = np.arange(block_size + 1)
    out = []
    for i in range(0, len(starts), batch_size):
        s = starts[i : i + batch_size]
        weights = np.ones(batch_size, np.float32)
        if len(s) < batch_size:
            weights[len(s):] = 0.0
            s = np.concatenate([s, np.zeros(batch_size - len(s), s.dtype)])
        windows = np.asarray(tokens[s[:, None] + offsets], dtype=np.int32)
        out.append({"inputs": windows[:, :-1], "targets": windows[:, 1:], "weights": weights})
    return out
