"""Single-text classification (GPT-1 format `start text extract`), e.g. sentiment or topic:

    python finetune.py --config=configs/finetune_classification.py --config.init_from=runs/shakespeare \
        --config.data.train_file=mydata/train.jsonl --config.data.eval_file=mydata/dev.jsonl

JSONL lines look like {"text": "...", "label": "positive"}; a TSV needs a header naming `text` and `label`
(or set data.columns / data.header / data.column_names). AG News (no header, escaped text): add
--config.data.header=False --config.data.column_names=text,label --config.data.unescape=True
"""

from gpt_jax.finetune.config import default_config


def get_config():
    c = default_config("classification")
    c.init_from = ""  # required: a train.py workdir (runs/shakespeare), gpt2, openai-gpt or a HF model folder
    c.data.train_file = ""  # required: labelled training examples (.jsonl or .tsv)
    c.data.eval_file = ""  # labelled examples scored after every epoch ("" = none)
    c.data.columns.text = "text"  # JSON key / TSV column of the text
    c.data.columns.label = "label"  # JSON key / TSV column of the label (any strings; ids in sorted order)
    c.aux_lm_weight = -1.0  # -1: the width rule (the paper's 0.5 at d_model >= 768, off below); paper: 0.5
    c.optim.learning_rate = 0.0  # 0: the width rule (6.25e-5 x 768 / d_model); the paper's recipe: 6.25e-5
    c.train.batch_size = 32  # the paper's batch size
    c.train.epochs = 3  # the paper's 3 epochs
    return c
