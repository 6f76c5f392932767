import glob
import importlib.util
import os

import jax
import pytest

from gpt_jax.config import ModelConfig, default_config, model_config
from gpt_jax.model import count_params, init_params

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "*.py")))


def load(path):
    spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config()


def test_configs_exist():
    names = {os.path.basename(p) for p in CONFIGS}
    assert {"gpt1.py", "gpt2.py", "shakespeare_char.py", "shakespeare.py", "tiny.py"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_config_loads_and_builds(path):
    c = load(path)
    if "init_from" in c:  # a fine-tuning config (finetune.py): its model comes from init_from
        return
    assert set(c.keys()) == set(default_config().keys())  # every training config has the same groups
    m = c.model.to_dict()
    m["vocab_size"] = m["vocab_size"] or 65
    cfg = ModelConfig.from_dict(m)
    shapes = jax.eval_shape(lambda: init_params(cfg, jax.random.PRNGKey(0)))
    assert count_params(shapes) > 0
    assert c.train.batch_size % c.train.grad_accum_steps == 0


def test_gpt1_is_the_paper_model():
    c = load(os.path.join(ROOT, "configs", "gpt1.py"))
    cfg = model_config(c)
    assert (cfg.n_layer, cfg.n_head, cfg.d_model, cfg.d_ff, cfg.block_size) == (12, 12, 768, 3072, 512)
    assert cfg.norm_position == "post" and cfg.activation == "gelu_tanh" and cfg.dropout == 0.1
    assert c.train.batch_size == 64 and c.optim.learning_rate == 2.5e-4 and c.optim.warmup_steps == 2000
    assert c.optim.schedule == "cosine" and c.optim.min_learning_rate == 0 and c.optim.weight_decay == 0.01
    n = count_params(jax.eval_shape(lambda: init_params(cfg, jax.random.PRNGKey(0))))
    d, f, L = 768, 3072, 12
    per_block = (d * 3 * d + 3 * d) + (d * d + d) + (d * f + f) + (f * d + d) + 2 * 2 * d  # attn, mlp, 2 LN
    embeddings = 50304 * d + 512 * d  # 50,257 BPE ids padded to 50,304 rows, 512 positions
    assert n == embeddings + L * per_block  # no final LayerNorm in GPT-1
    print(f"GPT-1 parameters: {n:,} ({(n - 512 * d - 47 * d) / 1e6:.1f}M with the unpadded vocab and no positions;"
          " the paper's 117M used a 40k vocab)")
    assert 123e6 < n < 125e6


def test_gpt2_is_124m():
    cfg = model_config(load(os.path.join(ROOT, "configs", "gpt2.py")))
    n = count_params(jax.eval_shape(lambda: init_params(cfg, jax.random.PRNGKey(0))))
    assert cfg.norm_position == "pre" and cfg.block_size == 1024
    assert n - 47 * 768 == 124_439_808  # GPT-2 small with the 50,257 vocab: 124.44M, as released
