"""Tokenize a corpus into token shards: python prepare.py --config=configs/gpt2.py --config.data.dataset=PATH

Writes WORKDIR/data (WORKDIR: --workdir, default runs/<config name>), which train.py with the same config and
workdir then reads without tokenizing again (it would prepare the same way on first use). Streams the corpus
through the tokenizer on every core; rerunning after an interruption, even kill -9, continues from the last
completed shard.
"""

import os

from absl import flags
from ml_collections import config_flags

from gpt_jax import data as data_lib
from gpt_jax.cli import start, workdir_of

config_flags.DEFINE_config_file("config", None, "config file, e.g. configs/gpt2.py", lock_config=True)
flags.DEFINE_string("workdir", None, "run folder whose data/ receives the shards; default runs/<config name>")
flags.mark_flags_as_required(["config"])
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments {argv[1:]}; flags look like --config.data.dataset=PATH")
    config = FLAGS.config
    data_dir = os.path.join(workdir_of(FLAGS.workdir), "data")
    tokenizer = None
    if config.train.get("init_from"):  # training will tokenize with the source model's tokenizer
        from gpt_jax import sources  # imports JAX: only runs that start from another model need it

        tokenizer = sources.load(config.train.init_from, what="train.init_from").tokenizer
    train, val, tokenizer = data_lib.prepare(config.data, data_dir, tokenizer)
    print(f"{data_dir}: {len(train):,} train + {len(val):,} val tokens ({tokenizer.name} tokenizer)")


if __name__ == "__main__":
    start(main)
