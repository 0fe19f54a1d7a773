"""experiments/quickstart.ipynb runs top to bottom (nbclient, offline data)."""

import json
import os
import sys

import pytest

NOTEBOOK = os.path.join(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments", "quickstart.ipynb"
)


def test_quickstart_notebook_executes(tmp_path):
  nbformat = pytest.importorskip("nbformat")
  nbclient = pytest.importorskip("nbclient")
  nb = nbformat.read(NOTEBOOK, as_version=4)
  # The kernel is this interpreter (the venv's ipykernel), whatever "python3" means on PATH.
  client = nbclient.NotebookClient(
    nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
  )
  env_python = os.path.dirname(sys.executable)
  os.environ["PATH"] = env_python + os.pathsep + os.environ.get("PATH", "")
  client.execute()
  outputs = "".join(
    o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
  )
  assert "bits/param" in outputs and "accuracy of the decoded file" in outputs
  errors = [
    o
    for c in nb.cells
    if c.cell_type == "code"
    for o in c.get("outputs", [])
    if o.get("output_type") == "error"
  ]
  assert not errors


def test_quickstart_notebook_is_committed_with_its_outputs():
  """The committed notebook shows its results without running it (issue 12)."""
  with open(NOTEBOOK) as f:
    nb = json.load(f)
  code = [c for c in nb["cells"] if c["cell_type"] == "code"]
  assert code and all(c["outputs"] and c["execution_count"] for c in code)
  text = "".join("".join(o.get("text", "")) for c in code for o in c["outputs"])
  assert "bits/param" in text and "accuracy of the decoded file" in text
  assert not [o for c in code for o in c["outputs"] if o["output_type"] == "error"]
