"""Hugging Face GPT-2 / openai-gpt tensors -> our parameter tree.

Weight names: HF's Conv1D stores (in, out), our Dense kernels (out, in) (`gpt_jax.model.Dense`), so those are
transposed once here; the embedding table and an untied `lm_head` (HF's Linear, already (out, in)) get zero rows
up to `padded_vocab`. HF's layers h.0 ... h.{L-1} are stacked into our scanned blocks' parameters `h`, whose
leaves have a leading layer axis (gpt_jax/model.py).
"""

from __future__ import annotations

import re
from typing import Callable

import jax
import numpy as np

from gpt_jax.config import ModelConfig
from gpt_jax.model import init_params
from gpt_jax.pretrained.errors import PretrainedError
from gpt_jax.pretrained.weight_files import LazyTensor

VOCAB_ROWS = (("wte",), ("lm_head", "kernel"))  # our parameters with one row per token, padded to padded_vocab


def convert(tensors: dict[str, LazyTensor], cfg: ModelConfig, kind: str, where: str = "the weights",
            put: Callable = np.asarray) -> dict:
    """HF tensors -> our params: the tree of `init_params(cfg)`, float32, each leaf passed through `put` (e.g.
    `jnp.asarray`) as soon as it is read. Clear errors on missing tensors, shape mismatches and extra layers,
    all checked before any data is read."""
    source = _HFTensors(tensors, cfg, kind, where)
    expected = jax.eval_shape(lambda: init_params(cfg, jax.random.PRNGKey(0)))
    leaves, treedef = jax.tree_util.tree_flatten_with_path(expected)
    params = [(tuple(k.key for k in path), tuple(leaf.shape)) for path, leaf in leaves]
    per_layer = [one for path, shape in params for one in _per_layer(path, shape)]
    for path, shape in sorted(per_layer, key=lambda param: _model_order(param[0])):  # check all before reading
        source.find(path, shape)

    def read(path, shape):
        parts = [source.read(p, s) for p, s in _per_layer(path, shape)]
        return np.stack(parts) if path[0] == "h" else parts[0]

    return jax.tree_util.tree_unflatten(treedef, [put(read(path, shape)) for path, shape in params])


def _per_layer(path: tuple[str, ...], shape: tuple[int, ...]) -> list[tuple[tuple[str, ...], tuple[int, ...]]]:
    """A parameter of the scanned blocks, `h/...` of shape (n_layer, ...), as one (h_i/..., shape) per layer;
    any other parameter as itself."""
    if path[0] != "h":
        return [(path, shape)]
    return [((f"h_{i}",) + path[1:], shape[1:]) for i in range(shape[0])]


def hf_name(path: tuple[str, ...], kind: str) -> str:
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


def _model_order(path: tuple[str, ...]) -> tuple[int, int]:
    """Embeddings, then the blocks in depth order, then the final LayerNorm and the head: the order in which
    missing or mismatched tensors are reported."""
    top = path[0]
    if top in ("wte", "wpe"):
        return 0, ("wte", "wpe").index(top)
    if top.startswith("h_"):
        return 1, int(top[2:])
    return 2, 0


class _HFTensors:
    """The tensors of an HF checkpoint, looked up by our parameter paths, with errors that say what does not match."""

    def __init__(self, tensors: dict[str, LazyTensor], cfg: ModelConfig, kind: str, where: str):
        self.tensors, self.cfg, self.kind, self.where = tensors, cfg, kind, where
        self.names = {}  # name without "transformer." -> stored name
        for name in tensors:
            self.names.setdefault(name[len("transformer."):] if name.startswith("transformer.") else name, name)
        self.summary = (f"n_layer={cfg.n_layer}, n_embd={cfg.d_model}, n_inner={cfg.d_ff}, "
                        f"n_positions={cfg.block_size}, vocab_size={cfg.vocab_size}")
        layers = [int(m.group(1)) for n in self.names if (m := re.match(r"h\.(\d+)\.", n))]
        if layers and max(layers) >= cfg.n_layer:
            raise PretrainedError(f"{where} hold layer h.{max(layers)}, but config.json says n_layer={cfg.n_layer}: "
                                  "the config and the weights describe different models")

    def find(self, path: tuple[str, ...], shape: tuple[int, ...]) -> LazyTensor:
        """The stored tensor for our parameter `path` of `shape`, checked to exist and to have the HF shape."""
        name = hf_name(path, self.kind)
        if name not in self.names:
            raise PretrainedError(f"{self.where} lack tensor {name!r} (for {'/'.join(path)}): the weights are "
                                  f"incomplete, or config.json ({self.summary}) describes another model")
        if path in VOCAB_ROWS:
            want = (self.cfg.vocab_size, shape[1])
        else:  # Conv1D kernels are stored (in, out)
            want = shape[::-1] if path[-1] == "kernel" else shape
        tensor = self.tensors[self.names[name]]
        if tensor.shape != tuple(want):
            raise PretrainedError(f"tensor {self.names[name]!r} has shape {tensor.shape}, but config.json "
                                  f"({self.summary}) needs {tuple(want)}: the config and the weights describe "
                                  "different models")
        return tensor

    def read(self, path: tuple[str, ...], shape: tuple[int, ...]) -> np.ndarray:
        """Our parameter `path` (float32, `shape`): read, vocab rows padded with zeros, Conv1D kernels transposed."""
        try:
            x = self.find(path, shape).get()
        except Exception as e:  # a damaged file
            raise PretrainedError(f"cannot read tensor {hf_name(path, self.kind)!r} of {self.where} "
                                  f"({type(e).__name__}: {e})") from None
        if path in VOCAB_ROWS:
            return np.concatenate([x, np.zeros((shape[0] - self.cfg.vocab_size, shape[1]), np.float32)])
        if path[-1] == "kernel":
            return np.ascontiguousarray(x.T)  # Conv1D (in, out) -> (out, in)
        return x
