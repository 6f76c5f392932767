"""notebooks/colab.ipynb without running it (CI executes it top to bottom in .ci/run): its code parses, it has the
parameters cell a runner injects after, the files it names exist, no outputs are committed, the README links it."""

import ast
import json
import os
import re

from conftest import ROOT

NOTEBOOK = os.path.join(ROOT, "notebooks", "colab.ipynb")


def cells():
    with open(NOTEBOOK) as f:
        nb = json.load(f)
    assert nb["nbformat"] == 4
    return nb["cells"]


def source(cell):
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def test_every_code_cell_parses_and_none_carries_outputs():
    code = [c for c in cells() if c["cell_type"] == "code"]
    assert len(code) >= 8
    for c in code:
        text = "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in source(c).splitlines())
        ast.parse(text)  # a SyntaxError names the cell's line
        assert not c.get("outputs") and c.get("execution_count") is None, "commit the notebook without outputs"


def test_parameters_cell_comes_first_and_network_cells_are_tagged():
    code = [c for c in cells() if c["cell_type"] == "code"]
    assert "parameters" in code[0]["metadata"].get("tags", [])
    params = {t.id for node in ast.parse(source(code[0])).body for t in getattr(node, "targets", [])}
    assert {"PLATFORM", "USE_NETWORK", "MAX_STEPS", "USE_DRIVE", "REPO_URL"} <= params
    for c in code:
        if re.search(r"init_from=\{HUB_MODEL\}|load_dataset\(", source(c)):
            assert "network" in c["metadata"].get("tags", []), source(c)[:200]
            assert "if not USE_NETWORK" in source(c) or "if USE_NETWORK" in source(c)


def test_the_files_it_runs_exist_and_the_readme_links_it():
    text = "\n".join(source(c) for c in cells())
    for path in set(re.findall(r"configs/\w+\.py|\b\w+\.py\b(?=\")", text)):
        if path.startswith("configs/") or path in ("train.py", "sample.py", "finetune.py"):
            assert os.path.isfile(os.path.join(ROOT, path)), path
    with open(os.path.join(ROOT, "README.md")) as f:
        assert "](notebooks/colab.ipynb)" in f.read()
