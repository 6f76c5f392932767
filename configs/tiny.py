"""A model small enough for tests and smoke runs: seconds on one CPU core."""

from gpt_jax.config import default_config


def get_config():
    c = default_config()
    c.model.n_layer = 2  # two blocks
    c.model.n_head = 2  # two heads of 16
    c.model.d_model = 32
    c.model.d_ff = 128
    c.model.block_size = 32  # context
    c.model.dropout = 0.1  # kept on, so tests exercise the dropout keys
    c.model.norm_position = "pre"

    c.data.tokenizer = "char"  # 65 characters of tiny shakespeare

    c.optim.learning_rate = 3e-3
    c.optim.warmup_steps = 5
    c.optim.weight_decay = 0.1

    c.train.batch_size = 8
    c.train.max_steps = 20
    c.train.log_every = 5
    c.train.eval_every = 10
    c.train.eval_batch_size = 16
    c.train.eval_max_windows = 64  # a quick, fixed subset of the val split
    c.train.checkpoint_every = 10
    c.train.progress_bar = False
    c.train.tensorboard = False

    c.sample.max_new_tokens = 20
    return c
