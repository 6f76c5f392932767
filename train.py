"""Train a GPT: python train.py --config=configs/shakespeare_char.py [--workdir=runs/x] [--config.train.max_steps=N]

Rerunning the same command resumes from the newest checkpoint in the workdir.
Fit check, before paying for an accelerator: python train.py --config=configs/gpt1.py --compile_only=v5e-1
(compiles the run's steps for that Cloud TPU type with libtpu, no TPU needed; prints one JSON line, exit 1 if the
run does not fit). --compile_only=here checks this machine's own devices.
"""

import json
import os
import sys

from absl import flags
from ml_collections import config_flags

from gpt_jax.cli import setup_jax, start, workdir_of

config_flags.DEFINE_config_file("config", None, "config file, e.g. configs/gpt1.py", lock_config=True)
flags.DEFINE_string("workdir", None, "run folder (checkpoints, logs, data cache); default runs/<config name>")
flags.DEFINE_string("compile_only", None, "only compile the train and eval steps for a Cloud TPU type (v5e-1, "
                    "v5e-4, v5e-8, v6e-1, v4-8, v5p-8, v5e-16, ...) or 'here', print the memory they need, and exit")
flags.mark_flags_as_required(["config"])
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments {argv[1:]}; flags look like --config.train.max_steps=100")
    if FLAGS.compile_only is not None:
        return check_fit(FLAGS.compile_only)
    setup_jax()
    from gpt_jax.train import train_and_evaluate

    train_and_evaluate(FLAGS.config, workdir_of(FLAGS.workdir))


def check_fit(target: str):
    """--compile_only: the report as the last line of stdout; exit 1 with the shortfall when the run does not fit."""
    if target != "here":
        os.environ["JAX_PLATFORMS"] = "cpu"  # compiling for a named TPU type: leave this machine's accelerators alone
    import jax  # after JAX_PLATFORMS; no persistent compilation cache, so compile_s is the real compile time

    del jax
    from gpt_jax import fit
    from gpt_jax.train import compile_only

    report = compile_only(FLAGS.config, workdir_of(FLAGS.workdir), target)
    print(json.dumps(report), flush=True)
    if not report["fits"]:
        print(f"error: {fit.shortfall(report)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    start(main, cpu_data_parallel=True)
