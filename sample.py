"""Complete text with a trained run (or pretrained weights):

    python sample.py --workdir=runs/shakespeare_char --prompt="ROMEO:" --max_new_tokens=300
    python sample.py --init_from=gpt2 --prompt="The meaning of life is"
"""

import sys

from absl import flags

from gpt_jax.cli import setup_jax, start

flags.DEFINE_string("workdir", None, "a training run's folder (its newest checkpoint is used)")
flags.DEFINE_string("init_from", None, "instead of --workdir: gpt2, gpt2-medium, gpt2-large, gpt2-xl, openai-gpt "
                    "or a local Hugging Face model folder")
flags.DEFINE_string("prompt", None, "text to complete (default: the run's config.sample.prompt)")
flags.DEFINE_string("prompt_file", None, "read the prompt from this file instead")
flags.DEFINE_integer("max_new_tokens", None, "tokens to generate (default: config.sample.max_new_tokens)")
flags.DEFINE_float("temperature", None, "0 = greedy (default: config.sample.temperature)")
flags.DEFINE_integer("top_k", None, "keep the k most likely tokens (0 = off)")
flags.DEFINE_float("top_p", None, "nucleus sampling: keep the smallest set with this probability (1 = off)")
flags.DEFINE_integer("num_samples", 1, "independent samples, generated as one batch")
flags.DEFINE_integer("seed", 0, "sampling seed: the same seed gives the same text")
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments {argv[1:]}; quote the prompt: --prompt=\"some text\"")
    setup_jax()
    from gpt_jax.cli.sample import run_sampling

    run_sampling(workdir=FLAGS.workdir, init_from=FLAGS.init_from, prompt=FLAGS.prompt,
                 prompt_file=FLAGS.prompt_file, max_new_tokens=FLAGS.max_new_tokens, temperature=FLAGS.temperature,
                 top_k=FLAGS.top_k, top_p=FLAGS.top_p, num_samples=FLAGS.num_samples, seed=FLAGS.seed,
                 out=sys.stdout)


if __name__ == "__main__":
    start(main)
