"""notebooks/preview_batches.ipynb executes without a failing cell."""

import ast
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from fcndata.config import load_config

ROOT = Path(__file__).resolve().parent.parent


def test_preview_notebook_executes():
    nb = nbformat.read(ROOT / "notebooks" / "preview_batches.ipynb", as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 3  # one figure per pipeline: patchwise, whole images, loss sampling
    printed = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    shapes = [ast.literal_eval(line) for line in printed.splitlines() if line.startswith("{")]
    patchwise, fullimage = shapes
    recipe = load_config(ROOT / "pipelines" / "brain_patchwise.yaml")
    # the patchwise batch holds patches of the recipe's size; whole images are padded to the stride
    assert patchwise["image"][1:3] == recipe.patches.patch_size
    assert patchwise["image"][0] == recipe.batching.batch_size
    assert all(n % 32 == 0 for n in fullimage["image"][1:3]) and fullimage["roi"] == fullimage["label"]
