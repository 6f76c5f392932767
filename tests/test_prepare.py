"""Corpus -> token shards: every input format, ids equal to tiktoken's, kill -9 and resume, changed corpora,
damaged shards, the validation split by document, and the prepare.py command line."""

import gzip
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT, SHARED_DATA, run_cli
from gpt_jax import corpus as corpus_lib
from gpt_jax import prepare as prep
from gpt_jax import shards
from gpt_jax import tokenizer as tok_lib
from gpt_jax.config import default_config

EOT = tok_lib.GPT2_EOT
SHAKESPEARE = os.path.join(SHARED_DATA, "tinyshakespeare.txt")


def data_cfg(**kw):
    c = default_config().data
    c.update(kw)
    return c


def documents(n=160, seed=0):
    """`n` distinct documents of tiny shakespeare's paragraphs, with unicode, digits and odd whitespace."""
    with open(SHAKESPEARE, encoding="utf-8") as f:
        paragraphs = [p for p in f.read().split("\n\n") if p.strip()]
    rng = random.Random(seed)
    extras = ["caf\u00e9 na\u00efve \u2014 \u00a0x", "  indented\n\tline\r\n", "1,234.5 and 'tis", "\u65e5\u672c\u8a9e"]
    return [f"Doc {i}: " + "\n\n".join(rng.choice(paragraphs + extras) for _ in range(rng.randint(1, 6)))
            for i in range(n)]


def expected_splits(docs, val_fraction=0.1):
    """What prepare must produce: encode_ordinary per document, <|endoftext|> between the documents of a split."""
    encoding = tok_lib.gpt2_encoding()
    out = {"train": [], "val": []}
    for i, doc in enumerate(docs):
        split = prep.split_of(i, val_fraction)
        if out[split]:
            out[split].append(50256)
        out[split].extend(encoding.encode_ordinary(doc))
    return out


def write_corpus(kind, docs, folder):
    """`docs` as a corpus of format `kind` under `folder`; returns the dataset path."""
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "txt-folder":
        for i, doc in enumerate(docs):
            (folder / f"doc_{i:04d}.txt").write_text(doc, encoding="utf-8")
        return str(folder)
    lines = "".join(json.dumps({"id": i, "text": doc}) + "\n" for i, doc in enumerate(docs))
    if kind == "jsonl":
        (folder / "corpus.jsonl").write_text(lines, encoding="utf-8")
        return str(folder / "corpus.jsonl")
    if kind == "jsonl.gz":
        with gzip.open(folder / "corpus.jsonl.gz", "wt", encoding="utf-8") as f:
            f.write(lines)
        return str(folder / "corpus.jsonl.gz")
    if kind == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"id": list(range(len(docs))), "text": docs}), folder / "corpus.parquet",
                       row_group_size=37)  # several row groups: resuming skips whole ones
        return str(folder / "corpus.parquet")
    raise ValueError(kind)


@pytest.fixture
def fake_hub(monkeypatch):
    """hf:NAME served from memory through the real `datasets` streaming API (no network)."""
    datasets = pytest.importorskip("datasets")
    served = {}

    def load_dataset(name, config=None, split=None, streaming=False):
        assert streaming and split == "train"
        return datasets.Dataset.from_dict({"text": served[name]}).to_iterable_dataset()

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return served


def streams(cache_dir, **kw):
    train, val, _ = prep.prepare(data_cfg(**kw), str(cache_dir))
    return np.asarray(train), np.asarray(val)


FORMATS = ["txt-folder", "jsonl", "jsonl.gz", "parquet", "hf"]


@pytest.mark.parametrize("kind", FORMATS)
def test_every_format_gives_tiktoken_ids_per_document(tmp_path, kind, fake_hub):
    docs = documents()
    if kind == "hf":
        fake_hub["someone/corpus"] = docs
        dataset = "hf:someone/corpus"
    else:
        dataset = write_corpus(kind, docs, tmp_path / "corpus")
    train, val = streams(tmp_path / "cache", dataset=dataset, tokenizer="gpt2")
    want = expected_splits(docs)
    assert 0 < len(val) < len(train)
    np.testing.assert_array_equal(train, want["train"])
    np.testing.assert_array_equal(val, want["val"])
    assert train.dtype == np.uint16


@pytest.mark.parametrize("kind", ["text", "txt-folder", "jsonl", "jsonl.gz", "parquet", "hf"])
def test_reading_resumes_at_every_cursor(tmp_path, kind, monkeypatch, fake_hub):
    monkeypatch.setattr(corpus_lib, "PIECE_BYTES", 300)  # long documents come in several pieces
    docs = documents(60, seed=1)
    if kind == "text":
        (tmp_path / "one.txt").write_text(f"{EOT}".join(docs), encoding="utf-8")
        dataset = str(tmp_path / "one.txt")
    elif kind == "hf":
        fake_hub["x/y"] = docs
        dataset = "hf:x/y"
    else:
        dataset = write_corpus(kind, docs, tmp_path / "corpus")
    corpus = corpus_lib.Corpus(dataset)
    pieces = list(corpus.pieces(separator=EOT))
    assert sum(p.new_document for p in pieces) == len(docs) < len(pieces)
    assert "".join(p.text for p in pieces) == "".join(docs)
    resumable = [i for i, p in enumerate(pieces) if p.cursor is not None]
    assert len(resumable) > 20
    for i in resumable[:: max(len(resumable) // 12, 1)]:  # the same documents follow (cut where they may)
        assert as_documents(corpus.pieces(pieces[i].cursor, EOT)) == as_documents(pieces[i + 1 :]), i


def as_documents(pieces):
    """Piece texts joined into documents (the first one may be the rest of a document)."""
    out = []
    for piece in pieces:
        if piece.new_document or not out:
            out.append("")
        out[-1] += piece.text
    return out


def test_text_file_ids_equal_tiktoken_on_the_whole_file(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus_lib, "PIECE_BYTES", 4096)  # hundreds of pieces
    with open(SHAKESPEARE, encoding="utf-8") as f:
        text = f.read()
    crlf = text[300_000:600_000].replace("\n", "\r\n")  # Windows line ends: cut before "\r" or " "
    text = text[:300_000] + EOT + crlf + "\n\n \n" + EOT + EOT + text[600_000:]
    path = tmp_path / "big.txt"
    path.write_text(text, encoding="utf-8")
    pieces = [p.text for p in corpus_lib.Corpus(str(path)).pieces(separator=EOT)]
    assert len(pieces) > 200 and max(len(p) for p in pieces) <= 2 * 4096  # a block and the rest of the last
    assert sum(1 for p in pieces if "\r\n" in p) > 50
    train, val = streams(tmp_path / "cache", dataset=str(path), tokenizer="gpt2")
    want = tok_lib.gpt2_encoding().encode(text, allowed_special={EOT})  # the markers are document separators
    np.testing.assert_array_equal(np.concatenate([train, val]), want)
    assert len(val) == int(len(want) * 0.1)  # 4 documents: the last 10% of the tokens
    train, val = streams(tmp_path / "cache_char", dataset=str(path), tokenizer="char")
    char = tok_lib.CharTokenizer.from_text(text)
    np.testing.assert_array_equal(np.concatenate([train, val]), char.encode(text))


def test_safe_cuts_never_change_gpt2_ids():
    encoding = tok_lib.gpt2_encoding()
    alphabet = list("ab Z9.'\n\n\t-") + ["\u00a0", "\u00e9", "\u3000", "'s", "\r\n", "  ", "\u2019"]
    rng = random.Random(0)
    cuts = 0
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(2, 40)))
        cut = corpus_lib.safe_cut(text, 1, len(text))
        while cut:
            assert encoding.encode_ordinary(text[:cut]) + encoding.encode_ordinary(text[cut:]) == \
                encoding.encode_ordinary(text), repr(text[:cut]) + " | " + repr(text[cut:])
            cuts += 1
            cut = corpus_lib.safe_cut(text, 1, cut)
    assert cuts > 1000


def test_shard_size_and_workers_do_not_change_tokens(tmp_path):
    dataset = write_corpus("jsonl", documents(), tmp_path / "corpus")
    one = streams(tmp_path / "one", dataset=dataset, workers=1)
    many = streams(tmp_path / "many", dataset=dataset, workers=2, shard_tokens=2000)
    for a, b in zip(one, many):
        np.testing.assert_array_equal(a, b)
    manifest = shards.read_manifest(str(tmp_path / "many"))
    assert len(manifest["shards"]["train"]) > 10 and manifest["last_run"]["workers"] == 2
    assert all(s["tokens"] < 2000 + 3000 for s in manifest["shards"]["train"])


CHILD = """
import sys, time
from gpt_jax import prepare as prep
from gpt_jax.config import default_config

dataset, cache_dir, counter = sys.argv[1:]
make_encoder = prep.text_encoder

def counting_encoder(tokenizer, dtype):  # notes every task's token count, and slows the run down
    encode = make_encoder(tokenizer, dtype)
    def encode_and_count(texts):
        ids, lengths = encode(texts)
        with open(counter, "a") as f:
            f.write(f"{len(ids)}\\n")
        time.sleep(0.03)
        return ids, lengths
    return encode_and_count

prep.text_encoder = counting_encoder
prep.TASK_CHARS = 2000
cfg = default_config().data
cfg.update(dataset=dataset, tokenizer="gpt2", shard_tokens=3000, workers=1)
prep.prepare(cfg, cache_dir)
"""


def test_kill_9_then_resume_redoes_at_most_one_shard(tmp_path):
    docs = documents(400, seed=2)
    dataset = write_corpus("jsonl", docs, tmp_path / "corpus")
    cache, counter = tmp_path / "killed", tmp_path / "counter.txt"
    child = subprocess.Popen([sys.executable, "-c", CHILD, dataset, str(cache), str(counter)], cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and child.poll() is None:
        manifest = shards.read_manifest(str(cache))
        if manifest and len(manifest["shards"]["train"]) >= 4:
            break
        time.sleep(0.01)
    time.sleep(random.Random().uniform(0, 0.2))  # anywhere in the next shard
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL, child.stderr.read().decode()
    at_kill = shards.read_manifest(str(cache))
    assert not at_kill["complete"]
    kept = {s["file"]: os.stat(cache / s["file"]) for split in shards.SPLITS for s in at_kill["shards"][split]}
    kept_tokens = np.concatenate([np.fromfile(cache / name, np.uint16) for name in kept])
    tokenized_before_kill = sum(int(n) for n in counter.read_text().split())
    lost = tokenized_before_kill - int((kept_tokens != 50256).sum())  # separators are not tokenized
    task_tokens = max(int(n) for n in counter.read_text().split())
    assert 0 <= lost <= 3000 + task_tokens  # at most one shard (+ the task being written) is tokenized again

    train, val = streams(cache, dataset=dataset, shard_tokens=3000, workers=1)
    for name, st in kept.items():  # listed shards are kept as they were, not rewritten
        now = os.stat(cache / name)
        assert (now.st_ino, now.st_mtime_ns, now.st_size) == (st.st_ino, st.st_mtime_ns, st.st_size)
    manifest = shards.read_manifest(str(cache))
    assert manifest["last_run"]["resumed_tokens"] == len(kept_tokens) > 0
    assert manifest["last_run"]["tokenized_tokens"] == len(train) + len(val) - len(kept_tokens)
    assert not [n for n in os.listdir(cache) if ".tmp" in n]
    want = expected_splits(docs)
    np.testing.assert_array_equal(train, want["train"])
    np.testing.assert_array_equal(val, want["val"])


def test_changed_corpus_or_tokenizer_is_prepared_again_never_mixed(tmp_path, monkeypatch):
    docs = documents()
    dataset = write_corpus("jsonl", docs, tmp_path / "corpus")
    cache = tmp_path / "cache"
    calls = []
    original = prep.ShardWriter.write_next

    def interrupted(self, encoded):  # an interrupted preparation: two shards, then a crash
        calls.append(1)
        if len(calls) > 2:
            raise KeyboardInterrupt
        return original(self, encoded)

    monkeypatch.setattr(prep.ShardWriter, "write_next", interrupted)
    with pytest.raises(KeyboardInterrupt):
        streams(cache, dataset=dataset, shard_tokens=2000)
    monkeypatch.setattr(prep.ShardWriter, "write_next", original)
    assert len(shards.read_manifest(str(cache))["shards"]["train"]) == 2

    changed = [d.upper() for d in docs] + ["One more document."]  # another size (and mtime)
    write_corpus("jsonl", changed, tmp_path / "corpus")
    train, val = streams(cache, dataset=dataset, shard_tokens=2000)
    manifest = shards.read_manifest(str(cache))
    assert manifest["last_run"]["resumed_tokens"] == 0  # started over
    want = expected_splits(changed)
    np.testing.assert_array_equal(train, want["train"])
    np.testing.assert_array_equal(val, want["val"])
    listed = {s["file"] for split in shards.SPLITS for s in manifest["shards"][split]}
    assert {n for n in os.listdir(cache) if n.endswith(".bin")} == listed  # nothing of the old corpus is left

    train, val = streams(cache, dataset=dataset, tokenizer="char")  # another tokenizer: prepared again
    assert shards.read_manifest(str(cache))["tokenizer"]["name"] == "char"
    char = tok_lib.CharTokenizer(shards.read_manifest(str(cache))["tokenizer"]["chars"])
    assert char.decode(train[:20]) == changed[0][:20]


def test_damaged_or_leftover_shards_are_never_read(tmp_path):
    dataset = write_corpus("jsonl", documents(), tmp_path / "corpus")
    cache = tmp_path / "cache"
    want = streams(cache, dataset=dataset, shard_tokens=2000)
    first = shards.read_manifest(str(cache))["shards"]["train"][1]["file"]
    with open(cache / first, "r+b") as f:  # a shard cut short, as by a full disk
        f.truncate(100)
    (cache / "train_000999.bin").write_bytes(b"\x01\x00" * 50)  # a shard no manifest lists
    (cache / "val_000003.bin.tmp4242").write_bytes(b"\x01\x00" * 50)  # a temporary left by kill -9
    got = streams(cache, dataset=dataset, shard_tokens=2000)
    assert shards.read_manifest(str(cache))["last_run"]["resumed_tokens"] == 0  # noticed: prepared again
    for a, b in zip(want, got):
        np.testing.assert_array_equal(a, b)
    assert not (cache / "train_000999.bin").exists() and not (cache / "val_000003.bin.tmp4242").exists()


def test_old_single_file_cache_is_replaced(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "train.bin").write_bytes(b"\x00\x00" * 10)
    (cache / "val.bin").write_bytes(b"\x00\x00" * 10)
    (cache / "meta.json").write_text(json.dumps({"key": {"format": 1}, "dtype": "uint16", "train_tokens": 10,
                                                 "val_tokens": 10, "tokenizer": {"name": "gpt2"}}))
    train, val = streams(cache, tokenizer="char")
    assert len(train) + len(val) == 1115394
    assert sorted(os.listdir(cache)) == [".lock", "manifest.json", "train_000000.bin"]


def test_validation_split_is_by_document_and_deterministic():
    assert all(prep.split_of(i, 0.5) == "train" for i in range(prep.FIRST_VAL_DOCUMENT))
    for fraction in (0.01, 0.1, 0.3):
        picks = [prep.split_of(i, fraction) == "val" for i in range(100, 100_100)]
        assert abs(np.mean(picks) - fraction) < 1e-3  # the share asked for
        assert abs(np.mean(picks[:1000]) - fraction) < 0.01  # in any stretch, evenly
    assert [prep.split_of(i, 0.1) for i in range(2000)] == [prep.split_of(i, 0.1) for i in range(2000)]


def test_few_documents_split_by_tokens(tmp_path):
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "a.txt").write_text("Hello world. " * 50)
    (folder / "b.txt").write_text("Goodbye moon. " * 50)
    train, val = streams(tmp_path / "cache", dataset=str(folder))
    encoding = tok_lib.gpt2_encoding()
    want = encoding.encode_ordinary("Hello world. " * 50) + [50256] + encoding.encode_ordinary("Goodbye moon. " * 50)
    np.testing.assert_array_equal(np.concatenate([train, val]), want)
    assert len(val) == int(len(want) * 0.1)


def test_eot_in_a_text_file_separates_documents_or_stays_plain_text(tmp_path):
    """data.eot_in_text: "separator" (default) ends a document at "<|endoftext|>" (the token 50256 between
    the two, as tiktoken would encode it with the special allowed); "text" encodes it as the characters it is."""
    text = "Hello world. " * 50 + EOT + "Goodbye moon. " * 50
    (tmp_path / "a.txt").write_text(text)
    encoding = tok_lib.gpt2_encoding()
    for mode, want in (("separator", encoding.encode(text, allowed_special={EOT})),
                       ("text", encoding.encode_ordinary(text))):
        train, val = streams(tmp_path / mode, dataset=str(tmp_path / "a.txt"), eot_in_text=mode)
        np.testing.assert_array_equal(np.concatenate([train, val]), want)
    with pytest.raises(ValueError, match="data.eot_in_text must be"):
        streams(tmp_path / "bad", dataset=str(tmp_path / "a.txt"), eot_in_text="drop")


@pytest.mark.parametrize("kind,content,field,match", [
    ("jsonl", '{"body": "x"}\n', "text", "no text field 'text'.*text_field"),
    ("jsonl", '{"text": "x"}\nnot json\n', "text", "not JSON"),
    ("parquet", None, "content", "no column 'content'.*text_field"),
    ("txt", b"caf\xe9", "text", "not UTF-8"),
    ("txt", b"", "text", "empty"),
])
def test_bad_corpora_fail_with_one_line(tmp_path, kind, content, field, match):
    if kind == "parquet":
        dataset = write_corpus("parquet", ["a"], tmp_path)
    else:
        path = tmp_path / f"bad.{kind}"
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        dataset = str(path)
    with pytest.raises(prep.DataError, match=match) as e:
        streams(tmp_path / "cache", dataset=dataset, text_field=field, tokenizer="gpt2")
    assert "\n" not in str(e.value)


def test_empty_folder_and_unreachable_hub(tmp_path, monkeypatch):
    (tmp_path / "empty").mkdir()
    with pytest.raises(prep.DataError, match="holds no"):
        streams(tmp_path / "cache", dataset=str(tmp_path / "empty"))
    datasets = pytest.importorskip("datasets")

    def offline(*args, **kw):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(prep.DataError, match="could not open Hugging Face dataset 'x/y'.*offline"):
        streams(tmp_path / "cache2", dataset="hf:x/y")


def test_prepare_cli_then_training_reuses_the_shards(tmp_path):
    dataset = write_corpus("jsonl", documents(), tmp_path / "corpus")
    workdir = tmp_path / "run"
    out = run_cli(["prepare.py", "--config=configs/tiny.py", f"--workdir={workdir}", "--config.data.tokenizer=gpt2",
                   f"--config.data.dataset={dataset}"])
    assert "train +" in out.stdout and "gpt2 tokenizer" in out.stdout
    manifest_path = workdir / "data" / shards.MANIFEST
    written = os.stat(manifest_path).st_mtime_ns
    train, val = streams(workdir / "data", dataset=dataset, tokenizer="gpt2")  # what train.py calls
    assert os.stat(manifest_path).st_mtime_ns == written  # reused as it is
    want = expected_splits(documents())
    np.testing.assert_array_equal(train, want["train"])
    bad = run_cli(["prepare.py", "--config=configs/tiny.py", f"--workdir={workdir}",
                   "--config.data.dataset=/no/such/corpus.jsonl"], check=False)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error: dataset '/no/such/corpus.jsonl' not found")
