"""What the entry points share: clear one-line errors with a non-zero exit, and the JAX set-up for CLIs."""

from __future__ import annotations

import os
import re
import signal
import sys
import threading

from absl import app, flags, logging
from ml_collections import config_flags

# Errors a user can fix: reported as one line, exit status 2, no traceback.
USER_ERRORS = (ValueError, OSError, RuntimeError)


def set_cpu_devices() -> None:
    """On CPU, one XLA "device" per core: a data-parallel step then runs each core's share of the batch on its
    own thread, which measured 1.4x faster on a 2-core machine than one device whose small matmuls run on one
    core (docs/performance.md). Only affects the CPU platform; must run before JAX starts. Opt out with
    GPT_JAX_CPU_DEVICES=1 (or choose another count)."""
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" in flags:
        return
    n = int(os.environ.get("GPT_JAX_CPU_DEVICES", 0) or len(os.sched_getaffinity(0)))
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()


def setup_jax() -> None:
    """A persistent compilation cache, so a rerun (e.g. a resume) skips most compilation."""
    import jax  # imported here, after `set_cpu_devices` has set XLA_FLAGS: JAX reads them once, when it starts

    cache = os.environ.get("GPT_JAX_COMPILE_CACHE", os.path.expanduser("~/.cache/gpt_jax/xla"))
    if cache:
        jax.config.update("jax_compilation_cache_dir", cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def parse_flags(argv):
    """absl flag parsing, with a bad flag, config file or config key reported as one line (exit 2)."""
    try:
        argv = flags.FLAGS(argv)
        if "config" in flags.FLAGS and flags.FLAGS["config"].present:
            path = config_flags.get_config_filename(flags.FLAGS["config"]).split(":")[0]
            if not os.path.isfile(path):
                raise FileNotFoundError(f"config file {path} not found; the configs are in configs/*.py")
            flags.FLAGS.config  # loads the file and applies the --config.x.y overrides now
        return argv
    except Exception as e:  # absl's flags.Error, and whatever a config file or an override raises
        msg = " ".join(str(e).replace("\\n", " ").replace("\\'", "'").split()).strip("'\"") or type(e).__name__
        if isinstance(e, (AttributeError, KeyError)):  # ConfigDict's answer to a misspelt --config.x.y
            m = re.search(r"(\w+)'?\s*(Did you mean.*)?$", msg)
            msg = f"unknown config key '{m.group(1)}'" + (f"; {m.group(2)}" if m and m.group(2) else "")
        print(f"error: {msg}", file=sys.stderr)
        sys.exit(2)


def workdir_of(workdir, config_flag="config") -> str:
    """The run folder a CLI uses: --workdir when given, else runs/<config file name without .py>."""
    if workdir:
        return workdir
    name = os.path.splitext(os.path.basename(config_flags.get_config_filename(flags.FLAGS[config_flag])))[0]
    return os.path.join("runs", name)


def start(main, cpu_data_parallel: bool = False) -> None:
    """Entry point of a CLI: parse flags, run `main(argv)`, turn user errors into one line and exit 2.

    cpu_data_parallel: one CPU device per core (training); sampling is faster on one device."""
    if cpu_data_parallel:
        set_cpu_devices()
    app.run(lambda argv: run_main(main, argv), flags_parser=parse_flags)


def run_main(main, argv) -> None:
    """Runs `main(argv)`; exits 128 + the signal after Ctrl-C (130) or SIGTERM (143), 2 with one line for errors a
    user can fix. Orbax's own logging and its background threads' tracebacks are silenced: what failed reaches
    this function as an exception and is reported once."""
    logging.set_verbosity(logging.FATAL)
    threading.excepthook = lambda args: None
    try:
        main(argv)
    except KeyboardInterrupt as e:
        sys.exit(128 + getattr(e, "signum", signal.SIGINT))
    except USER_ERRORS as e:
        if os.environ.get("GPT_JAX_DEBUG"):
            raise
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"error: {msg}", file=sys.stderr)
        sys.exit(2)
