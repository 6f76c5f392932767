"""Reading a model folder's weight files into numpy, without torch.

A folder in the Hugging Face layout holds `model.safetensors` (or `pytorch_model.bin` where safetensors is absent;
sharded `*.index.json` forms too). Safetensors files are memory-mapped with numpy. `.bin` files are torch pickles
(a zip archive, or the older single-stream format), read by a restricted unpickler that rebuilds tensors as numpy
arrays and accepts nothing else. Every tensor is returned lazily (`LazyTensor`): its shape is known at once, its
data is read on `get()`.
"""

from __future__ import annotations

import collections
import json
import os
import pickle
import struct
import zipfile
from typing import Any, Callable, Optional

import numpy as np

from gpt_jax.pretrained.errors import PretrainedError

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")  # in order of preference


class LazyTensor:
    """A tensor not read yet: `get()` -> float32 numpy array (bf16 widened)."""

    def __init__(self, shape: tuple, read: Callable[[], np.ndarray]):
        self.shape, self._read = tuple(int(s) for s in shape), read

    def get(self) -> np.ndarray:
        return self._read()


def find_weight_files(folder: str, quiet: bool = False) -> list[str]:
    """The weight files of `folder`, preferring safetensors; [] (quiet) or an error when there are none."""
    for name in WEIGHT_FILES:
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            continue
        if not name.endswith(".index.json"):
            return [path]
        try:
            with open(path) as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))
        except (OSError, ValueError, KeyError, AttributeError) as e:
            raise PretrainedError(f"{path} is not a weight index (a JSON 'weight_map'): {e}") from None
        files = [os.path.join(folder, s) for s in shards]
        missing = [f for f in files if not os.path.isfile(f)]
        if missing:
            raise PretrainedError(f"{path} lists {os.path.basename(missing[0])}, which is not in {folder}")
        return files
    if quiet:
        return []
    raise PretrainedError(f"{folder} has no model.safetensors or pytorch_model.bin (TensorFlow / Flax weights are "
                          "not read); save the model with save_pretrained or download its safetensors file")


def read_tensors(files: list[str]) -> dict[str, LazyTensor]:
    """All tensors of the weight files `files` (safetensors or torch pickles), by name."""
    tensors: dict[str, LazyTensor] = {}
    for path in files:
        tensors.update(read_safetensors(path) if path.endswith(".safetensors") else read_torch_pickle(path))
    return tensors


def _bf16_to_f32(u16: np.ndarray) -> np.ndarray:
    return (u16.astype(np.uint32) << 16).view(np.float32)


# ----------------------------------------------------------------------------------------- safetensors


_SAFETENSORS_DTYPES = {"F64": "f8", "F32": "f4", "F16": "f2", "BF16": "bf16", "I64": "i8", "I32": "i4",
                       "I16": "i2", "I8": "i1", "U8": "u1", "BOOL": "?"}


def read_safetensors(path: str) -> dict[str, LazyTensor]:
    """Tensors of a .safetensors file (an 8-byte header size, a JSON header, then the raw little-endian data)."""
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        size = os.path.getsize(path)
    except (OSError, ValueError, struct.error) as e:
        raise PretrainedError(f"{path} is not a safetensors file ({type(e).__name__}: {e})") from None
    if not isinstance(header, dict):
        raise PretrainedError(f"{path} is not a safetensors file (its header is not a JSON object)")
    header.pop("__metadata__", None)
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n) if size > 8 + n else np.zeros(0, np.uint8)
    out = {}
    for name, info in header.items():
        try:
            dt, shape, (start, end) = info["dtype"], [int(s) for s in info["shape"]], info["data_offsets"]
        except (TypeError, KeyError, ValueError):
            raise PretrainedError(f"{path} has a malformed header entry for {name!r}") from None
        if dt not in _SAFETENSORS_DTYPES:
            raise PretrainedError(f"tensor {name!r} in {path} has dtype {dt}, which cannot be imported")
        itemsize = 2 if dt == "BF16" else np.dtype(_SAFETENSORS_DTYPES[dt]).itemsize
        if not (0 <= start <= end <= len(data) and end - start == itemsize * int(np.prod(shape))):
            raise PretrainedError(f"tensor {name!r} in {path} has data offsets that do not fit its shape; the file "
                                  "is damaged or truncated")

        def read(dt=_SAFETENSORS_DTYPES[dt], shape=tuple(shape), start=start, end=end):
            raw = data[start:end]
            if dt == "bf16":
                return _bf16_to_f32(raw.view("<u2")).reshape(shape)
            return raw.view("<" + dt if dt not in ("i1", "u1", "?") else dt).reshape(shape).astype(np.float32)

        out[name] = LazyTensor(shape, read)
    return out


# ----------------------------------------------------------------------------------------- torch pickles


_TORCH_STORAGES = {"FloatStorage": "f4", "DoubleStorage": "f8", "HalfStorage": "f2", "BFloat16Storage": "bf16",
                   "LongStorage": "i8", "IntStorage": "i4", "ShortStorage": "i2", "CharStorage": "i1",
                   "ByteStorage": "u1", "BoolStorage": "?"}


class _StorageType:
    def __init__(self, name: str):
        self.dtype = _TORCH_STORAGES[name]
        self.itemsize = 2 if self.dtype == "bf16" else np.dtype(self.dtype).itemsize


class _Storage:
    """A torch storage: a flat array read on first use by `load(storage) -> uint8 buffer`."""

    def __init__(self, stype: _StorageType, numel: int, big_endian: bool):
        self.stype, self.numel, self.big_endian = stype, int(numel), big_endian
        self.load: Optional[Callable[[], Any]] = None
        self._array = None

    def array(self) -> np.ndarray:
        if self._array is None:
            raw = np.frombuffer(self.load(), np.uint8)
            if raw.size != self.numel * self.stype.itemsize:
                raise PretrainedError(f"a storage holds {raw.size} bytes, not the {self.numel} elements it declares")
            order = ">" if self.big_endian else "<"
            dt = "u2" if self.stype.dtype == "bf16" else self.stype.dtype
            self._array = raw.view(np.dtype(dt).newbyteorder(order) if np.dtype(dt).itemsize > 1 else dt)
        return self._array


class _StorageView:  # a slice of another storage (the pre-zip format could pickle those)
    def __init__(self, base: _Storage, offset: int, size: int):
        self.base, self.offset, self.size, self.stype = base, offset, size, base.stype

    def array(self) -> np.ndarray:
        if not 0 <= self.offset <= self.offset + self.size <= self.base.numel:
            raise PretrainedError("a storage view reaches past the end of its storage")
        return self.base.array()[self.offset: self.offset + self.size]


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored) -> LazyTensor:
    def read():
        flat = storage.array()
        item = flat.itemsize
        arr = np.lib.stride_tricks.as_strided(flat[storage_offset:], shape=tuple(size),
                                              strides=tuple(s * item for s in stride))
        arr = _bf16_to_f32(np.ascontiguousarray(arr)) if storage.stype.dtype == "bf16" else arr
        return np.array(arr, dtype=np.float32)

    size, stride = tuple(int(n) for n in size), tuple(int(s) for s in stride)
    if len(size) != len(stride) or min(size + stride + (storage_offset,), default=0) < 0 or (
            all(size) and storage_offset + sum((n - 1) * s for n, s in zip(size, stride)) >= _numel(storage)):
        raise pickle.UnpicklingError("a tensor reaches past the end of its storage")
    return LazyTensor(tuple(size), read)


def _numel(storage) -> int:
    return storage.size if isinstance(storage, _StorageView) else storage.numel


class _TorchUnpickler(pickle.Unpickler):
    """Rebuilds a torch-saved state dict as `LazyTensor` tensors; refuses every other object (no code runs)."""

    def __init__(self, f, persistent_load: Optional[Callable] = None):
        super().__init__(f)
        self._persistent = persistent_load

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if module == "torch._utils" and name in ("_rebuild_parameter", "_rebuild_parameter_with_state"):
            return lambda data, *_: data
        if module == "torch" and name in _TORCH_STORAGES:
            return _StorageType(name)
        raise pickle.UnpicklingError(f"it holds a {module}.{name} object, which is not part of a plain state dict")

    def persistent_load(self, pid):
        if self._persistent is None:
            raise pickle.UnpicklingError("unexpected persistent id")
        return self._persistent(pid)


_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def read_torch_pickle(path: str) -> dict[str, LazyTensor]:
    """Tensors of a `torch.save`d state dict (`pytorch_model.bin`), without torch."""
    try:
        if zipfile.is_zipfile(path):
            return _read_torch_zip(path)
        return _read_torch_legacy(path)
    except PretrainedError:
        raise
    except Exception as e:
        raise PretrainedError(f"cannot read {path} as a PyTorch state dict ({type(e).__name__}: {e}); convert it "
                              "to model.safetensors") from None


def _state_dict(obj, path: str) -> dict[str, LazyTensor]:
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, LazyTensor) for v in obj.values()):
        raise PretrainedError(f"{path} does not hold a state dict of tensors")
    return dict(obj)


def _read_torch_zip(path: str) -> dict[str, LazyTensor]:
    zf = zipfile.ZipFile(path)
    names = zf.namelist()
    pkl = next((n for n in names if n.endswith("data.pkl")), None)
    if pkl is None:
        raise PretrainedError(f"{path} is a zip file without data.pkl, not a torch.save archive")
    prefix = pkl[: -len("data.pkl")]
    big = prefix + "byteorder" in names and zf.read(prefix + "byteorder").strip() == b"big"
    storages: dict[str, _Storage] = {}

    def persistent_load(pid):
        kind, stype, key, _location, numel = pid[:5]
        if kind != "storage" or not isinstance(stype, _StorageType):
            raise pickle.UnpicklingError(f"unknown persistent id {pid[:1]}")
        if key not in storages:
            st = _Storage(stype, numel, big)
            st.load = lambda key=key: zf.read(f"{prefix}data/{key}")
            storages[key] = st
        return storages[key]

    with zf.open(pkl) as f:
        obj = _TorchUnpickler(f, persistent_load).load()
    return _state_dict(obj, path)


def _read_torch_legacy(path: str) -> dict[str, LazyTensor]:
    """torch.save's format before the zip archive (torch < 1.6): pickles of a magic number, the protocol version,
    system info, the object, its storage keys, then each storage as an int64 element count and its raw data."""
    storages: dict[str, _Storage] = {}
    views: dict[str, _StorageView] = {}
    with open(path, "rb") as f:
        magic = _TorchUnpickler(f).load()
        if magic != _LEGACY_MAGIC:
            raise PretrainedError(f"{path} is neither a zip archive nor a legacy torch.save file")
        _TorchUnpickler(f).load()  # protocol version
        info = _TorchUnpickler(f).load()
        big = not info.get("little_endian", True)

        def persistent_load(pid):
            kind, stype, root_key, _location, numel = pid[:5]
            view = pid[5] if len(pid) > 5 else None
            if kind != "storage" or not isinstance(stype, _StorageType):
                raise pickle.UnpicklingError(f"unknown persistent id {pid[:1]}")
            if root_key not in storages:
                storages[root_key] = _Storage(stype, numel, big)
            if view is None:
                return storages[root_key]
            view_key, offset, size = view
            views.setdefault(view_key, _StorageView(storages[root_key], offset, size))
            return views[view_key]

        obj = _TorchUnpickler(f, persistent_load).load()
        keys = _TorchUnpickler(f).load()
        offset = f.tell()
    size = os.path.getsize(path)
    for key in keys:  # each: int64 element count, then the data
        st = storages[key]
        with open(path, "rb") as f:
            f.seek(offset)
            (count,) = struct.unpack(">q" if big else "<q", f.read(8))
        nbytes = count * st.stype.itemsize
        if count != st.numel or offset + 8 + nbytes > size:
            raise PretrainedError(f"{path} is truncated")
        st.load = lambda start=offset + 8, n=nbytes: np.memmap(path, np.uint8, mode="r", offset=start, shape=(n,))
        offset += 8 + nbytes
    return _state_dict(obj, path)
