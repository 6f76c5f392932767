"""Checks the fine-tuning learning-rate width rule (6.25e-5 x 768 / d_model) at three widths: the same small
char-level architecture at d_model 32, 64 and 128, fine-tuned on AG News (as in finetune_ablation.py) at the
rule's rate, a quarter of it and four times it, and at the paper's 6.25e-5. The models start from random init:
a pre-trained model per width is beyond a CPU budget, and the rule is about how a width takes Adam's steps.

    python benchmarks/finetune_width_rule.py --out=runs/width_rule

Writes results.json and table.md into --out (final eval accuracy per width and learning rate).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import finetune_ablation as ablation  # noqa: E402
import jax  # noqa: E402

from gpt_jax.config import ModelConfig  # noqa: E402
from gpt_jax.finetune.config import PAPER_LEARNING_RATE, width_learning_rate  # noqa: E402
from gpt_jax.tokenizer import CharTokenizer  # noqa: E402
from gpt_jax.utils import atomic_write, write_json  # noqa: E402

FACTORS = (0.25, 1.0, 4.0)  # multiples of the rule's rate


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/width_rule")
    p.add_argument("--widths", default="32,64,128")
    p.add_argument("--n_layer", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--agnews_train", type=int, default=480)
    p.add_argument("--agnews_eval", type=int, default=400)
    p.add_argument("--next_line_examples", type=int, default=0, help="unused here (the task files need it)")
    p.add_argument("--max_length", type=int, default=48)
    p.add_argument("--epochs", type=int, default=3)
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    jax.config.update("jax_compilation_cache_dir", os.path.join(os.path.abspath(args.out), "jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    results_path = os.path.join(args.out, "results.json")
    results = json.load(open(results_path)) if os.path.exists(results_path) else {}
    chars = ablation.build_corpus(os.path.join(args.out, "corpus"))
    files = ablation.build_tasks(os.path.join(args.out, "tasks"), chars, args)["agnews"]
    rows = ["| d_model | rule lr | rule / 4 | rule | rule x 4 | paper 6.25e-5 |", "|---|---|---|---|---|---|"]
    for width in [int(w) for w in args.widths.split(",")]:
        cfg = ModelConfig(n_layer=args.n_layer, n_head=max(1, width // 32), d_model=width, d_ff=4 * width,
                          block_size=128, vocab_size=len(chars), dropout=0.1, norm_position="post")
        init = ablation.init_checkpoint(os.path.join(args.out, f"init_d{width}"), cfg, CharTokenizer(chars), args.seed)
        rule, cells = width_learning_rate(width), []
        for lr in [f * rule for f in FACTORS] + [PAPER_LEARNING_RATE]:
            key = f"d{width}/lr{lr:.3g}"
            if key not in results:
                results[key] = ablation.finetune_task("agnews", files, init, args.seed,
                                                      os.path.join(args.out, "runs", key.replace("/", "_")), args, lr)
                write_json(results_path, results)
            cells.append(" / ".join(f"{100 * a:.1f}" for a in results[key]["accuracy"]))
        rows.append(f"| {width} | {rule:.3g} | " + " | ".join(cells) + " |")
    text = "\n".join(rows)
    atomic_write(os.path.join(args.out, "table.md"), lambda f: f.write(text + "\n"))
    print(text)


if __name__ == "__main__":
    main()
