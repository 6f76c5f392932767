"""Executes a notebook top to bottom with nbclient, failing on any cell error; CI runs colab.ipynb with it.

    python notebooks/execute.py notebooks/colab.ipynb --set USE_NETWORK=False --out /tmp/colab_executed.ipynb

`--set NAME=VALUE` (VALUE a Python literal) overrides a parameter: as papermill does, the overrides go into a new
cell right after the cell tagged "parameters". The notebook's working directory is its own folder. Beyond "no
cell raised", it checks what a reader of the notebook would look at: an inline image (the loss curve) and, when
USE_NETWORK=False, that every cell tagged "network" says in its output that it ran without the network.
"""

import argparse
import ast
import os
import sys
import time

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError


def output_text(cell) -> str:
    parts = []
    for out in cell.get("outputs", []):
        if out.get("output_type") == "stream":
            parts.append(out.get("text", ""))
        elif "data" in out:
            parts.append(out["data"].get("text/plain", ""))
    return "".join(parts)


def inject(nb, overrides: dict) -> None:
    index = next((i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])), None)
    if index is None:
        raise SystemExit("the notebook has no cell tagged 'parameters'")
    source = "# Injected parameters\n" + "".join(f"{k} = {v!r}\n" for k, v in overrides.items())
    cell = nbformat.v4.new_code_cell(source)
    cell.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(index + 1, cell)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebook")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--out", help="where to write the executed notebook (with its outputs)")
    parser.add_argument("--cell_timeout", type=int, default=1200, help="seconds one cell may run")
    args = parser.parse_args()

    overrides = {}
    for item in args.set:
        name, _, value = item.partition("=")
        overrides[name.strip()] = ast.literal_eval(value.strip())
    nb = nbformat.read(args.notebook, as_version=4)
    if overrides:
        inject(nb, overrides)
    client = NotebookClient(nb, timeout=args.cell_timeout, kernel_name="python3",
                            resources={"metadata": {"path": os.path.dirname(os.path.abspath(args.notebook))}})
    t0 = time.time()
    error = None
    try:
        client.execute()
    except CellExecutionError as e:
        error = e
    finally:
        if args.out:
            nbformat.write(nb, args.out)
    if error is not None:
        print(f"FAILED: a cell raised after {time.time() - t0:.0f} s:\n{error}", file=sys.stderr)
        return 1

    problems = []
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    if not any("image/png" in out.get("data", {}) for c in code_cells for out in c.get("outputs", [])):
        problems.append("no cell displayed an image (the loss curve)")
    if overrides.get("USE_NETWORK") is False:
        for c in code_cells:
            if "network" in c.metadata.get("tags", []) and "no network" not in output_text(c):
                problems.append(f"a cell that needs the network does not say it ran without it:\n{c.source[:200]}")
    for c in code_cells:  # what each cell printed last, as a log of the run
        text = output_text(c).strip().replace("\r", "\n")
        if text:
            print(f"--- [{c.source.splitlines()[0][:70]}] ...\n{text.splitlines()[-1][:300]}")
    if problems:
        print("FAILED:\n" + "\n".join(problems), file=sys.stderr)
        return 1
    print(f"notebook OK: {len(code_cells)} code cells ran in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
