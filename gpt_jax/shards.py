"""Token shards on disk: the manifest that lists them, and a split read back as one token stream.

A prepared folder holds `train_000000.bin`, `val_000000.bin`, ... (raw little-endian uint16 ids, or uint32
for vocabularies over 65,536) and `manifest.json`. A shard is written under a temporary name and renamed into
place when complete; the manifest, rewritten after each rename, lists only complete shards, with their token
counts. So a reader never sees a half-written shard, and a listed shard whose size disagrees with its count is
noticed (`intact`).
"""

from __future__ import annotations

import collections
import json
import os
import re
from typing import Optional, Sequence, Union

import numpy as np

from gpt_jax.utils import write_json

MANIFEST = "manifest.json"
FORMAT_VERSION = 2  # version 1: one train.bin / val.bin with meta.json
SPLITS = ("train", "val")
SHARD_FILE = re.compile(r"^(train|val)_\d{6}\.bin(\.tmp\d+)?$")  # shards, and temporaries left by a kill
OLD_FORMAT_FILES = ("train.bin", "val.bin", "meta.json")
MAX_OPEN_MAPS = 256  # memory maps kept open per stream (each holds a file descriptor)

Segment = tuple[Union[str, np.ndarray], int, int]  # (shard path or array, first token, end token)


def shard_name(split: str, index: int) -> str:
    return f"{split}_{index:06d}.bin"


def read_manifest(directory: str) -> Optional[dict]:
    """The folder's manifest, or None when there is none of this format (absent, unreadable or older)."""
    try:
        with open(os.path.join(directory, MANIFEST)) as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("format") == FORMAT_VERSION else None


def write_manifest(directory: str, manifest: dict) -> None:
    write_json(os.path.join(directory, MANIFEST), manifest)


def listed_tokens(manifest: dict, split: str) -> int:
    return sum(shard["tokens"] for shard in manifest["shards"][split])


def intact(directory: str, manifest: dict) -> bool:
    """Every listed shard is there with the size its token count gives."""
    itemsize = np.dtype(manifest["dtype"]).itemsize
    for split in SPLITS:
        for shard in manifest["shards"][split]:
            path = os.path.join(directory, shard["file"])
            if not os.path.isfile(path) or os.path.getsize(path) != shard["tokens"] * itemsize:
                return False
    return True


def remove_unlisted(directory: str, manifest: dict) -> None:
    """Deletes this module's files that `manifest` does not list: temporaries and shards a kill left behind,
    the shards of an earlier preparation, and the single-file cache of format version 1."""
    listed = {shard["file"] for split in SPLITS for shard in manifest["shards"][split]}
    for name in os.listdir(directory):
        if SHARD_FILE.match(name) and name not in listed:
            os.remove(os.path.join(directory, name))
    old_meta = os.path.join(directory, "meta.json")
    if os.path.isfile(old_meta) and _is_old_format(old_meta):
        for name in OLD_FORMAT_FILES:
            if os.path.isfile(os.path.join(directory, name)):
                os.remove(os.path.join(directory, name))


def _is_old_format(meta_path: str) -> bool:
    try:
        with open(meta_path) as f:
            return json.load(f)["key"]["format"] == 1
    except (OSError, ValueError, KeyError, TypeError):
        return False


def open_splits(directory: str, manifest: dict) -> tuple["TokenStream", "TokenStream"]:
    """(train, val) streams of a complete manifest. With `val_from_train_tail` > 0 the validation split is
    the last that many tokens of the train shards, and the training split the rest."""
    segments = {split: [(os.path.join(directory, s["file"]), 0, s["tokens"]) for s in manifest["shards"][split]]
                for split in SPLITS}
    tail = manifest.get("val_from_train_tail", 0)
    if tail:
        train = TokenStream(segments["train"], manifest["dtype"])
        cut = len(train) - tail
        return train.sub_stream(0, cut), train.sub_stream(cut, len(train))
    return TokenStream(segments["train"], manifest["dtype"]), TokenStream(segments["val"], manifest["dtype"])


class TokenStream:
    """One split's tokens: consecutive ranges of shard files, memory-mapped on first use (or of arrays).

    `len(stream)`, `stream[i]`, `stream[a:b]` (a copy), `windows(starts, length)` (rows that may cross shard
    boundaries) and `np.asarray(stream)` (the whole split, read into memory)."""

    def __init__(self, segments: Sequence[Segment], dtype):
        self.dtype = np.dtype(dtype)
        self._segments = [s for s in segments if s[2] > s[1]]
        self._bounds = np.cumsum([0] + [stop - start for _, start, stop in self._segments])
        self._maps: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()

    @classmethod
    def from_array(cls, tokens) -> "TokenStream":
        """`tokens` (a numpy array or memmap) as a one-segment stream; a TokenStream is returned as it is."""
        if isinstance(tokens, TokenStream):
            return tokens
        tokens = np.asarray(tokens)
        return cls([(tokens, 0, len(tokens))], tokens.dtype)

    def __len__(self) -> int:
        return int(self._bounds[-1])

    def sub_stream(self, start: int, stop: int) -> "TokenStream":
        """Tokens [start, stop) as a stream of their own (no copy)."""
        segments = []
        for i, (source, first, end) in enumerate(self._segments):
            lo, hi = self._bounds[i], self._bounds[i + 1]
            if hi > start and lo < stop:
                segments.append((source, first + max(start - lo, 0), first + min(stop, hi) - lo))
        return TokenStream(segments, self.dtype)

    def _segment(self, i: int) -> np.ndarray:
        if i in self._maps:
            self._maps.move_to_end(i)
            return self._maps[i]
        source, start, stop = self._segments[i]
        if isinstance(source, str):
            array = np.memmap(source, dtype=self.dtype, mode="r", offset=start * self.dtype.itemsize,
                              shape=(stop - start,))
        else:
            array = source[start:stop]
        self._maps[i] = array
        if len(self._maps) > MAX_OPEN_MAPS:
            self._maps.popitem(last=False)
        return array

    def __getitem__(self, index):
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step != 1:
                raise TypeError("a TokenStream slice takes no step")
            return self._read(start, max(stop, start))
        i = int(index) + (len(self) if int(index) < 0 else 0)
        if not 0 <= i < len(self):
            raise IndexError(f"token {index} is outside this stream of {len(self)} tokens")
        return self._read(i, i + 1)[0]

    def _read(self, start: int, stop: int) -> np.ndarray:
        out = np.empty(stop - start, self.dtype)
        i = int(np.searchsorted(self._bounds, start, side="right")) - 1
        filled = 0
        while filled < len(out):
            segment = self._segment(i)
            first = start + filled - int(self._bounds[i])
            n = min(len(segment) - first, len(out) - filled)
            out[filled : filled + n] = segment[first : first + n]
            filled, i = filled + n, i + 1
        return out

    def windows(self, starts, length: int) -> np.ndarray:
        """(len(starts), length) int32: row r is tokens [starts[r], starts[r] + length)."""
        starts = np.asarray(starts, np.int64)
        if len(starts) and (starts.min() < 0 or starts.max() + length > len(self)):
            raise IndexError(f"a window of {length} tokens runs outside this stream of {len(self)} tokens")
        out = np.empty((len(starts), length), np.int32)
        segment = np.searchsorted(self._bounds, starts, side="right") - 1
        inside = starts + length <= self._bounds[np.minimum(segment + 1, len(self._bounds) - 1)]
        offsets = np.arange(length)
        for i in np.unique(segment[inside]):  # rows within one shard: one gather per shard
            rows = np.flatnonzero(inside & (segment == i))
            out[rows] = self._segment(int(i))[(starts[rows] - self._bounds[i])[:, None] + offsets]
        for row in np.flatnonzero(~inside):  # rows across a shard boundary
            out[row] = self._read(int(starts[row]), int(starts[row]) + length)
        return out

    def __array__(self, dtype=None, copy=None):
        tokens = self._read(0, len(self))
        return tokens if dtype is None else tokens.astype(dtype)
