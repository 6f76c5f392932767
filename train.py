"""Train a GPT: python train.py --config=configs/shakespeare_char.py [--workdir=runs/x] [--config.train.max_steps=N]

Rerunning the same command resumes from the newest checkpoint in the workdir.
"""

from absl import flags
from ml_collections import config_flags

from gpt_jax.cli import setup_jax, start, workdir_of

config_flags.DEFINE_config_file("config", None, "config file, e.g. configs/gpt1.py", lock_config=True)
flags.DEFINE_string("workdir", None, "run folder (checkpoints, logs, data cache); default runs/<config name>")
flags.mark_flags_as_required(["config"])
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments {argv[1:]}; flags look like --config.train.max_steps=100")
    setup_jax()
    from gpt_jax.train import train_and_evaluate

    train_and_evaluate(FLAGS.config, workdir_of(FLAGS.workdir))


if __name__ == "__main__":
    start(main, cpu_data_parallel=True)
