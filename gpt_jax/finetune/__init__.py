"""GPT-1 supervised fine-tuning (Radford et al. 2018, section 3.2): a pre-trained GPT, a linear head on each
sequence's final `extract` token, and the LM loss kept as an auxiliary objective.

| module | job |
|---|---|
| `config.py` | `default_config(task)`: every field a fine-tuning run reads (`configs/finetune_*.py` override it) |
| `data.py` | JSONL / TSV readers, AG News clean-up, the label <-> id mapping; errors are `FinetuneDataError` |
| `formats.py` | the paper's Figure 1 input formats as ids, truncation, padded batches (no JAX) |
| `model.py` | `FinetuneModel` (GPT + head), `loss_fn` (task + lambda * LM), vocabulary extension |
| `trainer.py` | `finetune(config, workdir)`, `predict(workdir, file)`, checkpoints, metrics |
"""

from gpt_jax.finetune.config import TASK_FIELDS, TASKS, default_config
from gpt_jax.finetune.data import FinetuneDataError
from gpt_jax.finetune.trainer import check_output, finetune, load_finetuned, predict

__all__ = ["TASKS", "TASK_FIELDS", "default_config", "FinetuneDataError", "finetune", "predict", "check_output",
           "load_finetuned"]
