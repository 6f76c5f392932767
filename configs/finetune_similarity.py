"""Sentence similarity (e.g. STS-B): both orders `start a delim b extract` and `start b delim a extract`, their
final states added before the linear head. A real-valued score by default (MSE loss, Pearson / Spearman):

    python finetune.py --config=configs/finetune_similarity.py --config.init_from=runs/shakespeare \
        --config.data.train_file=sts/train.tsv --config.data.eval_file=sts/dev.tsv \
        --config.data.columns.text_a=sentence1 --config.data.columns.text_b=sentence2 --config.data.columns.label=score

JSONL lines look like {"text_a": "...", "text_b": "...", "label": 3.8}. For paraphrase classes (MRPC, QQP) set
--config.regression=False (accuracy).
"""

from gpt_jax.finetune.config import default_config


def get_config():
    c = default_config("similarity")
    c.init_from = ""  # required: a train.py workdir (runs/shakespeare), gpt2, openai-gpt or a HF model folder
    c.regression = True  # a score (targets standardized with the training mean / std); False: classes
    c.data.train_file = ""  # required: labelled training pairs (.jsonl or .tsv)
    c.data.eval_file = ""  # labelled pairs scored after every epoch ("" = none)
    c.data.columns.text_a = "text_a"  # JSON key / TSV column of the first text
    c.data.columns.text_b = "text_b"  # ... of the second text (the order does not matter to the model)
    c.data.columns.label = "label"  # the score (or class)
    c.aux_lm_weight = -1.0  # -1: the width rule (the paper's 0.5 at d_model >= 768, off below); paper: 0.5
    c.optim.learning_rate = 0.0  # 0: the width rule (6.25e-5 x 768 / d_model); the paper's recipe: 6.25e-5
    c.train.batch_size = 32
    c.train.epochs = 3
    return c
