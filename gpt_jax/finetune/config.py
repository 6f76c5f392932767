"""Every field a fine-tuning run reads, with its default: `configs/finetune_*.py` start from this and override.

Defaults follow the GPT-1 paper's fine-tuning recipe (section 4.1): batch 32, 3 epochs, linear warmup over 0.2%
of the steps then linear decay to 0, dropout 0.1 on the classifier. Its learning rate (6.25e-5) and auxiliary LM
weight (lambda = 0.5) were tuned for a 768-wide model; left unset (learning_rate 0, aux_lm_weight -1) they follow
the model's width (`width_learning_rate`, `width_aux_lm_weight`; evidence in docs/finetune_ablation.md). The
paper's recipe is one flag pair away: --config.optim.learning_rate=6.25e-5 --config.aux_lm_weight=0.5
"""

from __future__ import annotations

from ml_collections import ConfigDict

from gpt_jax.config import COUNT, FRACTION, NON_NEGATIVE, OPTIM_RANGES, POSITIVE_INT, Range, default_optim

PAPER_LEARNING_RATE = 6.25e-5  # GPT-1's fine-tuning learning rate, for its d_model 768
PAPER_AUX_LM_WEIGHT = 0.5  # GPT-1's lambda
PAPER_WIDTH = 768  # GPT-1's d_model
AUTO_LEARNING_RATE = 0.0  # optim.learning_rate value meaning "follow the width rule"
AUTO_AUX_LM_WEIGHT = -1.0  # aux_lm_weight value meaning "follow the width rule"

TASKS = ("classification", "entailment", "similarity", "multiple_choice")

# The text fields of each task's examples (besides "label"), in the order they enter the input format.
TASK_FIELDS = {
    "classification": ("text",),
    "entailment": ("premise", "hypothesis"),
    "similarity": ("text_a", "text_b"),
    "multiple_choice": ("context", "choices"),
}


def check_task(task: str) -> str:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; use one of {', '.join(TASKS)}")
    return task


def width_learning_rate(d_model: int) -> float:
    """The paper's 6.25e-5 at d_model 768, scaled as 1 / d_model (Adam's update size per weight is set by the
    learning rate, and a unit's input sums d_model of them, as in muP): 3.75e-4 at d 128, 3e-5 for GPT-2 XL."""
    return PAPER_LEARNING_RATE * PAPER_WIDTH / int(d_model)


def width_aux_lm_weight(d_model: int) -> float:
    """The paper's lambda at its width and above; off for narrower models, where the 50k-way LM term (about 5 nats
    beside a 2-way task loss of 0.69) holds a small classifier at the majority class."""
    return PAPER_AUX_LM_WEIGHT if int(d_model) >= PAPER_WIDTH else 0.0


def resolve_recipe(learning_rate: float, aux_lm_weight: float, d_model: int) -> tuple[float, float, str]:
    """(learning rate, aux LM weight, where they came from): the configured values, or the width rule's where
    they are left unset (AUTO_*)."""
    learning_rate, aux_lm_weight = float(learning_rate), float(aux_lm_weight)
    if learning_rate < 0:
        raise ValueError(f"optim.learning_rate must be > 0, or 0 for the width rule; got {learning_rate}")
    if aux_lm_weight < 0 and aux_lm_weight != AUTO_AUX_LM_WEIGHT:
        raise ValueError(f"aux_lm_weight must be >= 0, or -1 for the width rule; got {aux_lm_weight}")
    auto = []
    if learning_rate == AUTO_LEARNING_RATE:
        learning_rate = width_learning_rate(d_model)
        auto.append(f"lr 6.25e-5 x 768 / d_model {d_model}")
    if aux_lm_weight == AUTO_AUX_LM_WEIGHT:
        aux_lm_weight = width_aux_lm_weight(d_model)
        auto.append(f"aux LM {'on' if aux_lm_weight else 'off'} at d_model {'>=' if aux_lm_weight else '<'} 768")
    source = f"width rule: {', '.join(auto)}" if auto else "as configured"
    return learning_rate, aux_lm_weight, source


def default_config(task: str = "classification"):
    check_task(task)
    c = ConfigDict()
    c.task = task  # classification | entailment | similarity | multiple_choice (the paper's Figure 1 formats)
    c.init_from = ""  # pre-trained model: a train.py workdir (newest checkpoint), gpt2 / openai-gpt / a HF folder
    c.seed = 0  # head and special-token init, dropout keys fold_in(key, step), example order per (seed, epoch)
    # lambda in L = L_task + lambda * L_lm, LM loss on the task's own text (0 = off; -1 = the width rule: the
    # paper's 0.5 at d_model >= 768, off below)
    c.aux_lm_weight = AUTO_AUX_LM_WEIGHT
    c.regression = False  # similarity only: one real-valued score, MSE loss, Pearson/Spearman (else classes)

    c.data = ConfigDict()
    c.data.train_file = ""  # labelled examples: .jsonl (one JSON object per line) or .tsv
    c.data.eval_file = ""  # labelled examples scored after every epoch ("" = no evaluation)
    c.data.format = "auto"  # "jsonl" | "tsv" | "auto" (.jsonl/.json -> jsonl, .tsv/.txt -> tsv)
    c.data.header = True  # TSV: the first row names the columns
    c.data.column_names = ""  # TSV with header=False: its columns' names, comma-separated, e.g. "text,label"
    # task field -> JSON key / TSV column; multiple choice TSV: choices="ending0,ending1,..." (empty cells skipped)
    c.data.columns = ConfigDict({name: name for name in TASK_FIELDS[task] + ("label",)})
    c.data.labels = ""  # label names in id order, comma-separated ("" = the training file's labels, sorted)
    c.data.unescape = False  # undo AG News-style escapes: " #39;" refs, HTML entities and tags, "\" line breaks
    c.data.max_examples = 0  # read only the first N examples of each file (0 = all)

    c.model = ConfigDict()
    c.model.dropout = 0.1  # transformer dropout while fine-tuning (the architecture comes from init_from)
    c.model.clf_dropout = 0.1  # dropout on the extract token's hidden state, before the linear head
    c.model.max_length = 0  # tokens per sequence, special tokens included (0 = the model's block_size)
    c.model.dtype = "auto"  # compute dtype: "auto" (bfloat16 on TPU/GPU, float32 on CPU), "float32", "bfloat16"

    c.optim = default_optim()  # AdamW fields of pre-training, with the paper's fine-tuning values:
    # peak learning rate (0 = the width rule: 6.25e-5 x 768 / d_model, the paper's value at its width)
    c.optim.learning_rate = AUTO_LEARNING_RATE
    c.optim.schedule = "linear"  # linear warmup from 0, then linear decay to 0 ("cosine" | "constant")
    del c.optim["warmup_steps"]  # derived from warmup_fraction and the run's length
    c.optim.warmup_fraction = 0.002  # warmup over 0.2% of the optimizer steps

    c.train = ConfigDict()
    c.train.batch_size = 32  # examples per optimizer step (multiple choice: each with all its answers)
    c.train.epochs = 3  # passes over the training file
    c.train.grad_accum_steps = 1  # microbatches per step (batch_size must divide evenly)
    c.train.eval_batch_size = 64  # examples per evaluation / prediction batch
    c.train.log_every = 20  # steps between train-loss logs
    c.train.max_to_keep = 1  # checkpoints kept (one per epoch is written; 0 = all)
    c.train.progress_bar = True  # tqdm bar with the loss
    c.train.tensorboard = True  # also write TensorBoard event files (tensorboardX)
    return c


FINETUNE_RANGES = {  # the numbers of a fine-tuning config and their valid ranges (gpt_jax.config.check_ranges)
    "seed": Range(0, 2**31 - 1, integer=True), **OPTIM_RANGES,
    "optim.learning_rate": NON_NEGATIVE, "aux_lm_weight": Range(-1),  # 0 and -1: the width rule
    "optim.warmup_fraction": Range(0, 1), "data.max_examples": COUNT,
    "model.dropout": FRACTION, "model.clf_dropout": FRACTION, "model.max_length": COUNT,
    "train.batch_size": POSITIVE_INT, "train.epochs": POSITIVE_INT, "train.grad_accum_steps": POSITIVE_INT,
    "train.eval_batch_size": POSITIVE_INT, "train.log_every": POSITIVE_INT, "train.max_to_keep": COUNT,
}
