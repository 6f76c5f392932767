"""Small helpers every module may use: atomic file writes, integer rounding, and the masking constant."""

from __future__ import annotations

import json
import os
from typing import Callable, IO

NEG_INF = -1e30  # masked logits / scores: large negative, not -inf, so a fully masked row never turns into NaN


def atomic_write(path: str, write: Callable[[IO], None], binary: bool = False) -> None:
    """Writes `path` through `write(file)` into a temporary file beside it, then renames it into place: readers see
    the old file or the whole new one, never a partial one. The temporary is removed if `write` fails."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
            write(f)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(path: str, obj) -> None:
    """`obj` as indented JSON at `path`, atomically."""
    atomic_write(path, lambda f: json.dump(obj, f, indent=1, default=str))


def ceil_div(n: int, d: int) -> int:
    """ceil(n / d) for integers."""
    return -(-n // d)


def round_up(n: int, multiple: int) -> int:
    """The smallest multiple of `multiple` that is >= n."""
    return ceil_div(n, multiple) * multiple
