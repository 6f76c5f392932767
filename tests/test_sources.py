"""gpt_jax.sources: one meaning of init_from (and sample.py's --workdir) for every command."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gpt_jax import checkpoint as ckpt_lib
from gpt_jax import sources
from gpt_jax.config import ModelConfig, default_config
from gpt_jax.model import init_params
from gpt_jax.tokenizer import CharTokenizer
from gpt_jax.train import model_and_data

TOK = CharTokenizer(sorted(set("abcdefgh ")))
CFG = ModelConfig(n_layer=1, n_head=2, d_model=16, d_ff=32, block_size=16, vocab_size=TOK.vocab_size, dropout=0.0)


def _run_folder(path, **meta_extra):
    params = init_params(CFG, jax.random.PRNGKey(3))
    ckpt = ckpt_lib.Checkpointer(str(path))
    ckpt.save(5, params, {"unused": jnp.zeros(())}, {"step": jnp.asarray(5, jnp.int32)},
              {"model": CFG.to_dict(), "tokenizer": TOK.meta(), **meta_extra})
    ckpt.wait()
    ckpt.close()
    return str(path), params


def test_a_run_folder_gives_its_config_params_and_tokenizer(tmp_path):
    folder, params = _run_folder(tmp_path / "run")
    src = sources.load(folder)
    assert src.config == CFG and src.tokenizer.meta() == TOK.meta() and src.meta["model"] == CFG.to_dict()
    np.testing.assert_array_equal(src.params["wte"], params["wte"])


@pytest.mark.parametrize("kind,message", [
    ("empty", "no model given: set init_from"),
    ("finetuned", "is a fine-tuning run"),
    ("plain_folder", "neither a run folder"),
    ("unfinished", "no complete checkpoint"),
])
def test_sources_that_cannot_be_used_fail_with_one_clear_error(tmp_path, kind, message):
    if kind == "empty":
        source = ""
    elif kind == "finetuned":
        source = _run_folder(tmp_path / "ft", finetune={"task": "classification"})[0]
    elif kind == "plain_folder":
        source = str(tmp_path)
    else:
        os.makedirs(ckpt_lib.checkpoint_dir(str(tmp_path / "unfinished")))
        source = str(tmp_path / "unfinished")
    with pytest.raises(sources.SourceError, match=message):
        sources.load(source)


def test_run_only_refuses_what_is_not_a_run(tmp_path):
    with pytest.raises(sources.SourceError, match="no checkpoints in"):
        sources.load(str(tmp_path / "nothing"), what="--workdir", run_only=True)


def test_train_init_from_takes_a_run_folder(tmp_path):
    """train.init_from means what finetune's init_from means: a run folder works too, its architecture, weights
    and tokenizer taken from there, dropout from this config."""
    folder, params = _run_folder(tmp_path / "run")
    (tmp_path / "text.txt").write_text("abc defgh " * 300)
    config = default_config()
    config.train.init_from = folder
    config.data.dataset = str(tmp_path / "text.txt")
    config.data.tokenizer = "gpt2"  # overridden by the source's tokenizer
    config.model.dropout = 0.2
    cfg, got, tok, train_tokens, _ = model_and_data(config, str(tmp_path / "new"))
    assert cfg == CFG.replace(dropout=0.2, dtype="auto", remat="auto", attention="auto") and tok.meta() == TOK.meta()
    assert np.asarray(train_tokens[:4]).tolist() == TOK.encode("abc ")
    np.testing.assert_array_equal(got["wpe"], params["wpe"])
