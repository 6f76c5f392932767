"""Labelled examples from JSONL or TSV files, and the label <-> id mapping.

An example is a dict of the task's fields (`TASK_FIELDS`: strings; multiple choice's "choices" a list of strings),
"label" (the raw value, or None when the file has none and none is needed) and "line" (for error messages).
No JAX in here.
"""

from __future__ import annotations

import html
import json
import math
import os
import re
from typing import Optional, Sequence

from gpt_jax.data import DataError
from gpt_jax.finetune.config import TASK_FIELDS


class FinetuneDataError(DataError):
    """A fine-tuning file that cannot be found, read or used (a ValueError: one line, exit status 2)."""


# ----------------------------------------------------------------------------------------- text clean-up

_NUMERIC_REF = re.compile(r" ?#(\d{2,5});")  # AG News's "&#39;" lost its "&" to a space: "It #39;s"
_HTML_TAG = re.compile(r"</?[A-Za-z][^<>]{0,500}>")
_BACKSLASHES = re.compile(r"\\+")


def _numeric_ref(m: re.Match) -> str:
    n = int(m.group(1))
    if 128 <= n < 160:  # Windows-1252 code points written as numbers: #151; is an em dash, #146; a quote
        try:
            return bytes([n]).decode("cp1252")
        except UnicodeDecodeError:
            return " "
    return chr(n) if n < 0x110000 else m.group(0)


def unescape(text: str) -> str:
    """AG News-style escapes: " #39;" -> "'", HTML entities and tags, "\\$" -> "$", "\\" line breaks."""
    text = text.replace("\\$", "$")
    text = _NUMERIC_REF.sub(_numeric_ref, text)
    text = html.unescape(text)
    text = re.sub(r"<br\s*/?>", "\n", text, flags=re.IGNORECASE)
    text = _HTML_TAG.sub("", text)
    text = _BACKSLASHES.sub("\n", text)
    text = re.sub(r"[ \t]+", " ", text)
    return re.sub(r" ?\n ?", "\n", text).strip()


# ----------------------------------------------------------------------------------------- readers


def file_format(path: str, fmt: str) -> str:
    if fmt in ("jsonl", "tsv"):
        return fmt
    if fmt != "auto":
        raise FinetuneDataError(f"unknown data.format {fmt!r}; use 'jsonl', 'tsv' or 'auto'")
    ext = os.path.splitext(path)[1].lower()
    if ext in (".jsonl", ".json"):
        return "jsonl"
    if ext in (".tsv", ".txt"):
        return "tsv"
    raise FinetuneDataError(f"cannot tell the format of {path} from its extension; set "
                            "--config.data.format=jsonl or tsv")


def _unquote(field: str) -> str:
    """A TSV cell written with CSV quoting ("...""..."): the whole cell is in quotes and every inner quote is
    doubled. Anything else (e.g. a sentence that starts with a quotation) is kept as it is."""
    if len(field) >= 2 and field[0] == '"' and field[-1] == '"':
        inner = field[1:-1]
        if '"' not in inner.replace('""', ""):
            return inner.replace('""', '"')
    return field


def _read_jsonl(path: str) -> list[tuple[int, dict]]:
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise FinetuneDataError(f"{path} line {n} is not JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise FinetuneDataError(f"{path} line {n} is not a JSON object")
            out.append((n, row))
    return out


def _read_tsv(path: str, header: bool, column_names: str) -> tuple[list[str], list[tuple[int, dict]]]:
    with open(path, encoding="utf-8", newline="") as f:
        lines = [(n, line.rstrip("\r\n")) for n, line in enumerate(f, 1) if line.strip()]
    if header:
        if not lines:
            raise FinetuneDataError(f"{path} is empty")
        names = [_unquote(x.strip()) for x in lines.pop(0)[1].split("\t")]
    else:
        names = [x.strip() for x in column_names.split(",") if x.strip()]
        if not names:
            raise FinetuneDataError(f"{path}: data.header=False needs the columns' names, e.g. "
                                    "--config.data.column_names=text,label")
    rows = []
    for n, line in lines:
        cells = line.split("\t")
        if len(cells) != len(names):
            raise FinetuneDataError(f"{path} line {n} has {len(cells)} tab-separated cells, but the columns "
                                    f"{names} are {len(names)}")
        rows.append((n, dict(zip(names, (_unquote(c) for c in cells)))))
    return names, rows


def _text(value, path: str, line: int, key: str, clean: bool) -> str:
    if value is None or isinstance(value, (dict, list)):
        raise FinetuneDataError(f"{path} line {line}: field {key!r} is {json.dumps(value)[:40]}, not text")
    text = str(value)
    return unescape(text) if clean else text


def read_examples(path: str, data_cfg, task: str, *, need_label: bool = True, what: str = "data.train_file"
                  ) -> list[dict]:
    """The examples of one file. `data_cfg` is the config's data group (format, header, columns, ...)."""
    if not path:
        raise FinetuneDataError(f"{what} is not set: pass --config.{what}=FILE (.jsonl or .tsv)")
    if not os.path.isfile(path):
        raise FinetuneDataError(f"{what} {path} not found")
    fields = TASK_FIELDS[task] + ("label",)
    missing = [f for f in fields if f not in data_cfg.columns]
    if missing:
        raise FinetuneDataError(f"data.columns has no entry for the {task} field {missing[0]!r} (it has "
                                f"{sorted(data_cfg.columns)}); is the config for another task?")
    columns = {f: str(data_cfg.columns[f]) for f in fields}
    fmt = file_format(path, data_cfg.format)
    multi = {}  # TSV multiple choice: choices spread over several columns
    if fmt == "jsonl":
        rows = _read_jsonl(path)
    else:
        names, rows = _read_tsv(path, bool(data_cfg.header), str(data_cfg.column_names))
        for f in fields:
            wanted = [c.strip() for c in columns[f].split(",")] if f == "choices" else [columns[f]]
            missing = [c for c in wanted if c not in names]
            if missing and (f != "label" or need_label):
                raise FinetuneDataError(f"unknown column {missing[0]!r} for the {f} field in {path}; its columns "
                                        f"are {names}: set --config.data.columns.{f}=NAME")
            if f == "choices":
                multi[f] = wanted
    clean, limit = bool(data_cfg.unescape), int(data_cfg.max_examples)
    out = []
    for line, row in rows:
        ex = {"line": line}
        for f in TASK_FIELDS[task]:
            if f in multi:
                ex[f] = [_text(row[c], path, line, c, clean) for c in multi[f] if row[c].strip()]
                continue
            if columns[f] not in row:
                raise FinetuneDataError(f"{path} line {line} has no field {columns[f]!r} (fields: "
                                        f"{sorted(row)}): set --config.data.columns.{f}=NAME")
            value = row[columns[f]]
            if f == "choices":
                if not isinstance(value, list) or not value:
                    raise FinetuneDataError(f"{path} line {line}: {columns[f]!r} must be a non-empty list "
                                            "of answers")
                ex[f] = [_text(v, path, line, columns[f], clean) for v in value]
            else:
                ex[f] = _text(value, path, line, columns[f], clean)
        if task == "multiple_choice" and not ex["choices"]:
            raise FinetuneDataError(f"{path} line {line} has no answers")
        label = row.get(columns["label"])
        if need_label and (label is None or (isinstance(label, str) and not label.strip())):
            raise FinetuneDataError(f"{path} line {line} has no label (field {columns['label']!r}): set "
                                    "--config.data.columns.label=NAME")
        ex["label"] = label.strip() if isinstance(label, str) else label
        out.append(ex)
        if limit and len(out) >= limit:
            break
    if not out:
        raise FinetuneDataError(f"{what} {path} holds no examples")
    return out


# ----------------------------------------------------------------------------------------- labels


def label_key(value) -> str:
    """The name of a label value: JSON 1 and TSV "1" are the same label."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


class LabelSpace:
    """Label value <-> id. `kind` is "classes" (names, stored in the checkpoint), "regression" (floats,
    standardized with the training mean and std) or "choice" (the index of the right answer)."""

    def __init__(self, kind: str, names: Sequence[str] = (), values: Sequence = (), mean: float = 0.0,
                 std: float = 1.0):
        self.kind, self.names, self.values = kind, list(names), list(values)
        self.mean, self.std = float(mean), float(std)
        self.index = {n: i for i, n in enumerate(self.names)}

    @property
    def n_outputs(self) -> int:
        return len(self.names) if self.kind == "classes" else 1

    @classmethod
    def from_train(cls, examples: list[dict], task: str, regression: bool, given: str = "") -> "LabelSpace":
        if task == "multiple_choice":
            return cls("choice")
        if regression:
            ys = [_float_label(ex) for ex in examples]
            mean = math.fsum(ys) / len(ys)
            std = math.sqrt(math.fsum((y - mean) ** 2 for y in ys) / len(ys)) or 1.0
            return cls("regression", mean=mean, std=std)
        first = {}  # name -> the first value seen, written back in predictions (1 stays a number)
        for ex in examples:
            first.setdefault(label_key(ex["label"]), ex["label"])
        if given:
            names = [x.strip() for x in given.split(",") if x.strip()]
            unknown = sorted(set(first) - set(names))
            if unknown:
                raise FinetuneDataError(f"the training file has labels {unknown} missing from data.labels={given!r}")
        else:
            numeric = all(re.fullmatch(r"-?\d+", n) for n in first)
            names = sorted(first, key=int if numeric else None)
        if len(names) < 2:
            raise FinetuneDataError(f"the training file has a single label {names}; classification needs two or "
                                    "more")
        return cls("classes", names, [first.get(n, n) for n in names])

    def encode(self, ex: dict, path: str):
        """The training target of a labelled example: class id, standardized float, or answer index."""
        if self.kind == "regression":
            return (_float_label(ex, path) - self.mean) / self.std
        if self.kind == "choice":
            try:
                idx = int(label_key(ex["label"]))
            except ValueError:
                raise FinetuneDataError(f"{path} line {ex['line']}: label {ex['label']!r} is not the index of an "
                                        "answer") from None
            if not 0 <= idx < len(ex["choices"]):
                raise FinetuneDataError(f"{path} line {ex['line']}: label {idx} is not an answer index "
                                        f"(0..{len(ex['choices']) - 1})")
            return idx
        name = label_key(ex["label"])
        if name not in self.index:
            raise FinetuneDataError(f"{path} line {ex['line']}: label {name!r} was not seen in training (labels: "
                                    f"{self.names})")
        return self.index[name]

    def to_meta(self) -> dict:
        return {"kind": self.kind, "names": self.names, "values": self.values, "mean": self.mean, "std": self.std}

    @classmethod
    def from_meta(cls, meta: dict) -> "LabelSpace":
        return cls(meta["kind"], meta["names"], meta["values"], meta["mean"], meta["std"])


def _float_label(ex: dict, path: Optional[str] = None) -> float:
    try:
        y = float(ex["label"])
    except (TypeError, ValueError):
        where = f"{path} line {ex['line']}" if path else f"line {ex['line']}"
        raise FinetuneDataError(f"{where}: label {ex['label']!r} is not a number (regression=True)") from None
    if not math.isfinite(y):
        raise FinetuneDataError(f"line {ex['line']}: label {ex['label']!r} is not finite")
    return y
