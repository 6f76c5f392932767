"""Released weights: the GPT-2 family and GPT-1 (openai-gpt), from the Hugging Face hub or a local HF folder.

    model, params = load("gpt2")                                   # hub (cached by huggingface_hub)
    model, params, tokenizer = load("/path/to/hf_dir", with_tokenizer=True)

A folder in the Hugging Face layout holds `config.json` plus `model.safetensors` (or `pytorch_model.bin` where
safetensors is absent; sharded `*.index.json` forms too). Reading weights needs no torch: safetensors files are
memory-mapped with numpy, and `.bin` files (torch pickles: a zip archive, or the older single-stream format)
are read by a restricted unpickler that rebuilds tensors as numpy arrays and accepts nothing else.

Weight names: HF's Conv1D stores (in, out), our Dense kernels (out, in) (`gpt_jax.model.Dense`), so those are
transposed once here; the embedding table and an untied `lm_head` (HF's Linear, already (out, in)) get zero rows
up to `padded_vocab`.
"""

from __future__ import annotations

import collections
import json
import os
import pickle
import re
import struct
import zipfile
from typing import Any, Callable, Optional

import numpy as np

from gpt_jax.config import ModelConfig

HUB_MODELS = {  # init_from name -> hub repository
    "gpt2": "openai-community/gpt2",  # 124M
    "gpt2-medium": "openai-community/gpt2-medium",  # 350M
    "gpt2-large": "openai-community/gpt2-large",  # 774M
    "gpt2-xl": "openai-community/gpt2-xl",  # 1558M
    "openai-gpt": "openai-community/openai-gpt",  # GPT-1, 117M
}

CONFIG_FILE = "config.json"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")  # in order of preference
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json",
                   "special_tokens_map.json")

# Hugging Face activation names -> ModelConfig.activation. GPT-2 reads `activation_function` through
# transformers' ACT2FN ("gelu" there is the exact erf GELU); openai-gpt reads `afn` through its own table, in which
# "gelu" is `gelu_new`, the tanh approximation (as in OpenAI's GPT-1 code).
GPT2_ACTIVATIONS = {"gelu": "gelu", "gelu_python": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
                    "gelu_python_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh", "gelu_accurate": "gelu_tanh"}
OPENAI_GPT_ACTIVATIONS = {"gelu": "gelu_tanh"}


class PretrainedError(ValueError):
    """A model name, folder, config or weight file that cannot be imported."""


# ----------------------------------------------------------------------------------------- locating


def resolve(name_or_path: str) -> str:
    """A local folder holding the model: `name_or_path` itself, or the hub download of a known name."""
    if not name_or_path:
        raise PretrainedError("no model given: pass a name (" + ", ".join(HUB_MODELS) + ") or a local folder")
    path = os.path.abspath(os.path.expanduser(name_or_path))
    if os.path.isdir(path) and (name_or_path not in HUB_MODELS or os.path.isfile(os.path.join(path, CONFIG_FILE))):
        return path  # a folder named like a hub model (e.g. ./gpt2) wins only when it holds a model
    if os.path.exists(path):
        raise PretrainedError(f"{name_or_path} is a file; pass the folder that holds config.json and the weights")
    repo = HUB_MODELS.get(name_or_path) or (name_or_path if name_or_path in HUB_MODELS.values() else None)
    if repo is None:
        raise PretrainedError(f"{name_or_path!r} is neither a known model ({', '.join(HUB_MODELS)}) nor an existing "
                              "folder; pass a local folder with config.json and model.safetensors")
    return download(repo)


def download(repo: str) -> str:
    """Snapshot of the files we need from hub repository `repo` (huggingface_hub's cache; nothing else)."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise PretrainedError(f"downloading {repo} needs huggingface_hub (pip install huggingface_hub); or pass a "
                              "local folder with config.json and model.safetensors") from None
    tokenizer = list(TOKENIZER_FILES) if "openai-gpt" in repo else []  # GPT-2's is built offline (tiktoken)
    wanted = [CONFIG_FILE, "model.safetensors", "model.safetensors.index.json", "model-*-of-*.safetensors"]
    try:
        folder = snapshot_download(repo, allow_patterns=wanted + tokenizer)
        if not _weight_files(folder, quiet=True):  # no safetensors in the repository: its torch pickles
            folder = snapshot_download(repo, allow_patterns=["pytorch_model.bin", "pytorch_model.bin.index.json",
                                                             "pytorch_model-*-of-*.bin"])
    except Exception as e:  # offline, no network, unknown repository, interrupted download, ...
        from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

        if isinstance(e, (LocalEntryNotFoundError, OfflineModeIsEnabled)):
            why = "offline or unreachable, and not in the local cache"
        else:
            why = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        raise PretrainedError(
            f"cannot download {repo} from the Hugging Face hub ({why}); pass a local folder instead, "
            f"init_from=/path/to/folder holding config.json and model.safetensors (e.g. fetched elsewhere with "
            f"`hf download {repo} --local-dir FOLDER`)") from None
    return folder


def _weight_files(folder: str, quiet: bool = False) -> list[str]:
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


# ----------------------------------------------------------------------------------------- config


def read_hf_config(folder: str) -> dict:
    path = os.path.join(folder, CONFIG_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            hf = json.load(f)
    except FileNotFoundError:
        raise PretrainedError(f"{folder} has no config.json; a Hugging Face model folder holds config.json and "
                              "model.safetensors") from None
    except (OSError, ValueError) as e:
        raise PretrainedError(f"cannot read {path}: {e}") from None
    if not isinstance(hf, dict):
        raise PretrainedError(f"{path} is not a JSON object")
    return hf


def model_config(hf: dict) -> ModelConfig:
    """A Hugging Face `config.json` (as a dict) of a GPT-2 or openai-gpt model -> our ModelConfig."""
    kind = hf.get("model_type")
    if kind not in ("gpt2", "openai-gpt"):
        raise PretrainedError(f"config.json has model_type {kind!r}; only GPT-2 ('gpt2') and GPT-1 ('openai-gpt') "
                              "models can be imported")

    def get(*keys, default=None):
        for k in keys:
            if hf.get(k) is not None:
                return hf[k]
        if default is None:
            raise PretrainedError(f"config.json lacks {keys[0]!r}")
        return default

    d_model = int(get("n_embd"))
    if kind == "gpt2":
        for key, ok in (("add_cross_attention", False), ("scale_attn_by_inverse_layer_idx", False),
                        ("scale_attn_weights", True)):
            if bool(hf.get(key, ok)) != ok:
                raise PretrainedError(f"config.json sets {key}={hf[key]}, which this GPT does not implement")
        act_name, table, field = get("activation_function", default="gelu_new"), GPT2_ACTIVATIONS, "activation_function"
    else:
        act_name, table, field = get("afn", default="gelu"), OPENAI_GPT_ACTIVATIONS, "afn"
    if act_name not in table:
        raise PretrainedError(f"config.json's {field}={act_name!r} is an activation this GPT does not have "
                              f"(supported for {kind}: {', '.join(sorted(table))})")
    try:
        return ModelConfig(
            n_layer=int(get("n_layer")),
            n_head=int(get("n_head")),
            d_model=d_model,
            d_ff=int(get("n_inner", default=4 * d_model)),
            block_size=int(get("n_positions", "n_ctx")),
            vocab_size=int(get("vocab_size")),
            dropout=float(get("resid_pdrop", default=0.1)),
            norm_position="pre" if kind == "gpt2" else "post",
            tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
            ln_eps=float(get("layer_norm_epsilon", default=1e-5)),
            activation=table[act_name],
        )
    except (TypeError, ValueError) as e:
        raise PretrainedError(f"config.json does not describe a usable model: {e}") from None


# ----------------------------------------------------------------------------------------- tensor files


def _bf16_to_f32(u16: np.ndarray) -> np.ndarray:
    return (u16.astype(np.uint32) << 16).view(np.float32)


class _Lazy:
    """A tensor not read yet: `get()` -> float32 numpy array (bf16 widened)."""

    def __init__(self, shape: tuple, read: Callable[[], np.ndarray]):
        self.shape, self._read = tuple(int(s) for s in shape), read

    def get(self) -> np.ndarray:
        return self._read()


_ST_DTYPES = {"F64": "f8", "F32": "f4", "F16": "f2", "BF16": "bf16", "I64": "i8", "I32": "i4", "I16": "i2",
              "I8": "i1", "U8": "u1", "BOOL": "?"}


def read_safetensors(path: str) -> dict[str, _Lazy]:
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
        if dt not in _ST_DTYPES:
            raise PretrainedError(f"tensor {name!r} in {path} has dtype {dt}, which cannot be imported")
        itemsize = 2 if dt == "BF16" else np.dtype(_ST_DTYPES[dt]).itemsize
        if not (0 <= start <= end <= len(data) and end - start == itemsize * int(np.prod(shape))):
            raise PretrainedError(f"tensor {name!r} in {path} has data offsets that do not fit its shape; the file "
                                  "is damaged or truncated")

        def read(dt=_ST_DTYPES[dt], shape=tuple(shape), start=start, end=end):
            raw = data[start:end]
            if dt == "bf16":
                return _bf16_to_f32(raw.view("<u2")).reshape(shape)
            return raw.view("<" + dt if dt not in ("i1", "u1", "?") else dt).reshape(shape).astype(np.float32)

        out[name] = _Lazy(shape, read)
    return out


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


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored) -> _Lazy:
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
    return _Lazy(tuple(size), read)


def _numel(storage) -> int:
    return storage.size if isinstance(storage, _StorageView) else storage.numel


class _TorchUnpickler(pickle.Unpickler):
    """Rebuilds a torch-saved state dict as `_Lazy` tensors; refuses every other object (no code runs)."""

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


def read_torch_pickle(path: str) -> dict[str, _Lazy]:
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


def _state_dict(obj, path: str) -> dict[str, _Lazy]:
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, _Lazy) for v in obj.values()):
        raise PretrainedError(f"{path} does not hold a state dict of tensors")
    return dict(obj)


def _read_torch_zip(path: str) -> dict[str, _Lazy]:
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


def _read_torch_legacy(path: str) -> dict[str, _Lazy]:
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


def read_tensors(files: list[str]) -> dict[str, _Lazy]:
    tensors: dict[str, _Lazy] = {}
    for path in files:
        tensors.update(read_safetensors(path) if path.endswith(".safetensors") else read_torch_pickle(path))
    return tensors


# ----------------------------------------------------------------------------------------- conversion


def _hf_name(path: tuple[str, ...], kind: str) -> str:
    """Our parameter path -> the Hugging Face tensor name (without the optional "transformer." prefix)."""
    if path == ("wte",):
        return "wte.weight" if kind == "gpt2" else "tokens_embed.weight"
    if path == ("wpe",):
        return "wpe.weight" if kind == "gpt2" else "positions_embed.weight"
    if path[0] == "lm_head":
        return "lm_head.weight"
    leaf = {"kernel": "weight", "scale": "weight", "bias": "bias"}[path[-1]]
    head = f"h.{path[0][2:]}" if path[0].startswith("h_") else path[0]
    return ".".join((head,) + path[1:-1] + (leaf,))


def convert(tensors: dict[str, _Lazy], cfg: ModelConfig, kind: str, where: str = "the weights",
            put: Callable = np.asarray) -> dict:
    """HF tensors -> our params: the tree of `init_params(cfg)`, float32, each leaf passed through `put` (e.g.
    `jnp.asarray`) as soon as it is read. Clear errors on missing tensors, shape mismatches and extra layers,
    all checked before any data is read."""
    import jax

    from gpt_jax.model import init_params

    expected = jax.eval_shape(lambda: init_params(cfg, jax.random.PRNGKey(0)))
    names = {}  # name without "transformer." -> stored name
    for name in tensors:
        names.setdefault(name[len("transformer."):] if name.startswith("transformer.") else name, name)
    layers = [int(m.group(1)) for n in names if (m := re.match(r"h\.(\d+)\.", n))]
    if layers and max(layers) >= cfg.n_layer:
        raise PretrainedError(f"{where} hold layer h.{max(layers)}, but config.json says n_layer={cfg.n_layer}: "
                              "the config and the weights describe different models")
    summary = (f"n_layer={cfg.n_layer}, n_embd={cfg.d_model}, n_inner={cfg.d_ff}, n_positions={cfg.block_size}, "
               f"vocab_size={cfg.vocab_size}")
    V = cfg.vocab_size

    def source(path: tuple[str, ...], shape: tuple[int, ...]) -> _Lazy:
        name = _hf_name(path, kind)
        if name not in names:
            raise PretrainedError(f"{where} lack tensor {name!r} (for {'/'.join(path)}): the weights are incomplete, "
                                  f"or config.json ({summary}) describes another model")
        if path in (("wte",), ("lm_head", "kernel")):
            want = (V, shape[1])
        else:  # Conv1D kernels are stored (in, out)
            want = shape[::-1] if path[-1] == "kernel" else shape
        t = tensors[names[name]]
        if t.shape != tuple(want):
            raise PretrainedError(f"tensor {names[name]!r} has shape {t.shape}, but config.json ({summary}) needs "
                                  f"{tuple(want)}: the config and the weights describe different models")
        return t

    def order(path):  # model order: embeddings, blocks, final LayerNorm, head
        top = path[0]
        return (0, ("wte", "wpe").index(top)) if top in ("wte", "wpe") else (1, int(top[2:])) if top[:2] == "h_" \
            else (2, 0)

    leaves, treedef = jax.tree_util.tree_flatten_with_path(expected)
    paths = [tuple(k.key for k in p) for p, _ in leaves]
    for i in sorted(range(len(paths)), key=lambda i: order(paths[i])):  # check everything before reading
        source(paths[i], tuple(leaves[i][1].shape))

    def convert_one(path, shape) -> np.ndarray:
        try:
            x = source(path, shape).get()
        except Exception as e:  # a damaged file
            raise PretrainedError(f"cannot read tensor {_hf_name(path, kind)!r} of {where} ({type(e).__name__}: "
                                  f"{e})") from None
        if path in (("wte",), ("lm_head", "kernel")):
            x = np.concatenate([x, np.zeros((shape[0] - V, shape[1]), np.float32)])  # padded rows: zeros
        elif path[-1] == "kernel":
            x = np.ascontiguousarray(x.T)  # Conv1D (in, out) -> (out, in)
        return put(x)

    return jax.tree_util.tree_unflatten(treedef, [convert_one(p, tuple(s.shape)) for p, (_, s) in zip(paths, leaves)])


# ----------------------------------------------------------------------------------------- tokenizer


def _has_gpt2_vocab(folder: str) -> bool:
    """Whether the folder's tokenizer files hold exactly GPT-2's vocabulary."""
    from gpt_jax.tokenizer import gpt2_files

    try:
        if os.path.isfile(os.path.join(folder, "tokenizer.json")):
            with open(os.path.join(folder, "tokenizer.json"), encoding="utf-8") as f:
                vocab = json.load(f).get("model", {}).get("vocab")
        else:
            with open(os.path.join(folder, "vocab.json"), encoding="utf-8") as f:
                vocab = json.load(f)
        with open(gpt2_files()[1], encoding="utf-8") as f:
            return vocab == json.load(f)
    except (OSError, ValueError, AttributeError):
        return False


def load_tokenizer(folder: str, hf: dict, cfg: ModelConfig):
    """The tokenizer for the model in `folder`: GPT-2's own (tiktoken) for GPT-2 models with its vocabulary, the
    folder's tokenizer files otherwise; None when there is none."""
    from gpt_jax import tokenizer as tok_lib

    has_files = os.path.isfile(os.path.join(folder, "tokenizer.json")) or all(
        os.path.isfile(os.path.join(folder, f)) for f in ("vocab.json", "merges.txt"))
    gpt2_like = hf.get("model_type") == "gpt2" and cfg.vocab_size == tok_lib.GPT2Tokenizer.vocab_size
    if gpt2_like and (not has_files or _has_gpt2_vocab(folder)):
        return tok_lib.GPT2Tokenizer()
    if not has_files:
        return None
    tok = tok_lib.HFTokenizer(folder)
    if tok.vocab_size > cfg.vocab_size:
        raise PretrainedError(f"the tokenizer in {folder} has {tok.vocab_size} tokens, more than the model's "
                              f"vocab_size={cfg.vocab_size}: they do not belong together")
    eot = _eos_token(folder)
    if eot is None and isinstance(hf.get("eos_token_id"), int):
        eot = tok.tok.id_to_token(hf["eos_token_id"])
    if eot is not None and tok.tok.token_to_id(eot) is not None:
        tok = tok_lib.HFTokenizer(folder, eot)
    return tok


def _eos_token(folder: str) -> Optional[str]:
    """tokenizer_config.json's eos_token, if any."""
    try:
        with open(os.path.join(folder, "tokenizer_config.json"), encoding="utf-8") as f:
            eos = json.load(f).get("eos_token")
    except (OSError, ValueError, AttributeError):
        return None
    if isinstance(eos, dict):
        eos = eos.get("content")
    return str(eos) if eos else None


# ----------------------------------------------------------------------------------------- entry point


def load(name_or_path: str, with_tokenizer: bool = False):
    """`(model, params)`, or `(model, params, tokenizer)` with `with_tokenizer=True`, for a known name (gpt2,
    gpt2-medium, gpt2-large, gpt2-xl, openai-gpt; downloaded once into huggingface_hub's cache) or a local Hugging
    Face folder. `model` is a `gpt_jax.model.GPT` (`model.cfg` its ModelConfig); params are float32 and
    `model.apply({"params": params}, ids)` gives logits (B, T, vocab_size). The tokenizer is a
    `gpt_jax.tokenizer.Tokenizer`, or None when the folder has no tokenizer this project can read."""
    import jax

    from gpt_jax.model import GPT

    folder = resolve(name_or_path)
    hf = read_hf_config(folder)
    cfg = model_config(hf)
    files = _weight_files(folder)
    where = ", ".join(os.path.basename(f) for f in files)
    params = convert(read_tensors(files), cfg, hf["model_type"], where=f"the weights in {folder} ({where})",
                     put=jax.numpy.asarray)
    model = GPT(cfg)
    if not with_tokenizer:
        return model, params
    return model, params, load_tokenizer(folder, hf, cfg)
