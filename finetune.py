"""Fine-tune a pre-trained GPT on a labelled task (GPT-1's second stage), then optionally predict labels:

    python finetune.py --config=configs/finetune_rte.py --config.init_from=runs/shakespeare
    python finetune.py --config=configs/finetune_classification.py --config.init_from=gpt2 \
        --config.data.train_file=mydata/train.jsonl --config.data.eval_file=mydata/dev.jsonl
    python finetune.py --workdir=runs/finetune_rte --predict_file=new.tsv [--predict_out=preds.jsonl]

Rerunning the same command resumes from the newest checkpoint in the workdir (a finished run is only
evaluated). Without --config, --predict_file uses the fine-tuned run in --workdir as it is.
"""

import os

from absl import flags
from ml_collections import config_flags

from gpt_jax.cli import setup_jax, start, workdir_of

config_flags.DEFINE_config_file("config", None, "config file, e.g. configs/finetune_rte.py", lock_config=True)
flags.DEFINE_string("workdir", None, "run folder (checkpoints, metrics.jsonl); default runs/<config name>")
flags.DEFINE_string("predict_file", None, "after training: predict a label for each example of this JSONL/TSV "
                    "file (its label column, if any, is scored)")
flags.DEFINE_string("predict_out", None, "where the predictions go, one JSON line per example "
                    "(default WORKDIR/predictions.jsonl)")
flags.DEFINE_bool("overwrite", False, "let --predict_out replace an existing file")
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments {argv[1:]}; flags look like --config.train.epochs=3")
    config = FLAGS.config
    if config is None and not (FLAGS.workdir and FLAGS.predict_file):
        raise ValueError("pass --config=configs/finetune_*.py to fine-tune, or --workdir=RUN and --predict_file=FILE "
                         "to predict with a fine-tuned run")
    workdir = workdir_of(FLAGS.workdir)
    setup_jax()
    from gpt_jax import finetune

    if FLAGS.predict_file:  # fail before training, not after
        if not os.path.isfile(FLAGS.predict_file):
            raise finetune.FinetuneDataError(f"predict_file {FLAGS.predict_file} not found")
        finetune.check_output(FLAGS.predict_out or os.path.join(workdir, "predictions.jsonl"), FLAGS.overwrite)
    if config is not None:
        finetune.finetune(config, workdir)
    if FLAGS.predict_file:
        finetune.predict(workdir, FLAGS.predict_file, FLAGS.predict_out, overwrite=FLAGS.overwrite,
                         data_cfg=config.data if config is not None else None)


if __name__ == "__main__":
    start(main, cpu_data_parallel=True)
