"""What the entry points share: clear one-line errors with a non-zero exit, and the JAX set-up for CLIs."""

from __future__ import annotations

import os
import sys

# Errors a user can fix: reported as one line, exit status 2, no traceback.
USER_ERRORS = (ValueError, FileNotFoundError, RuntimeError)


def setup_jax() -> None:
    """A persistent compilation cache, so a rerun (e.g. a resume) skips most compilation."""
    import jax

    cache = os.environ.get("GPT_JAX_COMPILE_CACHE", os.path.expanduser("~/.cache/gpt_jax/xla"))
    if cache:
        jax.config.update("jax_compilation_cache_dir", cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def run_main(main, argv) -> None:
    from absl import logging

    logging.set_verbosity(logging.WARNING)  # Orbax logs every save step at INFO
    try:
        main(argv)
    except KeyboardInterrupt:
        sys.exit(130)
    except USER_ERRORS as e:
        if os.environ.get("GPT_JAX_DEBUG"):
            raise
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"error: {msg}", file=sys.stderr)
        sys.exit(2)
