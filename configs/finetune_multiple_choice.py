"""Multiple choice (e.g. RACE, Story Cloze): for each answer `start context delim answer extract`, one score
per sequence, a softmax over the example's answers (their number may vary between examples):

    python finetune.py --config=configs/finetune_multiple_choice.py --config.init_from=runs/shakespeare \
        --config.data.train_file=mc/train.jsonl --config.data.eval_file=mc/dev.jsonl

JSONL lines look like {"context": "...", "choices": ["...", "..."], "label": 1} (label: the right answer's
0-based index). In a TSV the answers are columns: --config.data.columns.choices=ending0,ending1,ending2,ending3
(empty cells are skipped).
"""

from gpt_jax.finetune.config import default_config


def get_config():
    c = default_config("multiple_choice")
    c.init_from = ""  # required: a train.py workdir (runs/shakespeare), gpt2, openai-gpt or a HF model folder
    c.data.train_file = ""  # required: labelled training examples (.jsonl or .tsv)
    c.data.eval_file = ""  # labelled examples scored after every epoch ("" = none)
    c.data.columns.context = "context"  # JSON key / TSV column of the context (story, passage + question)
    c.data.columns.choices = "choices"  # JSON key of the answer list, or comma-separated TSV answer columns
    c.data.columns.label = "label"  # index of the right answer
    c.aux_lm_weight = -1.0  # -1: the width rule (the paper's 0.5 at d_model >= 768, off below); paper: 0.5
    c.optim.learning_rate = 0.0  # 0: the width rule (6.25e-5 x 768 / d_model); the paper's recipe: 6.25e-5
    c.train.batch_size = 32  # examples per step, each with all its answers
    c.train.epochs = 3
    return c
