import json
import textwrap
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gpt_jax import optim
from gpt_jax import sharding as shard_lib
from gpt_jax import train as train_lib
from gpt_jax.config import ModelConfig, default_config
from gpt_jax.model import GPT, init_params

CFG = ModelConfig(n_layer=2, n_head=2, d_model=32, d_ff=64, block_size=16, vocab_size=40, dropout=0.0)


def optim_cfg(**kw):
    o = default_config().optim
    o.update(dict(learning_rate=1e-2, warmup_steps=2), **kw)
    return o


def batch(B=8, seed=0):
    x = np.random.default_rng(seed).integers(0, CFG.vocab_size, (B, CFG.block_size + 1)).astype(np.int32)
    return {"inputs": x[:, :-1], "targets": x[:, 1:]}


def test_schedule_gpt1():
    o = default_config().optim  # GPT-1: 2.5e-4, 2000 warmup steps, cosine to 0
    sched = optim.make_schedule(o, 10_000)
    assert float(sched(0)) == 0.0
    np.testing.assert_allclose(float(sched(1000)), 1.25e-4, rtol=1e-5)
    np.testing.assert_allclose(float(sched(2000)), 2.5e-4, rtol=1e-5)
    np.testing.assert_allclose(float(sched(6000)), 1.25e-4, rtol=1e-4)  # half way down the cosine
    assert float(sched(10_000)) < 1e-12
    lin = optim.make_schedule(optim_cfg(schedule="linear", warmup_steps=10, learning_rate=1.0), 110)
    np.testing.assert_allclose([float(lin(5)), float(lin(10)), float(lin(60)), float(lin(110))], [0.5, 1, 0.5, 0])


def test_weight_decay_mask():
    params = jax.eval_shape(lambda: init_params(CFG.replace(norm_position="pre"), jax.random.PRNGKey(0)))
    mask = optim.decay_mask(params)
    assert mask["wte"] and mask["wpe"] and mask["h"]["attn"]["c_attn"]["kernel"]
    # the scanned blocks' biases and gains are (n_layer, n) matrices, and still not decayed
    assert params["h"]["attn"]["c_attn"]["bias"].ndim == 2
    assert not mask["h"]["attn"]["c_attn"]["bias"] and not mask["h"]["ln_1"]["scale"]
    assert not mask["ln_f"]["bias"]


def test_loss_matches_uniform_at_init_and_decreases():
    mesh = shard_lib.make_mesh(jax.devices()[:1])
    tx, sched = optim.make_optimizer(optim_cfg(), 100)
    state = optim.init_state(tx, 0, mesh, partial(init_params, CFG))
    step = train_lib.make_train_step(GPT(CFG), tx, mesh, schedule=sched)
    b = shard_lib.put_batch(batch(), mesh)
    losses = []
    for _ in range(30):
        state, m = step(state, b)
        losses.append(float(m["loss"]))
    assert abs(losses[0] - np.log(CFG.vocab_size)) < 0.1  # padded vocab columns take no probability
    assert losses[-1] < losses[0] - 1.0
    assert int(state.step) == 30


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_grad_accumulation_equals_full_batch(dropout):
    """Also with dropout: each row draws its masks from its index in the global batch, not its microbatch."""
    cfg = CFG.replace(dropout=dropout)
    mesh = shard_lib.make_mesh(jax.devices()[:1])
    tx, _ = optim.make_optimizer(optim_cfg(), 100)
    b = batch()
    out = []
    for accum in (1, 4):
        state = optim.init_state(tx, 0, mesh, partial(init_params, cfg))
        step = train_lib.make_train_step(GPT(cfg), tx, mesh, accum)
        state, m = step(state, shard_lib.put_batch(b, mesh))
        out.append((float(m["loss"]), float(m["grad_norm"]), state.params))
    assert out[0][0] == pytest.approx(out[1][0], rel=1e-5)
    assert out[0][1] == pytest.approx(out[1][1], rel=1e-4)
    diff = jax.tree_util.tree_map(lambda a, b: float(jnp.abs(a - b).max()), out[0][2], out[1][2])
    assert max(jax.tree_util.tree_leaves(diff)) < 1e-6


def test_eval_step_weights():
    mesh = shard_lib.make_mesh(jax.devices()[:1])
    tx, _ = optim.make_optimizer(optim_cfg(), 100)
    state = optim.init_state(tx, 0, mesh, partial(init_params, CFG))
    ev = train_lib.make_eval_step(GPT(CFG), mesh)
    b = batch(4)
    full = train_lib.evaluate(ev, state.params, [dict(b, weights=np.ones(4, np.float32))], mesh)
    half = train_lib.evaluate(ev, state.params, [dict(b, weights=np.asarray([1, 1, 0, 0], np.float32))], mesh)
    first_two = train_lib.evaluate(ev, state.params, [{k: v[:2] for k, v in b.items()} | {
        "weights": np.ones(2, np.float32)}], mesh)
    assert half == pytest.approx(first_two, rel=1e-6) and half != pytest.approx(full, rel=1e-6)


EIGHT_DEVICES = textwrap.dedent("""
    import json, jax, numpy as np
    from functools import partial
    from gpt_jax import optim, sharding as shard_lib, train as train_lib
    from gpt_jax.config import ModelConfig, default_config
    from gpt_jax.model import GPT, init_params
    assert len(jax.devices()) == 8, jax.devices()
    cfg = ModelConfig(n_layer=2, n_head=2, d_model=32, d_ff=64, block_size=16, vocab_size=40, dropout=0.1)
    o = default_config().optim; o.learning_rate = 1e-2; o.warmup_steps = 2
    x = np.random.default_rng(0).integers(0, 40, (16, 17)).astype(np.int32)
    b = {"inputs": x[:, :-1], "targets": x[:, 1:]}
    out = {}
    for n, flat in ((1, None), (8, True), (8, False)):  # 8 devices: the CPU flat reduction and XLA's (GSPMD)
        mesh = shard_lib.make_mesh(jax.devices()[:n])
        tx, _ = optim.make_optimizer(o, 100)
        state = optim.init_state(tx, 0, mesh, partial(init_params, cfg))
        step = train_lib.make_train_step(GPT(cfg), tx, mesh, 2, flat_grad_reduce=flat)
        losses = []
        for _ in range(3):
            state, m = step(state, shard_lib.put_batch(b, mesh))
            losses.append(float(m["loss"]))
        out[f"{n} {flat}"] = {"losses": losses, "devices": len(state.params["wte"].sharding.device_set),
                              "wte": float(np.asarray(state.params["wte"]).sum())}
    print(json.dumps(out))
""")


def test_eight_simulated_devices_match_one(cli):
    """Dropout on, 2 microbatches: the same losses and parameters on 1 device and on 8, with either reduction."""
    proc = cli(["-c", EIGHT_DEVICES], env={"XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    one = out["1 None"]
    assert one["devices"] == 1
    for eight in (out["8 True"], out["8 False"]):
        assert eight["devices"] == 8
        np.testing.assert_allclose(one["losses"], eight["losses"], rtol=1e-5)
        assert one["wte"] == pytest.approx(eight["wte"], rel=1e-4, abs=1e-4)


@pytest.mark.parametrize("n_layer", [1, 3])
def test_mfu_flop_count_matches_xla_cost_analysis(n_layer):
    """6N + 12 L T d per token (not halving causal attention) against the matmul FLOPs counted in the step's
    program, and that count against XLA's for one layer (XLA counts the layer scan's body once)."""
    from gpt_jax.metrics import flops_per_token, program_matmul_flops
    from gpt_jax.model import count_params

    cfg = ModelConfig(n_layer=n_layer, n_head=4, d_model=64, d_ff=256, block_size=64, vocab_size=500, dropout=0.0)
    mesh = shard_lib.make_mesh(jax.devices()[:1])
    tx, _ = optim.make_optimizer(optim_cfg(), 100)
    state = optim.init_state(tx, 0, mesh, partial(init_params, cfg))
    step = train_lib.make_train_step(GPT(cfg), tx, mesh)
    x = np.zeros((4, 64), np.int32)
    batch = shard_lib.put_batch({"inputs": x, "targets": x}, mesh)
    ours = flops_per_token(cfg, count_params(state.params, exclude_positions=True), 64) * 4 * 64
    counted = program_matmul_flops(step, state, batch)
    assert abs(counted / ours - 1) < 0.15, (counted, ours)
    remat = train_lib.make_train_step(GPT(cfg.replace(remat="block")), tx, mesh)  # the forward runs twice
    assert program_matmul_flops(remat, state, batch) > 1.2 * counted
    if n_layer == 1:
        cost = step.lower(state, batch).compile().cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        assert abs(cost["flops"] / counted - 1) < 0.15, (cost["flops"], counted)


def test_dropout_is_flax_dropout_on_cpu_and_the_hash_mask_is_bernoulli():
    """The model's Dropout: on CPU exactly flax's nn.Dropout (same key, same mask); the accelerators' counter-hash
    mask keeps keep_prob of the elements, independently of another key's mask."""
    import flax.linen as nn

    from gpt_jax.model import Dropout, _hash_keep

    x = jax.random.normal(jax.random.PRNGKey(0), (8, 300))
    key = jax.random.PRNGKey(3)
    ours = Dropout(0.3).apply({}, x, deterministic=False, rngs={"dropout": key})
    theirs = nn.Dropout(0.3).apply({}, x, deterministic=False, rngs={"dropout": key})
    np.testing.assert_array_equal(ours, theirs)
    a = _hash_keep(key, 0.9, (1000, 1000))
    b = _hash_keep(jax.random.fold_in(key, 1), 0.9, (1000, 1000))
    assert abs(float(a.mean()) - 0.9) < 0.002 and abs(float(b.mean()) - 0.9) < 0.002
    both = float((a & b).mean())  # independent masks: P(both kept) = 0.81
    assert abs(both - 0.81) < 0.002
    assert bool((_hash_keep(key, 0.9, (1000, 1000)) == a).all())  # a function of the key
