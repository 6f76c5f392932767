import hashlib
import os
import shutil

import pytest

from gpt_jax import tokenizer as tok_lib

TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\n"
        "Ünïcödé — “quotes”, emoji 🤖, 日本語, tabs\tand   spaces, numbers 1234567 and 3.14159!"
        "<|endoftext|>The end?  ")


def tiktoken_reference(tmp_path):
    """tiktoken.get_encoding("gpt2") itself, offline: its cache is filled with the same local files, named as
    tiktoken names its downloads (sha1 of the URL); tiktoken checks their sha256 as it loads them."""
    import tiktoken
    import tiktoken.registry
    import tiktoken_ext.openai_public as op

    vocab_bpe, encoder_json = tok_lib.gpt2_files()
    base = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/"
    for url, path in ((base + "vocab.bpe", vocab_bpe), (base + "encoder.json", encoder_json)):
        shutil.copy(path, tmp_path / hashlib.sha1(url.encode()).hexdigest())
    old = os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = str(tmp_path)
    try:
        tiktoken.registry.ENCODINGS.pop("gpt2", None)
        enc = tiktoken.get_encoding("gpt2")
    finally:
        if old is None:
            os.environ.pop("TIKTOKEN_CACHE_DIR")
        else:
            os.environ["TIKTOKEN_CACHE_DIR"] = old
        tiktoken.registry.ENCODINGS.pop("gpt2", None)
    assert op  # the registry plugin that defines gpt2's URLs and hashes
    return enc


def test_gpt2_ids_equal_tiktoken(tmp_path):
    ref = tiktoken_reference(tmp_path)
    ours = tok_lib.GPT2Tokenizer()
    ids = ours.encode(TEXT)
    assert ids == ref.encode(TEXT, allowed_special={"<|endoftext|>"})
    assert ours.decode(ids) == TEXT
    assert ours.vocab_size == ref.n_vocab == 50257 and ours.eot_id == ref.eot_token == 50256
    # a few ids everybody knows
    assert ours.encode("Hello world") == [15496, 995]


def test_gpt2_files_are_hash_checked(tmp_path, monkeypatch):
    vocab_bpe, encoder_json = tok_lib.gpt2_files()
    bad = tmp_path / "vocab.bpe"
    bad.write_bytes(open(vocab_bpe, "rb").read() + b"\n")
    monkeypatch.setattr(tok_lib, "gpt2_files", lambda: (str(bad), encoder_json))
    tok_lib.gpt2_encoding.cache_clear()
    try:
        with pytest.raises(tok_lib.TokenizerError, match="sha256"):
            tok_lib.gpt2_encoding()
    finally:
        tok_lib.gpt2_encoding.cache_clear()


def test_decode_bytes_keeps_partial_characters():
    t = tok_lib.GPT2Tokenizer()
    ids = t.encode("🤖")
    assert len(ids) > 1  # one emoji, several byte-level tokens
    assert b"".join(t.decode_bytes([i]) for i in ids) == "🤖".encode()


def test_char_tokenizer_roundtrip_and_unknown():
    t = tok_lib.CharTokenizer.from_text("hello world")
    assert t.vocab_size == 8 and t.decode(t.encode("hello")) == "hello"
    assert tok_lib.from_meta(t.meta()).encode("low") == t.encode("low")
    with pytest.raises(tok_lib.TokenizerError, match="'Z' is not in this run's character vocabulary"):
        t.encode("heZ")


def test_unknown_tokenizer_name():
    with pytest.raises(tok_lib.TokenizerError, match="unknown tokenizer"):
        tok_lib.from_meta({"name": "sentencepiece"})
