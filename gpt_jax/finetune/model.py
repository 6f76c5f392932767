"""The pre-trained GPT with a linear head on each sequence's extract token, and the fine-tuning loss.

Parameters: {"gpt": GPT's params (wte has the start/delim/extract rows), "head": {"kernel", "bias"}}.
Shapes: B examples, S sequences per example, T tokens, C = d_model, K outputs of the head.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from gpt_jax import optim
from gpt_jax.config import ModelConfig
from gpt_jax.losses import cross_entropy, lm_loss
from gpt_jax.model import GPT, head_weight
from gpt_jax.utils import NEG_INF


class FinetuneModel(nn.Module):
    cfg: ModelConfig  # extra_tokens >= 3
    task: str
    n_outputs: int  # classes; 1 for a regression score or a multiple-choice answer's score
    clf_dropout: float = 0.1

    @nn.compact
    def __call__(self, ids, lengths, *, train: bool = False, with_lm: bool = False):
        """ids (B, S, T), lengths (B, S) -> (task outputs, GPT's final hidden states (B*S, T, C) or None).

        Task outputs: (B, K) class logits (similarity: from the sum of both orders' states; regression K = 1),
        or (B, S) answer scores for multiple choice, -1e30 where an example has fewer answers.
        """
        B, S, T = ids.shape
        gpt = GPT(self.cfg, name="gpt")
        h, _ = gpt.hidden(ids.reshape(B * S, T), train=train)  # (B*S, T, C)
        last = jnp.maximum(lengths.reshape(B * S) - 1, 0)  # each sequence's own extract position
        x = jnp.take_along_axis(h, last[:, None, None], axis=1)[:, 0].astype(jnp.float32).reshape(B, S, -1)
        if self.task == "similarity":
            x = x.sum(axis=1, keepdims=True)  # h(a delim b) + h(b delim a): (B, 1, C)
        x = nn.Dropout(self.clf_dropout)(x, deterministic=not train)
        out = nn.Dense(self.n_outputs, kernel_init=nn.initializers.normal(0.02), name="head")(x)  # (B, S', K)
        if self.task == "multiple_choice":
            out = jnp.where(lengths > 0, out[..., 0], NEG_INF)  # (B, S)
        else:
            out = out[:, 0]  # (B, K)
        if with_lm and self.is_initializing():
            gpt.logits(h[:, :1])  # creates an untied lm_head's parameters; the LM loss reads them in `loss_fn`
        return out, (h if with_lm else None)


def task_losses(out, labels, regression: bool):
    """Per-example task loss (B,): cross-entropy over classes / answers, or squared error of the score."""
    if regression:
        return jnp.square(out[:, 0] - labels)
    return cross_entropy(out, labels)


def lm_target_mask(ids, lengths, vocab_size: int):
    """(B, S, T) ids -> (B, S, T-1) float32: 1 where the next-token target is a real token, inside the sequence
    (not padding) and not a special token (ids >= vocab_size)."""
    inside = jnp.arange(1, ids.shape[-1]) < lengths[..., None]
    return (inside & (ids[..., 1:] < vocab_size)).astype(jnp.float32)


def normalize(batch, vocab_size: int, with_lm: bool):
    """The batch with its loss weights normalized over the whole batch (see `gpt_jax.optim`): `task_weights` (B,)
    w / sum(w), and with the LM term `lm_weights` (B, S, T-1) over every real next-token target of the weighted
    rows."""
    w = batch["weights"]
    out = dict(batch, task_weights=w / jnp.maximum(w.sum(), 1.0))
    if with_lm:
        targets = lm_target_mask(batch["ids"], batch["lengths"], vocab_size) * w[:, None, None]
        out["lm_weights"] = targets / jnp.maximum(targets.sum(), 1.0)
    return out


def _forward(params, model: FinetuneModel, batch, rng, train: bool, with_lm: bool, rows):
    """(task outputs, hidden states (B*S, T, C) or None); in training each example draws its dropout masks from
    fold_in(rng, its row in the global batch)."""
    ids, lengths = batch["ids"], batch["lengths"]
    if not (train and (model.cfg.dropout > 0 or model.clf_dropout > 0)):
        return model.apply({"params": params}, ids, lengths, with_lm=with_lm)
    rows = jnp.arange(ids.shape[0]) if rows is None else rows

    def one_example(ids_1, lengths_1, key):  # (S, T), (S,) -> (K,) or (S,), (S, T, C)
        out, h = model.apply({"params": params}, ids_1[None], lengths_1[None], train=True, with_lm=with_lm,
                             rngs={"dropout": key})
        return out[0], h

    out, h = optim.per_row(one_example, rng, rows, ids, lengths)
    return out, (None if h is None else h.reshape(-1, *h.shape[2:]))


def weighted_loss(params, model: FinetuneModel, batch, rng=None, train: bool = False, aux_lm_weight: float = 0.5,
                  regression: bool = False, rows=None):
    """L = L_task + aux_lm_weight * L_lm as sums weighted by `normalize`'s weights; (L, parts)."""
    with_lm = aux_lm_weight > 0
    out, h = _forward(params, model, batch, rng, train, with_lm, rows)
    task = (task_losses(out, batch["labels"], regression) * batch["task_weights"]).sum()
    parts = {"task_loss": task}
    if not with_lm:
        return task, parts
    B, S, T = batch["ids"].shape
    targets = batch["ids"].reshape(B * S, T)[:, 1:]
    parts["lm_loss"] = lm_loss(h[:, :-1], head_weight(params["gpt"], model.cfg), targets,
                               batch["lm_weights"].reshape(B * S, T - 1), model.cfg.vocab_size)
    return task + aux_lm_weight * parts["lm_loss"], parts


def loss_fn(params, model: FinetuneModel, batch, rng=None, train: bool = False, aux_lm_weight: float = 0.5,
            regression: bool = False):
    """L = L_task + aux_lm_weight * L_lm, each a mean over the batch's weighted examples / real tokens; (L, parts)."""
    batch = normalize(batch, model.cfg.vocab_size, aux_lm_weight > 0)
    return weighted_loss(params, model, batch, rng, train, aux_lm_weight, regression)


def head_params(d_model: int, n_outputs: int, rng) -> dict:
    """A fresh linear head (as nn.Dense initializes it in `FinetuneModel`)."""
    return {"kernel": 0.02 * jax.random.normal(rng, (d_model, n_outputs), jnp.float32),
            "bias": jnp.zeros((n_outputs,), jnp.float32)}


def extend_vocab(cfg: ModelConfig, params: dict, extra_tokens: int, rng) -> tuple[ModelConfig, dict]:
    """Pre-trained GPT params -> params with `extra_tokens` new learned ids after the vocabulary (rows drawn from
    N(0, 0.02); padding rows appended if the padded vocabulary grows; an untied lm_head gets zero rows, whose logits
    are masked anyway)."""
    if cfg.extra_tokens:
        raise ValueError(f"the pre-trained model already has {cfg.extra_tokens} extra tokens; init_from takes a "
                         "pre-training run, not a fine-tuned one")
    new_cfg = cfg.replace(extra_tokens=extra_tokens)
    params = dict(params)
    wte = params["wte"]
    grow = new_cfg.padded_vocab - wte.shape[0]
    if grow > 0:
        wte = jnp.concatenate([wte, jnp.zeros((grow, wte.shape[1]), wte.dtype)])
        if "lm_head" in params:
            k = params["lm_head"]["kernel"]
            params["lm_head"] = {"kernel": jnp.concatenate([k, jnp.zeros((grow, k.shape[1]), k.dtype)])}  # (V, C)
    new_rows = 0.02 * jax.random.normal(rng, (extra_tokens, wte.shape[1]), wte.dtype)
    params["wte"] = wte.at[cfg.vocab_size : cfg.vocab_size + extra_tokens].set(new_rows)
    return new_cfg, params
