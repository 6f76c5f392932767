"""GPT-2 small (124M): pre-LN with a final LayerNorm, context 1024, trained with nanoGPT's recipe
(AdamW 6e-4, betas 0.9 / 0.95, weight decay 0.1, clipping 1.0). For a TPU/GPU."""

from gpt_jax.config import default_config


def get_config():
    c = default_config()
    c.model.n_layer = 12  # 12 blocks
    c.model.n_head = 12  # 12 heads
    c.model.d_model = 768  # width
    c.model.d_ff = 3072  # 4 x d_model
    c.model.block_size = 1024  # context
    c.model.vocab_size = 50257  # GPT-2 BPE (padded to 50304 rows inside the model)
    c.model.dropout = 0.0  # no dropout for pre-training from scratch at this scale
    c.model.norm_position = "pre"  # LayerNorm before each sublayer, plus a final one
    c.model.tie_embeddings = True

    c.data.tokenizer = "gpt2"

    c.optim.learning_rate = 6e-4  # peak lr
    c.optim.min_learning_rate = 6e-5  # cosine floor (lr / 10)
    c.optim.warmup_steps = 2000
    c.optim.beta1 = 0.9
    c.optim.beta2 = 0.95
    c.optim.weight_decay = 0.1
    c.optim.grad_clip = 1.0

    c.train.batch_size = 480  # sequences per step (about 0.5M tokens)
    c.train.grad_accum_steps = 15  # 32 sequences per microbatch: 11.3 GiB of a v5e-1's 15.75 (--compile_only=v5e-1)
    c.train.max_steps = 600_000
    c.train.eval_every = 2000
    c.train.checkpoint_every = 2000
    return c
