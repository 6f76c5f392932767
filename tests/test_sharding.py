"""Data parallelism over simulated CPU devices: steps dispatched back to back never deadlock."""

import textwrap

MANY_STEPS = textwrap.dedent("""
    import jax, numpy as np
    from functools import partial
    from gpt_jax import optim, sharding as shard_lib, train as train_lib
    from gpt_jax.config import ModelConfig, default_config
    from gpt_jax.model import GPT, init_params
    assert len(jax.devices()) == 2
    cfg = ModelConfig(n_layer=2, n_head=2, d_model=64, d_ff=256, block_size=32, vocab_size=65, dropout=0.0)
    mesh = shard_lib.make_mesh()
    tx, _ = optim.make_optimizer(default_config().optim, 1000)
    state = optim.init_state(tx, 0, mesh, partial(init_params, cfg))
    step = train_lib.make_train_step(GPT(cfg), tx, mesh)
    x = np.random.default_rng(0).integers(0, 65, (8, 33)).astype(np.int32)
    b = shard_lib.put_batch({"inputs": x[:, :-1], "targets": x[:, 1:]}, mesh)
    for _ in range(400):  # no host read in between: JAX would queue them all
        state, m = step(state, b)
    print("finished", float(m["loss"]))
""")


def test_back_to_back_steps_on_two_cpu_devices_finish(cli):
    """Two CPU devices share one thread pool; with several steps in flight their all-reduces used to wait on each
    other until XLA aborted the process ("rendezvous.cc: Termination timeout", 3 runs out of 3 with the plain
    jitted step). The step now waits for its own outputs on a multi-device CPU mesh."""
    proc = cli(["-c", MANY_STEPS], env={"XLA_FLAGS": "--xla_force_host_platform_device_count=2"},
               timeout=300)
    assert proc.stdout.startswith("finished")
