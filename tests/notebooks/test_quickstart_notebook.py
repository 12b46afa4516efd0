"""Executes notebooks/quickstart.ipynb top to bottom with the smoke settings."""
import os

import nbclient
import nbformat

from tests import conftest


def test_quickstart_notebook_runs(tmp_path):
  path = conftest.REPO / "notebooks" / "quickstart.ipynb"
  notebook = nbformat.read(path, as_version=4)
  env = conftest.subprocess_env(
      devices=1, EFFICIENT_NOTEBOOK_SMOKE=1, EFFICIENT_NOTEBOOK_DIR=tmp_path)
  env.pop("MPLBACKEND", None)  # Let the kernel use its inline backend.
  saved = dict(os.environ)
  os.environ.update(env)  # The kernel inherits this process's environment.
  try:
    client = nbclient.NotebookClient(
        notebook, timeout=600, kernel_name="python3",
        resources={"metadata": {"path": str(conftest.REPO)}})
    client.execute()
  finally:
    os.environ.clear()
    os.environ.update(saved)
  outputs = "".join(
      o.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
      for o in cell.get("outputs", []))
  assert "test accuracy" in outputs
  assert (tmp_path / "listops_run" / "results.json").exists()
  images = [o for cell in notebook.cells if cell.cell_type == "code"
            for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]
  assert images, "the curves were not plotted"
