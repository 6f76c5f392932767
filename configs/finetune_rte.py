"""RTE textual entailment (GLUE; GPT-1 format `start premise delim hypothesis extract`), from the
repository's shared data, `../shared/data/finetune/rte` next to the repository root:

    python finetune.py --config=configs/finetune_rte.py --config.init_from=runs/shakespeare

1,244 training / 139 evaluation pairs, labels entailment / not_entailment. GPT-1 (117M, BooksCorpus) reached
56.0% accuracy; a model pre-trained only on tiny shakespeare is near chance.
"""

import os

from gpt_jax.finetune.config import default_config

# resolved from this file, not the working directory: works from any folder, in any clone with shared/ beside it
DATA = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data",
                                     "finetune", "rte"))


def get_config():
    c = default_config("entailment")
    c.init_from = ""  # required: a train.py workdir (runs/shakespeare), gpt2, openai-gpt or a HF model folder
    c.data.train_file = os.path.join(DATA, "train.tsv")  # GLUE TSV: index, sentence1, sentence2, label
    c.data.eval_file = os.path.join(DATA, "dev.tsv")  # scored after every epoch
    c.data.header = True  # the first row names the columns
    c.data.columns.premise = "sentence1"  # GLUE's column names
    c.data.columns.hypothesis = "sentence2"
    c.data.columns.label = "label"  # entailment / not_entailment
    c.aux_lm_weight = -1.0  # -1: the width rule (the paper's 0.5 at d_model >= 768, off below); paper: 0.5
    c.optim.learning_rate = 0.0  # 0: the width rule (6.25e-5 x 768 / d_model); the paper's recipe: 6.25e-5
    c.train.batch_size = 32
    c.train.epochs = 3
    return c
