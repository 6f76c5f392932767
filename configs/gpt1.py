"""GPT-1 (Radford et al. 2018, "Improving Language Understanding by Generative Pre-Training"), 117M.

Paper hyper-parameters, except the tokenizer: GPT-2's BPE (50,257 ids) instead of the paper's 40k BPE,
which tiktoken does not ship. Meant for a TPU/GPU: `python train.py --config=configs/gpt1.py`.
"""

from gpt_jax.config import default_config


def get_config():
    c = default_config()
    c.model.n_layer = 12  # 12 decoder blocks
    c.model.n_head = 12  # 12 attention heads
    c.model.d_model = 768  # 768-d states
    c.model.d_ff = 3072  # 3072-d position-wise feed-forward
    c.model.block_size = 512  # contiguous sequences of 512 tokens
    c.model.vocab_size = 50257  # tiktoken GPT-2 BPE
    c.model.dropout = 0.1  # residual, embedding and attention dropout 0.1
    c.model.norm_position = "post"  # LayerNorm after each residual add, no final LayerNorm
    c.model.tie_embeddings = True  # output layer tied to the token embedding

    c.data.dataset = "shakespeare"  # replace with your corpus (the paper used BooksCorpus)
    c.data.tokenizer = "gpt2"  # BPE

    c.optim.learning_rate = 2.5e-4  # Adam, max lr 2.5e-4
    c.optim.warmup_steps = 2000  # increased linearly from 0 over the first 2000 updates
    c.optim.schedule = "cosine"  # then annealed to 0 with a cosine schedule
    c.optim.min_learning_rate = 0.0
    c.optim.beta1 = 0.9  # Adam defaults (the paper gives none)
    c.optim.beta2 = 0.999
    c.optim.weight_decay = 0.01  # modified L2 (decoupled) w = 0.01 on all non bias or gain weights
    c.optim.grad_clip = 1.0  # not in the paper; a safety net that rarely triggers

    c.train.batch_size = 64  # minibatches of 64 sequences
    c.train.max_steps = 100 * 7000  # "100 epochs" of BooksCorpus; set to what your corpus needs
    c.train.eval_every = 2000
    c.train.checkpoint_every = 2000
    return c
