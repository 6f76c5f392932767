"""The GPT-1 paper's pre-training ablation (its Table 5, "transformer w/o pre-training"), small enough for a CPU:
pre-train one small model on a mixed-domain corpus assembled from ../shared/data, then fine-tune it and the same
architecture from random init on three tasks with several seeds, and write a table of mean and spread.

    python benchmarks/finetune_ablation.py --out=runs/ablation --doc=docs/finetune_ablation.md

Corpus (pre-training, labels dropped): tiny shakespeare without its last 10% of lines, AG News dev.tsv's texts
(the AG News fine-tuning training file), RTE train.tsv's sentence pairs. Never read for pre-training: AG News
test.tsv, RTE dev.tsv, shakespeare's held-out tail (the multiple-choice task's source).
Tasks: AG News topic (train: the first --agnews_train of dev.tsv; eval: the first --agnews_eval of test.tsv), RTE
(train.tsv / dev.tsv), and shakespeare next line: a context of two lines, the true next line among four (the others
drawn from the same half of the held-out tail); the tail's first half trains, its second half evaluates.
Char-level tokens (ASCII; text outside the corpus' characters is dropped): a 50k-way BPE softmax would cost most of
a CPU's budget, and the comparison here is pre-trained vs random init of the same model, whatever its tokenizer.
Fine-tuning uses the defaults (no learning-rate or aux flag: the width rule).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import sys
import time
import unicodedata

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from gpt_jax import checkpoint as ckpt_lib  # noqa: E402
from gpt_jax import metrics as metrics_lib  # noqa: E402
from gpt_jax import sources  # noqa: E402
from gpt_jax.config import default_config as pretrain_config  # noqa: E402
from gpt_jax.finetune.config import default_config as finetune_config  # noqa: E402
from gpt_jax.finetune.data import unescape  # noqa: E402
from gpt_jax.finetune.trainer import finetune  # noqa: E402
from gpt_jax.model import init_params  # noqa: E402
from gpt_jax.train import train_and_evaluate  # noqa: E402
from gpt_jax.utils import atomic_write, write_json  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(ROOT, "..", "shared", "data")
TASKS = ("agnews", "rte", "next_line")
HELD_OUT_FRACTION = 0.1  # shakespeare's last 10% of lines: the multiple-choice task, never pre-trained on


def ascii_text(text: str) -> str:
    """Accents stripped, anything else outside ASCII dropped: one small character vocabulary for every file."""
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")


def read_tsv(path: str, header: bool) -> list[list[str]]:
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return rows[1:] if header else rows


def shakespeare_split() -> tuple[list[str], list[str]]:
    """(pre-training lines, held-out tail lines) of tiny shakespeare."""
    with open(os.path.join(SHARED, "tinyshakespeare.txt"), encoding="utf-8") as f:
        lines = f.read().split("\n")
    cut = int(len(lines) * (1 - HELD_OUT_FRACTION))
    return lines[:cut], lines[cut:]


def build_corpus(folder: str) -> str:
    """Writes the pre-training corpus (three *.txt files) into `folder`; returns its characters."""
    os.makedirs(folder, exist_ok=True)
    agnews = [unescape(r[0]) for r in read_tsv(os.path.join(SHARED, "finetune", "agnews", "dev.tsv"), False)]
    rte = [f"{r[1]}\n{r[2]}" for r in read_tsv(os.path.join(SHARED, "finetune", "rte", "train.tsv"), True)]
    parts = {"shakespeare.txt": "\n".join(shakespeare_split()[0]), "agnews.txt": "\n\n".join(agnews),
             "rte.txt": "\n\n".join(rte)}
    chars = set()
    for name, text in parts.items():
        text = ascii_text(text)
        chars |= set(text)
        atomic_write(os.path.join(folder, name), lambda f, t=text: f.write(t))
    return "".join(sorted(chars))


def next_line_examples(lines: list[str], rng: np.random.Generator) -> list[dict]:
    """Two lines of context, the true next line and three other lines of `lines`, the answer at a random place."""
    lines = [line for line in lines if line.strip()]
    out = []
    for i in range(0, len(lines) - 2, 3):
        others = [lines[j] for j in rng.choice(len(lines), 6) if abs(j - (i + 2)) > 2][:3]
        choices = others[:]
        label = int(rng.integers(len(others) + 1))
        choices.insert(label, lines[i + 2])
        out.append({"context": f"{lines[i]}\n{lines[i + 1]}", "choices": choices, "label": label})
    return out


def write_jsonl(path: str, rows: list[dict], chars: str) -> str:
    keep = set(chars)
    clean = lambda s: "".join(c for c in ascii_text(s) if c in keep)
    rows = [{k: ([clean(x) for x in v] if isinstance(v, list) else clean(v) if isinstance(v, str) else v)
             for k, v in r.items()} for r in rows]
    atomic_write(path, lambda f: f.writelines(json.dumps(r) + "\n" for r in rows))
    return path


def build_tasks(folder: str, chars: str, args) -> dict:
    """task -> (train file, eval file), JSONL in `folder`, text limited to the corpus' characters."""
    os.makedirs(folder, exist_ok=True)
    ag = os.path.join(SHARED, "finetune", "agnews")
    ag_rows = lambda name, n: [{"text": unescape(r[0]), "label": r[1]} for r in read_tsv(os.path.join(ag, name),
                                                                                          False)[:n]]
    rte = os.path.join(SHARED, "finetune", "rte")
    rte_rows = lambda name: [{"premise": r[1], "hypothesis": r[2], "label": r[3]}
                             for r in read_tsv(os.path.join(rte, name), True)]
    tail = shakespeare_split()[1]
    half = len(tail) // 2
    rng = np.random.default_rng(0)
    splits = {"agnews": (ag_rows("dev.tsv", args.agnews_train), ag_rows("test.tsv", args.agnews_eval)),
              "rte": (rte_rows("train.tsv"), rte_rows("dev.tsv")),
              "next_line": (next_line_examples(tail[:half], rng)[: args.next_line_examples],
                            next_line_examples(tail[half:], rng)[: args.next_line_examples])}
    return {task: tuple(write_jsonl(os.path.join(folder, f"{task}_{split}.jsonl"), rows, chars)
                        for split, rows in zip(("train", "eval"), pair)) for task, pair in splits.items()}


def pretrain(workdir: str, corpus: str, args) -> dict:
    """Pre-trains the small char-level model on the corpus folder; returns train_and_evaluate's result."""
    c = pretrain_config()
    c.model.update(n_layer=args.n_layer, n_head=args.n_head, d_model=args.d_model, d_ff=4 * args.d_model,
                   block_size=args.block_size, dropout=0.1, norm_position="post")
    c.data.update(dataset=corpus, tokenizer="char")
    c.optim.update(learning_rate=args.pretrain_lr, min_learning_rate=args.pretrain_lr / 10, warmup_steps=50,
                   beta2=0.99, weight_decay=0.1)
    c.train.update(batch_size=args.pretrain_batch, max_steps=args.pretrain_steps, log_every=50,
                   eval_every=args.pretrain_steps, eval_max_windows=256, checkpoint_every=args.pretrain_steps,
                   progress_bar=False, tensorboard=False)
    return train_and_evaluate(c, workdir)


def init_checkpoint(workdir: str, model_cfg, tokenizer, seed: int) -> str:
    """A run folder holding `model_cfg` with fresh N(0, 0.02) weights (a model without pre-training)."""
    if ckpt_lib.newest_meta(workdir) is None:
        params = init_params(model_cfg, jax.random.PRNGKey(1000 + seed))
        ckpt = ckpt_lib.Checkpointer(workdir)
        ckpt.save(1, params, {"unused": np.zeros(())}, {"step": np.ones((), np.int32)},
                  {"model": model_cfg.to_dict(), "tokenizer": tokenizer.meta()})
        ckpt.wait()
        ckpt.close()
    return workdir


def random_init(workdir: str, pretrained: str, seed: int) -> str:
    """The pre-trained model's architecture and tokenizer with fresh weights."""
    if ckpt_lib.newest_meta(workdir) is None:
        source = sources.load(pretrained)
        init_checkpoint(workdir, source.config, source.tokenizer, seed)
    return workdir


def finetune_task(task: str, files: tuple, init_from: str, seed: int, workdir: str, args) -> dict:
    """One fine-tuning run with the default recipe (the width rule); returns the eval accuracy after each epoch
    and the majority."""
    kind = {"agnews": "classification", "rte": "entailment", "next_line": "multiple_choice"}[task]
    c = finetune_config(kind)
    c.init_from, c.seed = init_from, seed
    c.data.update(train_file=files[0], eval_file=files[1])
    c.model.max_length = args.max_length
    c.train.update(epochs=args.epochs, eval_batch_size=64, progress_bar=False, tensorboard=False, max_to_keep=1)
    result = finetune(c, workdir)
    rows = metrics_lib.read_metrics(os.path.join(workdir, "metrics.jsonl"))
    accuracies = [r["eval_accuracy"] for r in rows if "eval_accuracy" in r]
    return {"accuracy": accuracies, "majority": result["eval_majority"], "learning_rate": result["learning_rate"],
            "aux_lm_weight": result["aux_lm_weight"], "wall_s": result["wall_s"]}


def spread(values: list[float]) -> str:
    """'mean ± sample std (min-max)' in percent; one value alone has no spread."""
    pct = [100 * v for v in values]
    if len(pct) == 1:
        return f"{pct[0]:.1f}"
    return f"{statistics.mean(pct):.1f} ± {statistics.stdev(pct):.1f} ({min(pct):.1f} to {max(pct):.1f})"


def table(results: dict, seeds: list[int]) -> str:
    """Markdown: one row per task, final accuracy of each init over the seeds done so far."""
    lines = ["| task | majority class | pre-trained | random init | difference (pre-trained - random) | seeds |",
             "|---|---|---|---|---|---|"]
    for task in TASKS:
        done = [s for s in seeds if f"{task}/pretrained/{s}" in results and f"{task}/random/{s}" in results]
        if not done:
            continue
        final = lambda init: [results[f"{task}/{init}/{s}"]["accuracy"][-1] for s in done]
        diffs = [a - b for a, b in zip(final("pretrained"), final("random"))]
        majority = results[f"{task}/pretrained/{done[0]}"]["majority"]
        lines.append(f"| {task} | {100 * majority:.1f} | {spread(final('pretrained'))} | {spread(final('random'))} "
                     f"| {spread(diffs)} | {', '.join(map(str, done))} |")
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/finetune_ablation", help="folder for corpus, runs, results.json, table.md")
    p.add_argument("--seeds", default="0,1,2", help="fine-tuning seeds (random init: its weights' seed too)")
    p.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated subset of {','.join(TASKS)}")
    p.add_argument("--n_layer", type=int, default=4)
    p.add_argument("--n_head", type=int, default=4)
    p.add_argument("--d_model", type=int, default=64)
    p.add_argument("--block_size", type=int, default=128, help="characters of context")
    p.add_argument("--pretrain_steps", type=int, default=300)
    p.add_argument("--pretrain_batch", type=int, default=16)
    p.add_argument("--pretrain_lr", type=float, default=2e-3)
    p.add_argument("--agnews_train", type=int, default=600, help="AG News training examples (dev.tsv's first N)")
    p.add_argument("--agnews_eval", type=int, default=500, help="AG News eval examples (test.tsv's first N)")
    p.add_argument("--next_line_examples", type=int, default=200, help="next-line examples per split")
    p.add_argument("--max_length", type=int, default=64, help="characters per fine-tuning sequence")
    p.add_argument("--epochs", type=int, default=3)
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    # the runs share their shapes: compile each program once, not once per seed and init
    jax.config.update("jax_compilation_cache_dir", os.path.join(os.path.abspath(args.out), "jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    seeds, tasks = [int(s) for s in args.seeds.split(",")], args.tasks.split(",")
    results_path = os.path.join(args.out, "results.json")
    results = json.load(open(results_path)) if os.path.exists(results_path) else {}
    chars = build_corpus(os.path.join(args.out, "corpus"))
    files = build_tasks(os.path.join(args.out, "tasks"), chars, args)
    pre_dir = os.path.join(args.out, "pretrained")
    results.setdefault("pretraining", pretrain(pre_dir, os.path.join(args.out, "corpus"), args))
    for seed in seeds:  # seed-major: an interrupted run still has whole seeds to report
        for task in tasks:
            for init in ("pretrained", "random"):
                key = f"{task}/{init}/{seed}"
                if key in results:
                    continue
                init_from = pre_dir if init == "pretrained" else random_init(
                    os.path.join(args.out, f"random_init_{seed}"), pre_dir, seed)
                t0 = time.time()
                results[key] = finetune_task(task, files[task], init_from, seed,
                                             os.path.join(args.out, "runs", key.replace("/", "_")), args)
                print(f"{key}: accuracy per epoch {results[key]['accuracy']} ({time.time() - t0:.0f} s)", flush=True)
                write_json(results_path, results)
    text = table(results, seeds)
    atomic_write(os.path.join(args.out, "table.md"), lambda f: f.write(text + "\n"))
    print(text)


if __name__ == "__main__":
    main()
