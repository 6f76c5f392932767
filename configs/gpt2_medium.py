"""GPT-2 medium (355M with the padded vocab; "345M" in the GPT-2 paper): 24 blocks, d 1024, 16 heads, context 1024,
pre-LN. The recipe follows GPT-3's table for this size (lr 3e-4, ~0.5M-token batches) with nanoGPT's AdamW settings.
Fits one Colab v5e-1 (16 GB HBM) with microbatches of 16 x 1024 tokens in bfloat16 (`--compile_only=v5e-1`)."""

from gpt_jax.config import default_config


def get_config():
    c = default_config()
    c.model.n_layer = 24  # 24 blocks
    c.model.n_head = 16  # 16 heads of 64
    c.model.d_model = 1024  # width
    c.model.d_ff = 4096  # 4 x d_model
    c.model.block_size = 1024  # context
    c.model.vocab_size = 50257  # GPT-2 BPE (padded to 50304 rows inside the model)
    c.model.dropout = 0.0  # no dropout: pre-training from scratch (and the flash kernel applies)
    c.model.norm_position = "pre"  # LayerNorm before each sublayer, plus a final one
    c.model.tie_embeddings = True
    c.model.remat = "block"  # recompute each block in the backward pass: at 16 x 1024 tokens "dots" keeps 18.3 GiB

    c.data.tokenizer = "gpt2"

    c.optim.learning_rate = 3e-4  # GPT-3's peak lr at 350M
    c.optim.min_learning_rate = 3e-5  # cosine floor (lr / 10)
    c.optim.warmup_steps = 2000
    c.optim.beta1 = 0.9
    c.optim.beta2 = 0.95
    c.optim.weight_decay = 0.1
    c.optim.grad_clip = 1.0

    c.train.batch_size = 512  # sequences per step (0.5M tokens)
    c.train.grad_accum_steps = 32  # 16 sequences per microbatch on one chip (more chips: fewer are needed)
    c.train.max_steps = 600_000
    c.train.eval_every = 2000
    c.train.eval_batch_size = 16
    c.train.checkpoint_every = 2000
    return c
