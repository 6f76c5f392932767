"""The fit check (`train.py --compile_only=T`, gpt_jax/fit.py) and the accelerator paths it compiles: programs
compiled on this CPU for Cloud TPU types with libtpu's compiler (no TPU needed; skipped without libtpu), the memory
they need, the automatic gradient accumulation, and no CPU-specific rewrite in a program compiled for a TPU."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gpt_jax import fit
from gpt_jax import optim
from gpt_jax import sharding as shard_lib
from gpt_jax import train as train_lib
from gpt_jax.config import ModelConfig, default_config
from gpt_jax.model import GPT, init_cache, init_params

needs_libtpu = pytest.mark.skipif(not fit.libtpu_available(), reason="needs libtpu (pip install 'jax[tpu]')")


def test_tpu_type_names():
    assert fit._grid(1, False) == "1x1" and fit._grid(4, False) == "2x2" and fit._grid(8, False) == "2x4"
    assert fit._grid(16, False) == "4x4" and fit._grid(32, False) == "4x8"
    assert fit._grid(4, True) == "1x2x2" and fit._grid(8, True) == "2x2x2"
    with pytest.raises(fit.FitError, match="unknown TPU type 'v9x-8'; use e.g. v5e-1"):
        fit.tpu_target("v9x-8")
    with pytest.raises(fit.FitError, match="'v5e-3': 3 is not a slice size"):
        fit.tpu_target("v5e-3")


def test_accumulation_candidates_split_the_batch_evenly():
    assert fit.accumulation_candidates(64, 1) == [1, 2, 4, 8, 16, 32, 64]
    assert fit.accumulation_candidates(48, 4) == [1, 2, 3, 4, 6, 12]


def test_choose_grad_accum_takes_the_fewest_microbatches_that_fit():
    needs = {1: 10.0, 2: 6.0, 4: 3.0, 8: 2.0}
    built = []

    def build(n):
        built.append(n)
        return fit.Compiled(needs[n] * fit.GiB, 0.1)

    n, c = fit.choose_grad_accum(build, [1, 2, 4, 8], 5.0 * fit.GiB, log=lambda s: None)
    assert (n, built, c.needed) == (4, [1, 2, 4], 3.0 * fit.GiB)
    with pytest.raises(fit.FitError, match="no gradient accumulation up to 8 microbatches fits.*model.remat=block"):
        fit.choose_grad_accum(build, [1, 2, 4, 8], 1.0 * fit.GiB, log=lambda s: None)


def test_on_cpu_auto_accumulation_is_one_microbatch():
    """CPU devices report no memory limit: grad_accum_steps=0 means one microbatch, nothing compiled."""
    c = default_config()
    c.train.grad_accum_steps = 0
    target = fit.here_target()
    assert target.hbm_bytes_per_chip is None
    assert train_lib._accumulation(c, None, None, None, None, None, target) == (1, None)


def tiny_config(**train):
    c = default_config()
    c.model.update(n_layer=2, n_head=2, d_model=64, d_ff=128, block_size=128, vocab_size=256, dropout=0.0)
    c.data.tokenizer = "char"
    c.train.update({"batch_size": 8, "eval_batch_size": 8, **train})
    return c


@needs_libtpu
@pytest.mark.parametrize("tpu", ["v5e-1", "v5e-4"])
def test_compile_only_for_a_tpu_reports_what_it_needs(tpu, tmp_path):
    r = train_lib.compile_only(tiny_config(), str(tmp_path), tpu)
    assert r["fits"] and r["platform"] == "tpu" and r["chips"] == int(tpu.split("-")[1])
    assert r["dtype"] == "bfloat16" and r["remat"] == "dots"  # the accelerator defaults
    assert r["attention"] == "flash"  # dropout 0, context 128: the splash kernel
    assert 0 < r["hbm_gib_needed"] < 0.1 and r["hbm_gib_per_chip"] == 15.75
    assert r["grad_accum_steps"] == 1 and r["micro_batch"] == 8
    assert abs(r["flops_per_step"] / r["model_flops_per_step"] - 1) < 0.3
    assert not (tmp_path / "data").exists()  # a vocabulary size in the config: no corpus prepared


@needs_libtpu
def test_a_run_that_does_not_fit_says_so_and_auto_accumulation_makes_it_fit(tmp_path):
    """(B, H, T, T) float32 attention scores kept for every layer: 256 x 2 x 2048^2 x 4 bytes = 8 GiB a layer."""
    big = dict(batch_size=256, eval_batch_size=8)
    c = tiny_config(**big)
    c.model.update(block_size=2048, dtype="float32", remat="none", attention="xla")
    r = train_lib.compile_only(c, str(tmp_path), "v5e-1")
    assert not r["fits"] and r["hbm_gib_needed"] > 15.75
    msg = fit.shortfall(r)
    assert msg.startswith("the run does not fit v5e-1: it needs ") and "of the 15.75 GiB it has" in msg
    assert "--config.model.remat=dots or block" in msg and "--config.model.dtype=bfloat16" in msg
    assert "grad_accum_steps=0" in msg
    c.train.grad_accum_steps = 0
    r = train_lib.compile_only(c, str(tmp_path), "v5e-1")
    assert r["fits"] and r["grad_accum_steps"] > 1 and r["hbm_gib_needed"] <= 15.75
    assert r["micro_batch"] * r["grad_accum_steps"] == 256


@needs_libtpu
def test_no_cpu_rewrite_in_programs_compiled_for_a_tpu():
    """The CPU decode rewrite (backend.py's optimization barrier) and the CPU flat gradient all-reduce (a
    shard_map over the data axis) are chosen by the compiled-for platform: present for CPU devices, absent for TPU."""
    cfg = ModelConfig(n_layer=2, n_head=4, d_model=64, d_ff=128, block_size=128, vocab_size=256, dropout=0.0)
    tpu = fit.tpu_target("v5e-4")
    params = jax.eval_shape(lambda: init_params(cfg, jax.random.PRNGKey(0)))

    def decode(p, ids, cache):
        return GPT(cfg).apply({"params": p}, ids, cache=cache)

    def decode_args(devices):
        repl = shard_lib.replicated(shard_lib.make_mesh(devices[:1]))
        place = lambda t: jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=repl), t)
        return place(params), place(jax.ShapeDtypeStruct((2, 1), jnp.int32)), place(
            jax.eval_shape(lambda: init_cache(cfg, 2)))

    lowered = lambda devices: jax.jit(decode).lower(*decode_args(devices))
    assert "optimization_barrier" in lowered(jax.devices()).as_text()  # the CPU branch, for CPU devices
    tpu_decode = lowered(list(tpu.devices))
    assert "optimization_barrier" not in tpu_decode.as_text()
    assert "opt-barrier" not in tpu_decode.compile().as_text()  # and the TPU program compiles

    tx, _ = optim.make_optimizer(default_config().optim, 10)

    def step_text(devices):
        mesh = shard_lib.make_mesh(devices)
        abstract = optim.abstract_state(tx, 0, mesh, lambda key: init_params(cfg, key))
        step = train_lib.make_train_step(GPT(cfg.for_platform(devices[0].platform), mesh), tx, mesh)
        return step.lower(abstract, train_lib._batch_spec(mesh, 8, 128)).as_text()

    if len(jax.devices()) >= 2:  # the CPU devices' step: one flat all-reduce inside a shard_map
        assert "sdy.manual_computation" in step_text(jax.devices()[:2])
    assert "sdy.manual_computation" not in step_text(list(tpu.devices))  # the partitioner places the all-reduces


@needs_libtpu
def test_train_py_compile_only_gpt1_fits_a_colab_v5e_1(cli):
    """The headline command's fit check: the GPT-1 paper model (batch 64 x 512, dropout 0.1, post-LN) on one v5e."""
    proc = cli(["train.py", "--config=configs/gpt1.py", "--compile_only=v5e-1"], timeout=900)
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    print(r)
    assert r["fits"] and r["chips"] == 1 and r["hbm_gib_needed"] <= 0.85 * r["hbm_gib_per_chip"]
    assert (r["batch_size"], r["seq_len"], r["grad_accum_steps"], r["dtype"]) == (64, 512, 1, "bfloat16")
    assert r["attention"] == "xla"  # attention dropout 0.1: the kernels have none
    assert np.isfinite(r["compile_s"]) and r["flops_per_step"] > 2.6e13


@needs_libtpu
def test_train_py_compile_only_exits_1_with_the_shortfall(cli, tmp_path):
    proc = cli(["train.py", "--config=configs/tiny.py", f"--workdir={tmp_path}", "--compile_only=v5e-1",
                "--config.model.block_size=2048", "--config.train.batch_size=256", "--config.model.dtype=float32",
                "--config.model.remat=none", "--config.model.d_model=64"], check=False, timeout=600)
    assert proc.returncode == 1, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["fits"] is False
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "does not fit v5e-1" in errors[0], proc.stderr


@needs_libtpu
def test_dropout_masks_hash_on_tpu_and_threefry_on_cpu():
    """Threefry for every dropout mask made GPT-1's TPU step compile in 98 s instead of 61: for a TPU the model's
    Dropout draws its mask from the counter hash (its multiplier 0x85EBCA6B is in the program), for CPU devices
    from jax.random.bernoulli, as flax's nn.Dropout."""
    from gpt_jax.model import Dropout

    x = jax.ShapeDtypeStruct((4, 128), jnp.float32)
    key = jax.ShapeDtypeStruct((2,), jnp.uint32)
    drop = jax.jit(lambda x, k: Dropout(0.1).apply({}, x, deterministic=False, rngs={"dropout": k}))
    hash_constant = str(0x85EBCA6B)
    assert hash_constant not in drop.lower(x, key).as_text()  # this host's CPU devices

    tpu = fit.tpu_target("v5e-1")
    repl = shard_lib.replicated(shard_lib.make_mesh(list(tpu.devices)))
    on_tpu = lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=repl)
    lowered = drop.lower(on_tpu(x), on_tpu(key))
    assert hash_constant in lowered.as_text()
    lowered.compile()
