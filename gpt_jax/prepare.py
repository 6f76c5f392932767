"""Corpus -> token shards on every core, resumable: the `prepare` behind prepare.py and train.py's first use.

The flow: the corpus's pieces (`gpt_jax.corpus`) are grouped into tasks of about TASK_CHARS characters and
tokenized by worker processes, in order, with at most two tasks per worker in flight; the main process appends
each document's ids to its split's open shard (a file). Once the two open shards hold `shard_tokens` between
them, both are renamed into place and the manifest records them with the corpus cursor after them. Memory stays
bounded by the tasks in flight, whatever the corpus size.

Resuming: a rerun with the same corpus (paths, sizes, mtimes), tokenizer and split settings continues from
the manifest's cursor; only what the open shards held at the kill (under `shard_tokens` plus one piece) and the
tasks in flight are tokenized again. Anything else (another corpus, another tokenizer, a listed shard gone or
resized) starts over in an emptied folder.

Documents: GPT-2 BPE ids are `tiktoken.get_encoding("gpt2").encode_ordinary(document)` for every document,
with one `<|endoftext|>` id between consecutive documents of a split. A text file is one document, or several
where it has the literal text "<|endoftext|>", so a text file gets the ids of `encode(text,
allowed_special={"<|endoftext|>"})`. The char tokenizer takes its vocabulary from a first pass over the corpus.

Validation split, by document (`split_of`): documents are numbered from 0 in corpus order; the first
FIRST_VAL_DOCUMENT are training documents, and after them document i is a validation document when the
fractional part of (i + 1) / golden ratio is below `val_fraction` (Fibonacci hashing: evenly spread, the same
for every run, and close to `val_fraction` of the documents in any stretch of the corpus). When that leaves
the validation split empty (a corpus of at most FIRST_VAL_DOCUMENT documents, such as one text file), the
last `val_fraction` of the training tokens are the validation split instead, as nanoGPT splits tiny
shakespeare.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import itertools
import json
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Callable, Iterable, Iterator, Optional

import numpy as np
from tqdm import tqdm

from gpt_jax import shards
from gpt_jax import tokenizer as tok_lib
from gpt_jax.corpus import Corpus, DataError, Piece
from gpt_jax.utils import atomic_write

try:
    import fcntl
except ImportError:  # Windows: no folder lock
    fcntl = None

TASK_CHARS = 1 << 20  # characters a worker tokenizes per task
INLINE_CHARS = 16 << 20  # with data.workers=0, the first characters tokenized in-process: a small corpus is
#                          done before worker processes would have started
FIRST_VAL_DOCUMENT = 100  # documents before it are always training documents
GOLDEN_64 = 0x9E3779B97F4A7C15  # 2^64 / golden ratio
TOKENIZERS = ("char", "gpt2")  # data.tokenizer names


def make_tokenizer(name: str, text_sample: Optional[str] = None) -> tok_lib.Tokenizer:
    if name == "char":
        return tok_lib.CharTokenizer.from_text(text_sample or "")
    if name == "gpt2":
        return tok_lib.GPT2Tokenizer()
    raise DataError(f"unknown tokenizer {name!r}: set --config.data.tokenizer to 'char' or 'gpt2'")


def split_of(document: int, val_fraction: float) -> str:
    """"train" or "val" for the document numbered `document` (from 0, in corpus order)."""
    if document < FIRST_VAL_DOCUMENT:
        return "train"
    return "val" if (document + 1) * GOLDEN_64 % 2**64 < val_fraction * 2**64 else "train"


def prepare(data_cfg, cache_dir: str, tokenizer: Optional[tok_lib.Tokenizer] = None
            ) -> tuple[shards.TokenStream, shards.TokenStream, tok_lib.Tokenizer]:
    """Tokenizes `data_cfg.dataset` into token shards in `cache_dir` once, resuming an interrupted run; reuses
    them while the corpus, tokenizer and split settings are unchanged.

    `tokenizer` (e.g. a pretrained model's) overrides `data_cfg.tokenizer`.
    Returns the (train, val) token streams and the tokenizer."""
    val_fraction = float(data_cfg.val_fraction)
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"data.val_fraction must be in (0, 1), got {val_fraction}")
    if tokenizer is None and data_cfg.tokenizer not in TOKENIZERS:
        make_tokenizer(data_cfg.tokenizer)  # fails, naming the known ones
    corpus = Corpus(data_cfg.dataset, data_cfg.text_field, int(data_cfg.max_documents))
    key = _cache_key(data_cfg, corpus, val_fraction, tokenizer)
    manifest = _usable_manifest(cache_dir, key)
    if manifest is None or not manifest["complete"]:  # (a prepared folder may be read-only: no lock to read it)
        os.makedirs(cache_dir, exist_ok=True)
        with _locked(cache_dir):
            manifest = _usable_manifest(cache_dir, key)  # another process may have prepared it meanwhile
            if manifest is None:
                manifest = _new_manifest(cache_dir, key, corpus, data_cfg.tokenizer, tokenizer)
            if not manifest["complete"]:
                shards.remove_unlisted(cache_dir, manifest)
                _tokenize(cache_dir, manifest, corpus, data_cfg)
    train, val = shards.open_splits(cache_dir, manifest)
    return train, val, tokenizer or tok_lib.from_meta(manifest["tokenizer"])


def _usable_manifest(directory: str, key: dict) -> Optional[dict]:
    """The folder's manifest when it is for `key` and its shards are intact (complete or to be resumed)."""
    manifest = shards.read_manifest(directory)
    if manifest is not None and manifest["key"] == key and shards.intact(directory, manifest):
        return manifest
    return None


def _cache_key(data_cfg, corpus: Corpus, val_fraction: float, tokenizer: Optional[tok_lib.Tokenizer]) -> dict:
    """What the tokens depend on; shard size and worker count change where shards end, not the tokens."""
    meta = tokenizer.meta() if tokenizer is not None else {"name": data_cfg.tokenizer}
    if data_cfg.get("eot_in_text", "separator") not in ("separator", "text"):
        raise DataError(f"data.eot_in_text must be 'separator' or 'text', got {data_cfg.eot_in_text!r}")
    return {"dataset": data_cfg.dataset, "fingerprint": corpus.fingerprint(), "text_field": data_cfg.text_field,
            "max_documents": int(data_cfg.max_documents), "val_fraction": val_fraction,
            "eot_in_text": data_cfg.get("eot_in_text", "separator"),
            "tokenizer": hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()}


@contextlib.contextmanager
def _locked(directory: str):
    """Holds an exclusive lock on `directory` (processes sharing a workdir prepare it once, one at a time)."""
    with open(os.path.join(directory, ".lock"), "w") as f:
        if fcntl is not None:
            fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _new_manifest(directory: str, key: dict, corpus: Corpus, name: str,
                  tokenizer: Optional[tok_lib.Tokenizer]) -> dict:
    """An empty manifest for a fresh preparation (the char tokenizer reads the corpus once for its vocabulary),
    written before the first shard so a resumed run uses the same tokenizer."""
    if tokenizer is None:
        tokenizer = make_tokenizer(name, "".join(_characters(corpus)) if name == "char" else None)
    manifest = {"format": shards.FORMAT_VERSION, "key": key, "tokenizer": tokenizer.meta(),
                "vocab_size": tokenizer.vocab_size,
                "dtype": "uint16" if tokenizer.vocab_size <= 65536 else "uint32",
                "shards": {split: [] for split in shards.SPLITS}, "complete": False, "val_from_train_tail": 0,
                "state": {"cursor": None, "bytes": 0, "checkpoints": 0, "documents": 0, "split": "train",
                          "split_documents": {split: 0 for split in shards.SPLITS}}}
    shards.write_manifest(directory, manifest)
    return manifest


def _characters(corpus: Corpus) -> set[str]:
    chars: set[str] = set()
    for piece in corpus.pieces():
        chars.update(piece.text)
    if not chars:
        raise DataError(f"dataset {corpus.dataset!r} is empty; give it some text")
    return chars


def _separator(tokenizer: tok_lib.Tokenizer, eot_in_text: str) -> Optional[str]:
    """The end-of-text token's text ("<|endoftext|>"), which separates documents inside a text file; None when the
    tokenizer has no such token or `data.eot_in_text="text"` (then it is encoded as the plain characters it is)."""
    if tokenizer.eot_id is None or eot_in_text == "text":
        return None
    return tokenizer.decode([tokenizer.eot_id])


def _worker_count(workers: int) -> int:
    if workers:
        return int(workers)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# ----------------------------------------------------------------------------------------- the run


def _tokenize(directory: str, manifest: dict, corpus: Corpus, data_cfg) -> None:
    """Tokenizes the corpus from the manifest's cursor to the end, shard by shard; completes the manifest."""
    started, state = time.time(), manifest["state"]
    tokenizer = tok_lib.from_meta(manifest["tokenizer"])
    resumed = sum(shards.listed_tokens(manifest, split) for split in shards.SPLITS)
    first_byte = state["bytes"]
    workers = _worker_count(int(data_cfg.workers))
    pieces = corpus.pieces(state["cursor"], _separator(tokenizer, data_cfg.get("eot_in_text", "separator")))
    encoded = _encoded_pieces(pieces, tokenizer, workers, np.dtype(manifest["dtype"]),
                              0 if int(data_cfg.workers) else INLINE_CHARS)
    bar = tqdm(total=corpus.total_bytes(), initial=first_byte, unit="B", unit_scale=True, disable=None,
               desc=f"tokenizing ({workers} worker{'s' if workers > 1 else ''})", file=sys.stderr,
               dynamic_ncols=True)
    writer = ShardWriter(directory, manifest, int(data_cfg.shard_tokens), float(data_cfg.val_fraction),
                         tokenizer.eot_id, bar)
    with contextlib.closing(encoded), bar:
        while writer.write_next(encoded):
            shards.write_manifest(directory, manifest)
    tokens = {split: shards.listed_tokens(manifest, split) for split in shards.SPLITS}
    if not tokens["train"] + tokens["val"]:
        raise DataError(f"dataset {corpus.dataset!r} is empty; give it some text")
    if not tokens["val"]:
        tail = manifest["val_from_train_tail"] = max(int(tokens["train"] * float(data_cfg.val_fraction)), 1)
        tokens = {"train": tokens["train"] - tail, "val": tail}
    seconds, read = time.time() - started, state["bytes"] - first_byte
    manifest["last_run"] = {"resumed_tokens": resumed, "tokenized_tokens": sum(tokens.values()) - resumed,
                            "bytes": read, "seconds": round(seconds, 3), "workers": workers}
    manifest["complete"] = True
    shards.write_manifest(directory, manifest)
    count = sum(len(manifest["shards"][split]) for split in shards.SPLITS)
    print(f"prepared {directory}: {tokens['train']:,} train + {tokens['val']:,} val tokens in {count} shards, "
          f"{read / 1e6:.1f} MB read at {read / 1e6 / max(seconds, 1e-9):.1f} MB/s"
          + (f" (resumed after {resumed:,} tokens)" if resumed else ""), file=sys.stderr, flush=True)


class ShardWriter:
    """Appends each document's ids to its split's open shard; closes both shards into the manifest's lists."""

    def __init__(self, directory: str, manifest: dict, shard_tokens: int, val_fraction: float,
                 eot_id: Optional[int], bar: tqdm):
        self.directory, self.manifest, self.state = directory, manifest, manifest["state"]
        self.shard_tokens, self.val_fraction, self.bar = shard_tokens, val_fraction, bar
        self.eot = None if eot_id is None else np.asarray([eot_id], manifest["dtype"])
        self.total = sum(shards.listed_tokens(manifest, split) for split in shards.SPLITS)

    def write_next(self, encoded: Iterator[tuple[Piece, np.ndarray]]) -> bool:
        """Writes the next train and val shard from `encoded` and lists them in the manifest (not yet saved).
        True when a shard filled up before the corpus ended."""
        index = self.state["checkpoints"]
        paths = {split: os.path.join(self.directory, shards.shard_name(split, index)) for split in shards.SPLITS}
        written = {split: 0 for split in shards.SPLITS}
        full = [False]

        def fill(files: dict) -> None:
            for piece, ids in encoded:
                split, separated = self._route(piece)
                for part in ((self.eot, ids) if separated and self.eot is not None else (ids,)):
                    files[split].write(part.tobytes())
                    written[split] += len(part)
                self.state["bytes"] += piece.nbytes
                self.bar.update(piece.nbytes)
                self.bar.set_postfix_str(f"{self.total + sum(written.values()):,} tokens", refresh=False)
                if piece.cursor is not None:
                    self.state["cursor"] = piece.cursor
                    if sum(written.values()) >= self.shard_tokens:
                        full[0] = True
                        return

        # each shard appears under its name only once complete (val first, then train)
        atomic_write(paths["train"], lambda train_file: atomic_write(
            paths["val"], lambda val_file: fill({"train": train_file, "val": val_file}), binary=True), binary=True)
        for split in shards.SPLITS:
            if written[split]:
                self.manifest["shards"][split].append({"file": os.path.basename(paths[split]),
                                                       "tokens": written[split]})
            else:
                os.remove(paths[split])
        self.state["checkpoints"] += 1
        self.total += sum(written.values())
        return full[0]

    def _route(self, piece: Piece) -> tuple[str, bool]:
        """The split of `piece`'s document, and whether an end-of-text id goes first (a new document that
        follows another one in its split)."""
        if not piece.new_document:
            return self.state["split"], False
        split = split_of(self.state["documents"], self.val_fraction)
        self.state["documents"] += 1
        self.state["split"] = split
        self.state["split_documents"][split] += 1
        return split, self.state["split_documents"][split] > 1


# ----------------------------------------------------------------------------------------- tokenizing


def _encoded_pieces(pieces: Iterable[Piece], tokenizer: tok_lib.Tokenizer, workers: int, dtype: np.dtype,
                    inline_chars: int) -> Iterator[tuple[Piece, np.ndarray]]:
    """(piece, ids) for every piece, in order. The first `inline_chars` characters (all of them when `workers`
    is 1) are tokenized in this process, the rest by `workers` worker processes."""
    tasks = _tasks(pieces)
    encode, done = text_encoder(tokenizer, dtype), 0
    for task in tasks:
        if workers > 1 and done >= inline_chars:
            yield from _encoded_in_workers(itertools.chain([task], tasks), tokenizer, workers, dtype)
            return
        yield from _unpack(task, encode([piece.text for piece in task]))
        done += sum(len(piece.text) for piece in task)


def _encoded_in_workers(tasks: Iterable[list[Piece]], tokenizer: tok_lib.Tokenizer, workers: int, dtype: np.dtype
                        ) -> Iterator[tuple[Piece, np.ndarray]]:
    """(piece, ids) for the pieces of every task, in order, with at most two tasks per worker in flight."""
    # spawn, not fork: the caller may already run JAX's threads; a worker that dies fails the run at once
    executor = ProcessPoolExecutor(workers, multiprocessing.get_context("spawn"), _start_worker,
                                   (tokenizer.meta(), dtype.str))
    try:
        in_flight: collections.deque = collections.deque()
        for task in tasks:
            in_flight.append((task, executor.submit(_encode_in_worker, [piece.text for piece in task])))
            if len(in_flight) >= 2 * workers:
                task, result = in_flight.popleft()
                yield from _unpack(task, result.result())
        while in_flight:
            task, result = in_flight.popleft()
            yield from _unpack(task, result.result())
    finally:
        executor.shutdown(cancel_futures=True)


def _tasks(pieces: Iterable[Piece]) -> Iterator[list[Piece]]:
    """Consecutive pieces, grouped into lists of about TASK_CHARS characters."""
    task, chars = [], 0
    for piece in pieces:
        task.append(piece)
        chars += len(piece.text)
        if chars >= TASK_CHARS:
            yield task
            task, chars = [], 0
    if task:
        yield task


def _unpack(task: list[Piece], encoded: tuple[np.ndarray, np.ndarray]) -> Iterator[tuple[Piece, np.ndarray]]:
    ids, lengths = encoded
    return zip(task, np.split(ids, np.cumsum(lengths)[:-1]))


_worker_encode: Optional[Callable] = None  # each worker process's encoder, set by _start_worker


def _start_worker(tokenizer_meta: dict, dtype: str) -> None:
    global _worker_encode
    _worker_encode = text_encoder(tok_lib.from_meta(tokenizer_meta), np.dtype(dtype))


def _encode_in_worker(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    return _worker_encode(texts)


def text_encoder(tokenizer: tok_lib.Tokenizer, dtype: np.dtype
                 ) -> Callable[[list[str]], tuple[np.ndarray, np.ndarray]]:
    """texts -> (their ids concatenated as `dtype`, each text's id count)."""
    if isinstance(tokenizer, tok_lib.GPT2Tokenizer):
        encoding = tokenizer.enc

        def encode_one(text: str) -> np.ndarray:  # encode_ordinary's ids, as an array (no list of ints)
            return encoding.encode_to_numpy(text, disallowed_special=())
    elif isinstance(tokenizer, tok_lib.CharTokenizer):
        encode_one = _char_encoder(tokenizer)
    else:
        def encode_one(text: str) -> np.ndarray:
            return np.asarray(tokenizer.encode(text), np.int64)

    def encode(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        arrays = [encode_one(text) for text in texts]
        ids = np.concatenate(arrays).astype(dtype) if arrays else np.empty(0, dtype)
        return ids, np.asarray([len(a) for a in arrays], np.int64)

    return encode


def _char_encoder(tokenizer: tok_lib.CharTokenizer) -> Callable[[str], np.ndarray]:
    """The char tokenizer as a code point -> id table lookup."""
    codes = np.asarray([ord(c) for c in tokenizer.chars], np.int64)
    table = np.full(int(codes.max(initial=0)) + 2, -1, np.int64)  # the last slot: any code point past the table
    table[codes] = np.arange(len(codes))

    def encode_one(text: str) -> np.ndarray:
        points = np.frombuffer(text.encode("utf-32-le"), np.uint32)
        ids = table[np.minimum(points, len(table) - 1)]
        if (ids < 0).any():
            tokenizer.encode(text)  # raises its error naming the unknown character
        return ids

    return encode_one
