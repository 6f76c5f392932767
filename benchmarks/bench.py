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

from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from gpt_jax.cli import start  # noqa: E402

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
        import jax

        self.n = 0
        jax.monitoring.register_event_duration_secs_listener(self._on_event)

    def _on_event(self, name, *args, **kw):
        if name == "/jax/core/compile/backend_compile_duration":
            self.n += 1


def _median_ms(times):
    import numpy as np

    return 1000.0 * float(np.median(times))


def main(argv):
    import jax
    import numpy as np

    from gpt_jax import metrics as metrics_lib
    from gpt_jax import optim
    from gpt_jax import sharding as shard_lib
    from gpt_jax import train as train_lib
    from gpt_jax.config import ModelConfig
    from gpt_jax.model import GPT, count_params

    config = FLAGS.config
    m = config.model.to_dict()
    m["vocab_size"] = m["vocab_size"] or 65  # char configs: tiny shakespeare's 65 characters
    cfg = ModelConfig.from_dict(m)
    model = GPT(cfg)
    B, T = int(config.train.batch_size), cfg.block_size
    A = int(config.train.grad_accum_steps)
    if FLAGS.mode == "train" and B % A:
        # e.g. configs/gpt2.py (480 sequences in 40 microbatches) with --config.train.batch_size=4: time the step of
        # B sequences that was asked for, in one pass
        print(f"bench: train.grad_accum_steps={A} does not divide train.batch_size={B}; timing {B} sequences "
              "without accumulation (grad_accum_steps=1)", file=sys.stderr)
        A = 1
    from gpt_jax.model import init_params

    n_all = count_params(jax.eval_shape(lambda: init_params(cfg, jax.random.PRNGKey(0))))
    mesh = shard_lib.make_mesh(shard_lib.data_devices(B, A, n_all))
    counter = CompileCounter()
    tx, schedule = optim.make_optimizer(config.optim, int(config.train.max_steps))
    state = optim.init_state(tx, 0, mesh, functools.partial(init_params, cfg))
    n_params = count_params(state.params, exclude_positions=True)
    rng = np.random.default_rng(0)
    out = {"mode": FLAGS.mode, "device": jax.devices()[0].device_kind, "n_devices": int(mesh.devices.size),
           "dtype": cfg.dtype, "params_m": round(count_params(state.params) / 1e6, 2)}

    if FLAGS.mode in ("train", "eval"):
        x = rng.integers(0, cfg.vocab_size, (B, T + 1)).astype(np.int32)
        batch = shard_lib.put_batch({"inputs": x[:, :-1], "targets": x[:, 1:],
                                     "weights": np.ones(B, np.float32)}, mesh)
        if FLAGS.mode == "train":
            step_fn = train_lib.make_train_step(model, tx, mesh, A, schedule)
            train_batch = {k: v for k, v in batch.items() if k != "weights"}

            def step():
                nonlocal state
                state, metrics = step_fn(state, train_batch)
                return metrics["loss"]

            fpt = metrics_lib.flops_per_token(cfg, n_params, T)
        else:
            eval_fn = train_lib.make_eval_step(model, mesh)

            def step():
                return eval_fn(state.params, batch)[0]

            fpt = metrics_lib.flops_per_token(cfg, n_params, T) / 3  # forward only
        for _ in range(FLAGS.warmup):
            jax.block_until_ready(step())
        compiles_before = counter.n
        times = []
        for _ in range(FLAGS.steps):
            t = time.perf_counter()
            jax.block_until_ready(step())
            times.append(time.perf_counter() - t)
        ms = _median_ms(times)
        tokens_per_sec = B * T / (ms / 1000)
        out.update(batch_size=B, seq_len=T, grad_accum_steps=A)
    else:
        from gpt_jax.sampling import model_sampler

        sampler = model_sampler(model)
        Bs, P, N = FLAGS.sample_batch, FLAGS.prompt_len, FLAGS.new_tokens
        prompt = rng.integers(0, cfg.vocab_size, P).tolist()
        temperature = float(config.sample.temperature)

        def step():
            return sampler.generate(state.params, prompt, jax.random.PRNGKey(0), max_new_tokens=N,
                                    num_samples=Bs, temperature=temperature, top_k=int(config.sample.top_k),
                                    top_p=float(config.sample.top_p))

        for _ in range(max(FLAGS.warmup, 1)):
            step()
        compiles_before = counter.n
        times = []
        for _ in range(FLAGS.steps):
            t = time.perf_counter()
            toks = step()
            times.append(time.perf_counter() - t)
        assert toks.shape == (Bs, N), toks.shape
        ms = _median_ms(times)
        tokens_per_sec = Bs * N / (ms / 1000)
        # forward FLOPs per generated token: 2N for the weights + 4 * L * d * (mean attended length)
        fpt = 2.0 * n_params + 4.0 * cfg.n_layer * cfg.d_model * (P + N / 2)
        out.update(batch_size=Bs, prompt_len=P, new_tokens=N, ms_per_token=round(ms / N, 3),
                   temperature=temperature)
    compiles = counter.n - compiles_before
    peak = metrics_lib.device_peak_flops(FLAGS.peak_tflops * 1e12)
    out.update(ms_per_step=round(ms, 3), tokens_per_sec=round(tokens_per_sec, 1),
               model_flops_per_token=fpt, model_tflops=round(fpt * tokens_per_sec / 1e12, 4),
               peak_tflops=round(peak / 1e12, 4), mfu=round(fpt * tokens_per_sec / peak, 4),
               compiles=compiles,
               peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1))
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    start(main, cpu_data_parallel="--mode=sample" not in sys.argv)  # as train.py / sample.py do
