"""A corpus, streamed: `config.data.dataset` -> documents, read in bounded pieces that know where reading resumes.

`config.data.dataset` takes
  - "shakespeare" (or ""): the embedded tiny shakespeare corpus shipped inside the package;
  - a file: `*.jsonl` or `*.jsonl.gz` (one JSON object per line, the text under `config.data.text_field`),
    `*.parquet` (the text in the column `text_field`); any other file is UTF-8 text;
  - a folder: every `*.txt`, `*.jsonl`, `*.jsonl.gz` and `*.parquet` file under it, in sorted path order;
  - "hf:NAME" or "hf:NAME:CONFIG": the train split of a Hugging Face dataset, streamed with `datasets`.

Documents: a JSON line, a parquet row or a dataset row is one document. A text file is one document, split
further at each literal end-of-text marker when the caller passes one (GPT-2's "<|endoftext|>", the separator
of GPT-2's own training dumps).

Pieces: a long document is handed on in pieces of about PIECE_BYTES, cut only just before an ASCII newline,
space, tab or carriage return that follows a printable ASCII character. GPT-2's pre-tokenizer always splits
there: no token runs from a visible character into the whitespace after it, and its pattern (no lookbehind)
matches from the cut on whatever came before. So encoding the pieces one by one gives exactly the ids of
encoding the whole text.

Each piece carries a cursor `[file index, position, documents read]` (position: a byte offset for text and
JSONL files, uncompressed for .gz; a row for parquet and hf:) from which `Corpus.pieces` continues after it,
or None inside a document that can only be re-read from its start.
"""

from __future__ import annotations

import dataclasses
import glob
import gzip
import hashlib
import json
import os
import zlib
from typing import Iterator, Optional

EMBEDDED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tinyshakespeare.txt")
PIECE_BYTES = 1 << 20  # text handed on at a time (about), so no document is ever tokenized whole
CUT_BEFORE = ("\n", " ", "\t", "\r")  # the whitespace a piece may be cut before
PARQUET_BATCH_ROWS = 1024  # rows decoded at a time from a parquet row group
SUFFIX_FORMATS = ((".jsonl.gz", "jsonl"), (".jsonl", "jsonl"), (".parquet", "parquet"), (".txt", "text"))


class DataError(ValueError):
    """A dataset that cannot be found, read or used."""


@dataclasses.dataclass
class Piece:
    text: str
    new_document: bool  # the first piece of a document
    cursor: Optional[list]  # where reading resumes after this piece; None: not a resumable point
    nbytes: int  # source bytes read for this piece (progress)


# (text, new document, position after it or None, bytes read): what each format's reader yields
RawPiece = tuple[str, bool, Optional[int], int]


def file_format(path: str) -> str:
    """"jsonl", "parquet" or "text", from the file name."""
    return next((kind for suffix, kind in SUFFIX_FORMATS if path.endswith(suffix)), "text")


def local_files(dataset: str) -> list[str]:
    """The files of a local dataset, in reading order."""
    if dataset in ("", "shakespeare"):
        return [EMBEDDED]
    path = os.path.abspath(os.path.expanduser(dataset))
    if os.path.isfile(path):
        return [path]
    if os.path.isdir(path):
        files = sorted(f for f in glob.glob(os.path.join(path, "**", "*"), recursive=True)
                       if os.path.isfile(f) and any(f.endswith(suffix) for suffix, _ in SUFFIX_FORMATS))
        if not files:
            raise DataError(f"dataset folder {dataset} holds no *.txt, *.jsonl, *.jsonl.gz or *.parquet files; "
                            "put the corpus files in it")
        return files
    raise DataError(f"dataset {dataset!r} not found: pass an existing file or folder with "
                    "--config.data.dataset=PATH, 'shakespeare' for the embedded corpus, or hf:NAME")


class Corpus:
    """The documents of `dataset`, streamed in pieces; at most `max_documents` of them (0 = all)."""

    def __init__(self, dataset: str, text_field: str = "text", max_documents: int = 0):
        self.dataset, self.text_field, self.max_documents = dataset, text_field, int(max_documents)
        self.hf = dataset.startswith("hf:")
        self.sources = [dataset[3:]] if self.hf else local_files(dataset)

    def fingerprint(self) -> str:
        """Changes when a file of the corpus is added, removed, resized or rewritten (its mtime)."""
        h = hashlib.sha256()
        for source in self.sources:
            st = None if self.hf else os.stat(source)
            h.update(f"{source}\0{st and st.st_size}\0{st and st.st_mtime_ns}\0".encode())
        return h.hexdigest()

    def total_bytes(self) -> Optional[int]:
        """Bytes `pieces` reads in all, when known up front (plain text and JSONL files)."""
        if self.hf or any(file_format(f) == "parquet" or f.endswith(".gz") for f in self.sources):
            return None
        return sum(os.path.getsize(f) for f in self.sources)

    def pieces(self, cursor: Optional[list] = None, separator: Optional[str] = None) -> Iterator[Piece]:
        """Pieces from `cursor` on (the start when None); `separator` in a text file starts a new document."""
        start_source, start_position, documents = cursor or (0, 0, 0)
        for index in range(start_source, len(self.sources)):
            position = start_position if index == start_source else 0
            for text, new_document, end, nbytes in self._read(index, position, separator):
                if new_document:
                    if self.max_documents and documents >= self.max_documents:
                        return
                    documents += 1
                yield Piece(text, new_document, None if end is None else [index, end, documents], nbytes)

    def _read(self, index: int, position: int, separator: Optional[str]) -> Iterator[RawPiece]:
        source = self.sources[index]
        if self.hf:
            return hf_pieces(source, position, self.text_field)
        kind = file_format(source)
        if kind == "jsonl":
            return jsonl_pieces(source, position, self.text_field)
        if kind == "parquet":
            return parquet_pieces(source, position, self.text_field)
        return text_pieces(source, position, separator)


# ----------------------------------------------------------------------------------------- cutting


def safe_cut(data, lowest: int, highest: int) -> int:
    """The largest i in [max(lowest, 1), highest) where data[i] is an ASCII newline, space, tab or carriage return
    after a printable ASCII character (data: a str, bytes or bytearray), or 0 when there is none: cutting
    data[:i] | data[i:] there leaves GPT-2's pre-tokenization, hence its ids, unchanged."""
    best = 0
    for space in CUT_BEFORE:
        space = space if isinstance(data, str) else space.encode()
        i = data.rfind(space, max(lowest, best + 1, 1), highest)
        while i > 0 and not 0x21 <= ord(data[i - 1 : i]) <= 0x7E:
            i = data.rfind(space, max(lowest, best + 1, 1), i)
        best = max(best, i)
    return best


def document_pieces(text: str, end: int, nbytes: int) -> Iterator[RawPiece]:
    """One document in pieces of about PIECE_BYTES characters; only the last one is a resumable point."""
    start = 0
    while len(text) - start > PIECE_BYTES:
        cut = safe_cut(text, start + 1, start + PIECE_BYTES)
        if not cut:
            break  # no cut point in reach: the rest goes as one piece
        yield text[start:cut], start == 0, None, 0
        start = cut
    yield text[start:], start == 0, end, nbytes


# ----------------------------------------------------------------------------------------- readers


def text_pieces(path: str, start: int, separator: Optional[str]) -> Iterator[RawPiece]:
    """A UTF-8 text file from byte `start`: one document, or several split at `separator`."""
    with open(path, "rb") as f:
        f.seek(start)
        pending, position, first = bytearray(), start, start == 0
        while True:
            block = f.read(PIECE_BYTES)
            searched = len(pending)
            pending += block
            cut = safe_cut(pending, searched - 1, len(pending)) if block else len(pending)
            if block and not cut:
                continue  # no cut point yet: read on
            if cut or first:
                text = _decode(pending[:cut], path, position)
                parts = text.split(separator) if separator else [text]
                for i, part in enumerate(parts):
                    last = i == len(parts) - 1
                    yield part, first or i > 0, position + cut if last else None, cut if last else 0
            del pending[:cut]
            position, first = position + cut, False
            if not block:
                return


def _decode(data: bytearray, path: str, offset: int) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text (byte {offset + e.start}); convert it or leave it out "
                        "of the dataset") from None


def jsonl_pieces(path: str, start: int, field: str) -> Iterator[RawPiece]:
    """JSON lines (gzipped when the name ends in .gz) from byte `start`: each line's `field` is a document."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            f.seek(start)  # a gzip file decompresses up to there
            position = start
            for line in f:
                offset, position = position, position + len(line)
                if line.strip():
                    yield from document_pieces(_json_text(line, field, path, offset), position, len(line))
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"cannot read {path} ({type(e).__name__}: {e}); check the file") from None


def _json_text(line: bytes, field: str, path: str, offset: int) -> str:
    try:
        row = json.loads(line)
    except ValueError:
        raise DataError(f"{path}: the line at byte {offset} is not JSON; JSONL files hold one JSON object "
                        "per line") from None
    text = row.get(field) if isinstance(row, dict) else None
    if not isinstance(text, str):
        raise DataError(f"{path}: the line at byte {offset} has no text field {field!r}; name the field that "
                        "holds the text with --config.data.text_field=NAME")
    return text


def parquet_pieces(path: str, start_row: int, field: str) -> Iterator[RawPiece]:
    """A parquet file's `field` column from row `start_row`: each row is a document."""
    import pyarrow
    import pyarrow.parquet as pq  # heavy and optional: only parquet corpora need it

    try:
        parquet = pq.ParquetFile(path)
    except (OSError, pyarrow.ArrowException) as e:
        raise DataError(f"cannot read {path} as parquet ({type(e).__name__}: {e}); check the file") from None
    if field not in parquet.schema_arrow.names:
        raise DataError(f"{path} has no column {field!r} (it has {', '.join(parquet.schema_arrow.names)}); name "
                        "the text column with --config.data.text_field=NAME")
    row = 0
    for group in range(parquet.num_row_groups):
        rows = parquet.metadata.row_group(group).num_rows
        if row + rows <= start_row:
            row += rows
            continue
        for batch in parquet.iter_batches(PARQUET_BATCH_ROWS, row_groups=[group], columns=[field]):
            for text in batch.column(0).to_pylist():
                row += 1
                if row > start_row:
                    yield from document_pieces(_row_text(text, path, row - 1, field), row, _utf8_len(text))


def hf_pieces(spec: str, start_row: int, field: str) -> Iterator[RawPiece]:
    """The train split of Hugging Face dataset "NAME[:CONFIG]", streamed (online; `pip install datasets`)."""
    name, _, config = spec.partition(":")
    try:
        import datasets  # heavy and optional: only hf: corpora need it
    except ImportError:
        raise DataError("hf: datasets need the `datasets` package: pip install datasets") from None
    try:
        rows = datasets.load_dataset(name, config or None, split="train", streaming=True)
    except Exception as e:  # network, unknown name, ...
        raise DataError(f"could not open Hugging Face dataset {name!r} ({type(e).__name__}: {e}); offline, "
                        "save the text to a file and pass --config.data.dataset=PATH") from None
    if start_row:
        rows = rows.skip(start_row)
    for row, item in enumerate(rows, start_row + 1):
        text = _row_text(item.get(field), f"hf:{spec}", row - 1, field)
        yield from document_pieces(text, row, _utf8_len(text))


def _row_text(text, where: str, row: int, field: str) -> str:
    if not isinstance(text, str):
        raise DataError(f"{where}: row {row} has no text in {field!r}; name the field that holds the text with "
                        "--config.data.text_field=NAME")
    return text


def _utf8_len(text) -> int:
    return len(text.encode("utf-8")) if isinstance(text, str) else 0
