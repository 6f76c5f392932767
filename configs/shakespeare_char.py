"""Character-level tiny shakespeare: the laptop-CPU model. Reaches val loss 1.82-1.83 on the whole val split
(seeds 0 and 1) in about 48 s on a 2-core CPU, start-up and compilation included:
python train.py --config=configs/shakespeare_char.py

Tuned for wall time to val loss 1.88 (docs/performance.md): for a run this short, depth costs more than it gives
(4 layers at the same time budget end near 1.89), and a high learning rate pays."""

from gpt_jax.config import default_config


def get_config():
    c = default_config()
    c.model.n_layer = 2  # blocks
    c.model.n_head = 4  # heads of 32
    c.model.d_model = 128  # width
    c.model.d_ff = 512  # 4 x d_model
    c.model.block_size = 64  # characters of context
    c.model.dropout = 0.0  # the run is far too short to overfit
    c.model.norm_position = "pre"  # GPT-2 style trains faster at high learning rates

    c.data.dataset = "shakespeare"  # the embedded corpus
    c.data.tokenizer = "char"  # 65 characters

    c.optim.learning_rate = 6e-3
    c.optim.min_learning_rate = 1e-4
    c.optim.warmup_steps = 50
    c.optim.beta2 = 0.99  # small batches: a shorter second-moment memory
    c.optim.weight_decay = 0.1
    c.optim.grad_clip = 1.0

    c.train.batch_size = 16
    c.train.max_steps = 1100
    c.train.log_every = 100
    c.train.eval_every = 550
    c.train.eval_batch_size = 256
    c.train.eval_max_windows = 0  # the whole val split (1,742 windows of 64)
    c.train.checkpoint_every = 550

    c.sample.prompt = "ROMEO:"
    c.sample.max_new_tokens = 500
    c.sample.temperature = 0.8
    c.sample.top_k = 0
    return c
