"""Tiny shakespeare in GPT-2 BPE tokens: a small GPT-1-style (post-LN) model to sample real words from and to
fine-tune (finetune.py) on a CPU. About 6 minutes on a 2-core CPU:
python train.py --config=configs/shakespeare.py"""

from gpt_jax.config import default_config


def get_config():
    c = default_config()
    c.model.n_layer = 4  # blocks
    c.model.n_head = 4  # heads of 32
    c.model.d_model = 128  # width: the 50,304 x 128 embedding is most of the 7.3M parameters
    c.model.d_ff = 512  # 4 x d_model
    c.model.block_size = 128  # BPE tokens of context
    c.model.vocab_size = 50257  # GPT-2 BPE
    c.model.dropout = 0.1  # 338k training tokens overfit quickly
    c.model.norm_position = "post"  # GPT-1 style, the model the fine-tuning stage expects

    c.data.dataset = "shakespeare"  # the embedded corpus
    c.data.tokenizer = "gpt2"

    c.optim.learning_rate = 1e-3
    c.optim.min_learning_rate = 1e-4
    c.optim.warmup_steps = 100
    c.optim.beta2 = 0.99
    c.optim.weight_decay = 0.1

    c.train.batch_size = 16
    c.train.max_steps = 1500
    c.train.log_every = 50
    c.train.eval_every = 500
    c.train.eval_batch_size = 64
    c.train.eval_max_windows = 0  # the whole val split
    c.train.checkpoint_every = 500

    c.sample.prompt = "ROMEO:"
    c.sample.max_new_tokens = 200
    c.sample.temperature = 0.8
    c.sample.top_k = 200
    return c
