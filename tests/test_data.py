import os

import numpy as np
import pytest

from gpt_jax import data as data_lib
from gpt_jax.config import default_config


def data_cfg(**kw):
    c = default_config().data
    c.update(kw)
    return c


def test_embedded_corpus_char(tmp_path):
    train, val, tok = data_lib.prepare(data_cfg(tokenizer="char"), str(tmp_path))
    assert tok.vocab_size == 65
    assert len(train) + len(val) == 1115394 and len(val) == 111539
    assert train.dtype == np.uint16
    assert tok.decode(train[:14]) == "First Citizen:"
    meta_time = os.path.getmtime(tmp_path / "manifest.json")
    again = data_lib.prepare(data_cfg(tokenizer="char"), str(tmp_path))  # cached: not rewritten
    assert os.path.getmtime(tmp_path / "manifest.json") == meta_time
    np.testing.assert_array_equal(again[0], train)


def test_folder_dataset_bpe(tmp_path):
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "a.txt").write_text("Hello world. " * 50)
    (folder / "b.txt").write_text("Goodbye moon. " * 50)
    train, val, tok = data_lib.prepare(data_cfg(dataset=str(folder), tokenizer="gpt2"), str(tmp_path / "cache"))
    ids = np.concatenate([train, val])
    assert list(ids).count(tok.eot_id) == 1  # documents separated by <|endoftext|>
    assert tok.decode(ids[:3]) == "Hello world."
    # the cache notices a changed source
    (folder / "a.txt").write_text("Changed text. " * 60)
    train2, _, _ = data_lib.prepare(data_cfg(dataset=str(folder), tokenizer="gpt2"), str(tmp_path / "cache"))
    assert tok.decode(train2[:3]) == "Changed text."


@pytest.mark.parametrize("dataset,match", [("/no/such/file.txt", "not found"), ("hf", "not found")])
def test_missing_dataset(tmp_path, dataset, match):
    with pytest.raises(data_lib.DataError, match=match):
        data_lib.prepare(data_cfg(dataset=dataset), str(tmp_path))


def test_empty_and_non_utf8(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(data_lib.DataError, match="empty"):  # char: no characters to build a vocabulary from
        data_lib.prepare(data_cfg(dataset=str(tmp_path / "empty.txt"), tokenizer="char"), str(tmp_path / "c1"))
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(data_lib.DataError, match="not UTF-8"):
        data_lib.prepare(data_cfg(dataset=str(tmp_path / "latin1.txt")), str(tmp_path / "c2"))


def test_batches_are_windows_and_deterministic():
    tokens = np.arange(1000, dtype=np.uint16)
    b = data_lib.Batches(tokens, block_size=16, batch_size=4, seed=7)
    x = b(3)
    assert x["inputs"].shape == x["targets"].shape == (4, 16) and x["inputs"].dtype == np.int32
    np.testing.assert_array_equal(x["targets"][:, :-1], x["inputs"][:, 1:])  # targets are inputs shifted by one
    np.testing.assert_array_equal(np.diff(x["inputs"], axis=1), 1)  # contiguous windows of the stream
    assert x["targets"].max() < 1000
    again = data_lib.Batches(tokens, block_size=16, batch_size=4, seed=7)
    np.testing.assert_array_equal(again(3)["inputs"], x["inputs"])  # pure function of (seed, step)
    assert not np.array_equal(b(4)["inputs"], x["inputs"])
    assert not np.array_equal(data_lib.Batches(tokens, 16, 4, seed=8)(3)["inputs"], x["inputs"])


def test_eval_batches_cover_split_with_padding():
    tokens = np.arange(101, dtype=np.uint16)
    batches = data_lib.eval_batches(tokens, block_size=10, batch_size=4)
    assert len(batches) == 3  # 10 windows -> 4 + 4 + 2 (padded)
    assert [float(b["weights"].sum()) for b in batches] == [4, 4, 2]
    starts = np.concatenate([b["inputs"][b["weights"] > 0, 0] for b in batches])
    np.testing.assert_array_equal(starts, np.arange(10) * 10)  # non-overlapping, whole split
    sub = data_lib.eval_batches(tokens, block_size=10, batch_size=4, max_windows=4)
    assert sum(float(b["weights"].sum()) for b in sub) == 4


def test_split_too_small():
    with pytest.raises(data_lib.DataError, match="fewer than block_size"):
        data_lib.Batches(np.arange(10, dtype=np.uint16), block_size=16, batch_size=2, seed=0)


def shard_stream(tmp_path, tokens, sizes):
    """`tokens` written as shard files of `sizes` tokens, read back as one TokenStream."""
    segments, start = [], 0
    for i, size in enumerate(sizes):
        path = str(tmp_path / f"train_{i:06d}.bin")
        tokens[start : start + size].tofile(path)
        segments.append((path, 0, size))
        start += size
    assert start == len(tokens)
    return data_lib.TokenStream(segments, tokens.dtype)


def test_batches_over_shards_equal_batches_over_the_flat_stream(tmp_path):
    tokens = np.random.default_rng(0).integers(0, 50257, 1000).astype(np.uint16)
    stream = shard_stream(tmp_path, tokens, [37, 1, 400, 62, 500])  # windows of 17 cross the boundaries
    assert len(stream) == 1000 and stream[37] == tokens[37] and stream[-1] == tokens[-1]
    np.testing.assert_array_equal(stream[30:450], tokens[30:450])
    crossing = 0
    for step in range(50):
        flat = data_lib.Batches(tokens, block_size=16, batch_size=8, seed=3)(step)
        sharded = data_lib.Batches(stream, block_size=16, batch_size=8, seed=3)(step)
        np.testing.assert_array_equal(flat["inputs"], sharded["inputs"])
        np.testing.assert_array_equal(flat["targets"], sharded["targets"])
        starts = np.random.default_rng([3, step]).integers(0, 1000 - 16, 8)  # as Batches draws them
        crossing += sum(any(s < b < s + 17 for b in (37, 38, 438, 500)) for s in starts)
    assert crossing > 0  # some windows did cross a shard boundary
    for a, b in zip(data_lib.eval_batches(tokens, 16, 8), data_lib.eval_batches(stream, 16, 8)):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])


def test_each_process_reads_its_rows_of_the_global_batch(tmp_path):
    tokens = np.arange(5000, dtype=np.uint16)
    stream = shard_stream(tmp_path, tokens, [1000] * 5)
    whole = data_lib.Batches(stream, 16, 8, seed=1)
    for count in (2, 4, 8):
        parts = [data_lib.Batches(stream, 16, 8, seed=1, process_index=i, process_count=count) for i in range(count)]
        for step in (0, 7):
            rows = [p(step)["inputs"] for p in parts]
            assert all(r.shape == (8 // count, 16) for r in rows)
            np.testing.assert_array_equal(np.concatenate(rows), whole(step)["inputs"])
    global_eval = data_lib.eval_batches(stream, 16, 8, max_windows=20)
    per_process = [data_lib.eval_batches(stream, 16, 8, max_windows=20, process_index=i, process_count=2)
                   for i in range(2)]
    for b, first, second in zip(global_eval, *per_process):
        np.testing.assert_array_equal(np.concatenate([first["inputs"], second["inputs"]]), b["inputs"])
        np.testing.assert_array_equal(np.concatenate([first["weights"], second["weights"]]), b["weights"])
    with pytest.raises(data_lib.DataError, match="does not split evenly over 3 processes"):
        data_lib.Batches(stream, 16, 8, seed=1, process_index=0, process_count=3)
    with pytest.raises(data_lib.DataError, match="process_index=2 is not one of process_count=2"):
        data_lib.Batches(stream, 16, 8, seed=1, process_index=2, process_count=2)
