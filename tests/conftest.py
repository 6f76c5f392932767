import os
import subprocess
import sys

import pytest

# The tests run on this machine's CPU. Where libtpu is installed (the TPU compile tests use it), JAX would also try
# to open a TPU at start-up in every test process; the topologies the tests compile for need no TPU backend.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(os.path.dirname(ROOT), "shared", "data")


def run_cli(args, *, env=None, check=True, timeout=600, cwd=ROOT):
    """Runs `python ARGS` in the repo root; returns the CompletedProcess (text output)."""
    full_env = dict(os.environ)
    full_env.setdefault("GPT_JAX_COMPILE_CACHE", "")
    full_env.update(env or {})
    proc = subprocess.run([sys.executable, *args], cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"python {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture
def cli():
    return run_cli
