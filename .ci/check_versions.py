"""Fails unless every `name==version` line of the given requirements file is what this environment has installed:
used by .ci/run after `pip install -r requirements.txt`, which must keep Colab's pinned JAX versions."""

import importlib.metadata
import sys

bad = []
for line in open(sys.argv[1]):
    line = line.split("#")[0].strip()
    if not line:
        continue
    name, _, want = line.partition("==")
    try:
        have = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        have = None
    print(f"{name}: pinned {want}, installed {have}")
    if have != want:
        bad.append(f"{name} {want} -> {have}")
if bad:
    sys.exit("pip install -r requirements.txt changed Colab's pinned versions: " + ", ".join(bad))
