"""Timing harness: warm-up, then timed steps; prints one JSON line.

    python benchmarks/bench.py --config=configs/gpt2.py --config.model.block_size=256 \
        --config.train.batch_size=4 --mode=train
    python benchmarks/bench.py --config=configs/gpt2.py --mode=sample --sample_batch=1 --new_tokens=256
    python benchmarks/bench.py --config=configs/shakespeare_char.py --mode=eval

Fields: mode, ms_per_step (median), tokens_per_sec, model_flops_per_token, mfu (against --peak_tflops per
device, else a data-sheet peak for TPU/GPU or a matmul measured on the spot for CPU), compiles (XLA compiles
during the timed steps: should be 0), peak_rss_mb, plus the shape. Synthetic random tokens; fp32 unless
--config.model.dtype=bfloat16.
"""

import functools
import json
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gpt_jax.cli import set_cpu_devices, start  # noqa: E402

if "--mode=sample" not in sys.argv:  # as train.py does: one CPU device per core; sample.py uses one device
    set_cpu_devices()  # before JAX starts

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from gpt_jax import metrics as metrics_lib  # noqa: E402
from gpt_jax import optim  # noqa: E402
from gpt_jax import sharding as shard_lib  # noqa: E402
from gpt_jax import train as train_lib  # noqa: E402
from gpt_jax.config import ModelConfig  # noqa: E402
from gpt_jax.model import GPT, count_params, init_params  # noqa: E402
from gpt_jax.sampling import model_sampler  # noqa: E402

config_flags.DEFINE_config_file("config", None, "model / train config", lock_config=True)
flags.DEFINE_enum("mode", "train", ["train", "eval", "sample"], "what to time")
flags.DEFINE_integer("steps", 10, "timed steps (sample: timed generations)")
flags.DEFINE_integer("warmup", 2, "untimed steps first (compilation)")
flags.DEFINE_float("peak_tflops", 0.0, "device peak TFLOP/s for MFU (0 = data sheet / measured)")
flags.DEFINE_integer("sample_batch", 1, "sample mode: sequences decoded together")
flags.DEFINE_integer("prompt_len", 16, "sample mode: prompt tokens")
flags.DEFINE_integer("new_tokens", 256, "sample mode: generated tokens")
FLAGS = flags.FLAGS


class CompileCounter:
    def __init__(self):
        self.n = 0
        jax.monitoring.register_event_duration_secs_listener(self._on_event)

    def _on_event(self, name, *args, **kw):
        if name == "/jax/core/compile/backend_compile_duration":
            self.n += 1


def _model(config):
    """(ModelConfig, micro-batching the train mode times), the synthetic run's model config."""
    m = config.model.to_dict()
    m["vocab_size"] = m["vocab_size"] or 65  # char configs: tiny shakespeare's 65 characters
    batch_size, n_micro = int(config.train.batch_size), int(config.train.grad_accum_steps)
    if FLAGS.mode == "train" and batch_size % n_micro:
        # e.g. configs/gpt2.py (480 sequences in 40 microbatches) with --config.train.batch_size=4: time the step of
        # the sequences asked for, in one pass
        print(f"bench: train.grad_accum_steps={n_micro} does not divide train.batch_size={batch_size}; timing "
              f"{batch_size} sequences without accumulation (grad_accum_steps=1)", file=sys.stderr)
        n_micro = 1
    return ModelConfig.from_dict(m), n_micro


def _train_or_eval(config, cfg: ModelConfig, n_micro: int, tx, schedule, state, mesh):
    """(step function, model FLOPs per token, fields): one train or eval step on a fixed random batch."""
    batch_size, seq_len = int(config.train.batch_size), cfg.block_size
    x = np.random.default_rng(0).integers(0, cfg.vocab_size, (batch_size, seq_len + 1)).astype(np.int32)
    batch = {"inputs": x[:, :-1], "targets": x[:, 1:]}
    fpt = metrics_lib.flops_per_token(cfg, count_params(state.params, exclude_positions=True), seq_len)
    fields = dict(batch_size=batch_size, seq_len=seq_len, grad_accum_steps=n_micro)
    if FLAGS.mode == "eval":
        eval_fn = train_lib.make_eval_step(train_lib.compiled_model(cfg, mesh), mesh)
        eval_batch = shard_lib.put_batch(dict(batch, weights=np.ones(batch_size, np.float32)), mesh)
        return (lambda: eval_fn(state.params, eval_batch)[0]), fpt / 3, fields  # forward only
    step_fn = train_lib.make_train_step(train_lib.compiled_model(cfg, mesh), tx, mesh, n_micro, schedule)
    batch, holder = shard_lib.put_batch(batch, mesh), [state]

    def step():
        holder[0], metrics = step_fn(holder[0], batch)
        return metrics["loss"]

    return step, fpt, fields


def _sample(config, cfg: ModelConfig, state):
    """(step function, forward FLOPs per generated token, fields): one whole generation."""
    n_seqs, prompt_len, new_tokens = FLAGS.sample_batch, FLAGS.prompt_len, FLAGS.new_tokens
    prompt = np.random.default_rng(0).integers(0, cfg.vocab_size, prompt_len).tolist()
    model = GPT(cfg.for_platform(jax.devices()[0].platform))
    sampler, settings = model_sampler(model), dict(temperature=float(config.sample.temperature),
                                                       top_k=int(config.sample.top_k), top_p=float(config.sample.top_p))

    def step():
        tokens = sampler.generate(state.params, prompt, jax.random.PRNGKey(0), max_new_tokens=new_tokens,
                                  num_samples=n_seqs, **settings)
        assert tokens.shape == (n_seqs, new_tokens), tokens.shape
        return tokens

    # forward FLOPs per generated token: 2N for the weights + 4 * L * d * (mean attended length)
    fpt = 2.0 * count_params(state.params, exclude_positions=True) + 4.0 * cfg.n_layer * cfg.d_model * (
        prompt_len + new_tokens / 2)
    return step, fpt, dict(batch_size=n_seqs, prompt_len=prompt_len, new_tokens=new_tokens, **settings)


def _median_ms(step, counter: CompileCounter) -> tuple[float, int]:
    """(median ms of the timed calls, XLA compiles during them) after the warm-up calls."""
    for _ in range(max(FLAGS.warmup, 1 if FLAGS.mode == "sample" else 0)):
        jax.block_until_ready(step())
    compiles_before, times = counter.n, []
    for _ in range(FLAGS.steps):
        start_time = time.perf_counter()
        jax.block_until_ready(step())
        times.append(time.perf_counter() - start_time)
    return 1000.0 * float(np.median(times)), counter.n - compiles_before


def main(argv):
    config = FLAGS.config
    cfg, n_micro = _model(config)
    n_all = count_params(jax.eval_shape(lambda: init_params(cfg, jax.random.PRNGKey(0))))
    mesh = shard_lib.make_mesh(shard_lib.data_devices(int(config.train.batch_size), n_micro, n_all))
    counter = CompileCounter()
    tx, schedule = optim.make_optimizer(config.optim, int(config.train.max_steps))
    state = optim.init_state(tx, 0, mesh, functools.partial(init_params, cfg))
    if FLAGS.mode == "sample":
        step, fpt, fields = _sample(config, cfg, state)
        tokens_per_call = fields["batch_size"] * fields["new_tokens"]
    else:
        step, fpt, fields = _train_or_eval(config, cfg, n_micro, tx, schedule, state, mesh)
        tokens_per_call = fields["batch_size"] * fields["seq_len"]
    ms, compiles = _median_ms(step, counter)
    tokens_per_sec = tokens_per_call / (ms / 1000)
    peak = metrics_lib.device_peak_flops(FLAGS.peak_tflops * 1e12)
    out = {"mode": FLAGS.mode, "device": jax.devices()[0].device_kind, "n_devices": int(mesh.devices.size),
           "dtype": cfg.for_platform(jax.devices()[0].platform).dtype, "params_m": round(n_all / 1e6, 2), **fields}
    if FLAGS.mode == "sample":
        out["ms_per_token"] = round(ms / fields["new_tokens"], 3)
    out.update(ms_per_step=round(ms, 3), tokens_per_sec=round(tokens_per_sec, 1),
               model_flops_per_token=fpt, model_tflops=round(fpt * tokens_per_sec / 1e12, 4),
               peak_tflops=round(peak / 1e12, 4), mfu=round(fpt * tokens_per_sec / peak, 4), compiles=compiles,
               peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1))
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    start(main)
