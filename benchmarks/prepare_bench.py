"""prepare.py against the straightforward parallel baseline, on a corpus of >= 500 MB built from ../shared/data.

    python benchmarks/prepare_bench.py [--size_mb=500] [--rounds=2] [--dir=/tmp/gpt_jax_prepare_bench]

Builds DIR/corpus.jsonl (nothing large is committed): documents of 3-40 paragraphs drawn at random from tiny
shakespeare, AG News and RTE, one JSON object {"text": ...} per line, until the text reaches --size_mb MB.
Each round then runs both sides in fresh processes, alternating which goes first:
  - baseline: what a user writes first (nanoGPT's prepare does the same with datasets.map(num_proc=...)): every
    document read into a list, a 2-process multiprocessing Pool mapping tiktoken's encode_ordinary_batch over
    chunks of documents (an <|endoftext|> after each), numpy concatenating the ids, one uint16 file written;
  - ours: python prepare.py --config=configs/gpt2.py --config.data.dataset=DIR/corpus.jsonl --workdir=DIR/run
while the RSS of the command's whole process tree (workers included) is summed every 50 ms. Then a preparation
is killed with SIGKILL halfway and rerun: the rerun reports what it tokenized, the temporaries left by the kill
show the work lost, and the result is compared with the uninterrupted one. One JSON line per measurement, then
a table.
"""

import argparse
import collections
import glob
import hashlib
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from multiprocessing import Pool

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from gpt_jax.config import default_config  # noqa: E402
from gpt_jax.tokenizer import gpt2_encoding  # noqa: E402

SHARED = os.path.join(os.path.dirname(ROOT), "shared", "data")
PAGE = os.sysconf("SC_PAGE_SIZE")


def paragraphs() -> list[str]:
    """Every paragraph of text in ../shared/data: shakespeare's speeches, AG News items, RTE sentences."""
    with open(os.path.join(SHARED, "tinyshakespeare.txt"), encoding="utf-8") as f:
        out = [p for p in f.read().split("\n\n") if p.strip()]
    for name in ("dev.tsv", "test.tsv"):
        with open(os.path.join(SHARED, "finetune", "agnews", name), encoding="utf-8") as f:
            out += [line.split("\t")[0].replace("\\", "\n") for line in f if line.strip()]
    with open(os.path.join(SHARED, "finetune", "rte", "train.tsv"), encoding="utf-8") as f:
        out += [" ".join(line.split("\t")[1:3]) for line in list(f)[1:]]
    return out


def build_corpus(path: str, size_mb: int) -> dict:
    """DIR/corpus.jsonl of shuffled documents with at least `size_mb` MB of text (kept if already there)."""
    if os.path.exists(path):
        with open(path + ".json") as f:
            return json.load(f)
    rng, pool, text_bytes, docs = random.Random(0), paragraphs(), 0, 0
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        while text_bytes < size_mb * 1e6:
            doc = "\n\n".join(rng.choice(pool) for _ in range(rng.randint(3, 40)))
            f.write(json.dumps({"text": doc}) + "\n")
            text_bytes, docs = text_bytes + len(doc.encode("utf-8")), docs + 1
    os.replace(path + ".tmp", path)
    info = {"file_mb": round(os.path.getsize(path) / 1e6, 1), "text_mb": round(text_bytes / 1e6, 1), "docs": docs}
    with open(path + ".json", "w") as f:
        json.dump(info, f)
    return info


# ----------------------------------------------------------------------------------------- the baseline


def _encode_chunk(docs: list[str]) -> np.ndarray:
    encoding = gpt2_encoding()
    return np.concatenate([np.asarray(ids + [encoding.eot_token], np.uint16)
                           for ids in encoding.encode_ordinary_batch(docs)])


def baseline(corpus: str, out: str) -> None:
    with open(corpus, encoding="utf-8") as f:
        docs = [json.loads(line)["text"] for line in f]
    with Pool(2) as pool:
        chunks = pool.map(_encode_chunk, [docs[i : i + 1000] for i in range(0, len(docs), 1000)])
    ids = np.concatenate(chunks)
    ids.tofile(out)
    print(json.dumps({"tokens": int(len(ids))}))


# ----------------------------------------------------------------------------------------- measuring


def tree_rss(root: int) -> int:
    """Resident bytes of process `root` and all its descendants (from /proc)."""
    children = collections.defaultdict(list)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    children[int(f.read().rsplit(")", 1)[1].split()[1])].append(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        stack.extend(children[pid])
        try:
            with open(f"/proc/{pid}/statm") as f:
                total += int(f.read().split()[1]) * PAGE
        except (OSError, IndexError, ValueError):
            pass
    return total


def timed(cmd: list[str], kill_after: float = 0.0) -> dict:
    """Runs `cmd`, sampling its process tree's RSS; SIGKILLs it after `kill_after` seconds when > 0."""
    start = time.time()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    peak, done = [0], threading.Event()

    def sample():
        while not done.wait(0.05):
            peak[0] = max(peak[0], tree_rss(proc.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    if kill_after:
        try:
            proc.wait(kill_after)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the whole session: workers die with it, as with kill -9 + OOM
    out, err = proc.communicate()
    done.set()
    sampler.join()
    if proc.returncode != 0 and not kill_after:
        sys.exit(f"error: {' '.join(cmd)} exited {proc.returncode}: {err.strip().splitlines()[-1:]}")
    return {"seconds": time.time() - start, "peak_rss_mb": peak[0] / 1e6, "stdout": out, "stderr": err}


def ours_cmd(corpus: str, workdir: str) -> list[str]:
    return [sys.executable, "prepare.py", "--config=configs/gpt2.py", f"--config.data.dataset={corpus}",
            f"--workdir={workdir}"]


def manifest(workdir: str) -> dict:
    with open(os.path.join(workdir, "data", "manifest.json")) as f:
        return json.load(f)


def digest(workdir: str) -> str:
    """sha256 over the shards' bytes in manifest order (train then val)."""
    h, m = hashlib.sha256(), manifest(workdir)
    for split in ("train", "val"):
        for shard in m["shards"][split]:
            with open(os.path.join(workdir, "data", shard["file"]), "rb") as f:
                h.update(f.read())
    return h.hexdigest()


def rounds(args, corpus: str, text_mb: float) -> dict:
    """Both sides `args.rounds` times, alternating the order; returns their measurements."""
    results = {"baseline": [], "ours": []}
    for r in range(args.rounds):
        for side in (("baseline", "ours") if r % 2 == 0 else ("ours", "baseline")):
            workdir = os.path.join(args.dir, "run")
            shutil.rmtree(workdir, ignore_errors=True)
            if side == "baseline":
                run = timed([sys.executable, os.path.abspath(__file__), "--baseline", f"--dir={args.dir}"])
                tokens = json.loads(run["stdout"].strip().splitlines()[-1])["tokens"]
            else:
                run = timed(ours_cmd(corpus, workdir))
                tokens = sum(s["tokens"] for split in ("train", "val") for s in manifest(workdir)["shards"][split])
            row = {"side": side, "round": r, "seconds": round(run["seconds"], 1),
                   "mb_per_s": round(text_mb / run["seconds"], 2), "peak_rss_mb": round(run["peak_rss_mb"]),
                   "tokens": tokens}
            results[side].append(row)
            print(json.dumps(row), flush=True)
    return results


def kill_and_resume(args, corpus: str, full_seconds: float) -> dict:
    """prepare.py killed (SIGKILL) at half its usual time, then rerun; checked against an uninterrupted run."""
    workdir = os.path.join(args.dir, "run")  # holds the last uninterrupted run of `rounds`
    want = digest(workdir)
    killed = os.path.join(args.dir, "killed")
    shutil.rmtree(killed, ignore_errors=True)
    timed(ours_cmd(corpus, killed), kill_after=full_seconds / 2)
    at_kill = manifest(killed)
    kept = sum(s["tokens"] for split in ("train", "val") for s in at_kill["shards"][split])
    open_shards = sum(os.path.getsize(p) for p in glob.glob(os.path.join(killed, "data", "*.tmp*"))) // 2
    rerun = timed(ours_cmd(corpus, killed))
    last = manifest(killed)["last_run"]
    row = {"killed_at_s": round(full_seconds / 2, 1), "complete_at_kill": at_kill["complete"],
           "kept_tokens": kept, "open_shard_tokens_lost": int(open_shards), "shard_tokens": default_config().data.shard_tokens,
           "rerun_tokenized_tokens": last["tokenized_tokens"], "rerun_seconds": round(rerun["seconds"], 1),
           "identical_to_uninterrupted": digest(killed) == want}
    print(json.dumps(row), flush=True)
    return row


def table(results: dict, info: dict) -> str:
    lines = [f"corpus: {info['text_mb']} MB of text in {info['docs']:,} documents ({info['file_mb']} MB JSONL)", "",
             "| | wall s (median) | MB of text / s (median) | peak RSS MB (max) | tokens |", "|---|---|---|---|---|"]
    for side in ("baseline", "ours"):
        rows = results[side]
        lines.append(f"| {side} | {statistics.median(r['seconds'] for r in rows):.1f} | "
                     f"{statistics.median(r['mb_per_s'] for r in rows):.2f} | "
                     f"{max(r['peak_rss_mb'] for r in rows)} | {rows[0]['tokens']:,} |")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size_mb", type=int, default=500)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--dir", default="/tmp/gpt_jax_prepare_bench")
    p.add_argument("--baseline", action="store_true", help="run the baseline alone (used by the rounds)")
    p.add_argument("--no_kill", action="store_true", help="skip the kill -9 + resume measurement")
    args = p.parse_args()
    os.makedirs(args.dir, exist_ok=True)
    corpus = os.path.join(args.dir, "corpus.jsonl")
    if args.baseline:
        return baseline(corpus, os.path.join(args.dir, "baseline.bin"))
    info = build_corpus(corpus, args.size_mb)
    print(json.dumps({"corpus": corpus, **info}), flush=True)
    results = rounds(args, corpus, info["text_mb"])
    if not args.no_kill:
        kill_and_resume(args, corpus, statistics.median(r["seconds"] for r in results["ours"]))
    print(table(results, info))


if __name__ == "__main__":
    main()
