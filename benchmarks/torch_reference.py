"""The PyTorch yardstick: the same GPT (pre-LN, fused QKV, tied head, tanh GELU) in eager PyTorch on CPU,
fp32, torch.optim.AdamW, no torch.compile; times a train step (or cached greedy decoding with HF transformers)
and prints one JSON line, so the numbers in docs/performance.md can be re-measured on any machine.

    python benchmarks/torch_reference.py --shape=char      # 4 layers, d 128, context 64, batch 12, vocab 65
    python benchmarks/torch_reference.py --shape=124m      # 12 layers, d 768, context 256, batch 4, vocab 50304
    python benchmarks/torch_reference.py --shape=hf_sample # transformers GPT-2 124M, batch 1, 16 + 256 tokens

Needs `pip install torch transformers` (requirements-dev.txt); not used by the package.
"""

import argparse
import json
import math
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

SHAPES = {  # n_layer, n_head, d_model, block_size, batch, vocab
    "char": (4, 4, 128, 64, 12, 65),
    "124m": (12, 12, 768, 256, 4, 50304),
}


class Block(nn.Module):
    def __init__(self, d, h):
        super().__init__()
        self.h = h
        self.ln_1, self.ln_2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc, self.fc_proj = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln_1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.h, C // self.h).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C)
        x = x + self.proj(y)
        return x + self.fc_proj(F.gelu(self.fc(self.ln_2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self, n_layer, n_head, d, block, vocab):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, d), nn.Embedding(block, d)
        self.blocks = nn.ModuleList(Block(d, n_head) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(d)
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                std = 0.02 / math.sqrt(2 * n_layer) if name.endswith(("proj.weight", "fc_proj.weight")) else 0.02
                nn.init.normal_(p, 0.0, std)

    def forward(self, idx, targets):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        for b in self.blocks:
            x = b(x)
        logits = self.ln_f(x) @ self.wte.weight.T  # tied head
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.reshape(-1))


def time_train(shape, steps, warmup):
    L, H, d, T, B, V = SHAPES[shape]
    torch.manual_seed(0)
    model = GPT(L, H, d, T, V)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=1e-3, betas=(0.9, 0.95))
    x = torch.randint(0, V, (B, T + 1))
    times = []
    for i in range(warmup + steps):
        t = time.perf_counter()
        loss = model(x[:, :-1], x[:, 1:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    ms = 1000 * statistics.median(times)
    return {"mode": "train", "shape": shape, "ms_per_step": round(ms, 3), "tokens_per_sec": round(B * T / ms * 1000, 1)}


def time_hf_sample(steps, warmup, new_tokens=256, prompt_len=16):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config()).eval()  # GPT-2 124M, random weights
    prompt = torch.randint(0, 50257, (1, prompt_len))
    times = []
    with torch.no_grad():
        for i in range(warmup + steps):
            t = time.perf_counter()
            out = model.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                                 use_cache=True, pad_token_id=0)
            if i >= warmup:
                times.append(time.perf_counter() - t)
    assert out.shape[1] == prompt_len + new_tokens
    s = statistics.median(times)
    return {"mode": "sample", "shape": "hf_gpt2_124m", "batch_size": 1, "new_tokens": new_tokens,
            "ms_per_token": round(1000 * s / new_tokens, 3), "tokens_per_sec": round(new_tokens / s, 1)}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--shape", choices=[*SHAPES, "hf_sample"], default="char")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    out = time_hf_sample(a.steps, a.warmup) if a.shape == "hf_sample" else time_train(a.shape, a.steps, a.warmup)
    out.update(torch=torch.__version__, threads=torch.get_num_threads())
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
