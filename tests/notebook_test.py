"""Runs `notebooks/quickstart.ipynb` headless; any cell error fails."""

import os
import re

import nbformat
import pytest
from nbclient import NotebookClient

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO, "notebooks", "quickstart.ipynb")


def _text(cell):
    return "".join(
        output.get("text", "") + output.get("data", {}).get("text/plain", "")
        for output in cell.outputs
    )


@pytest.mark.slow
def test_quickstart_runs_headless(monkeypatch):
    """Slow (a kernel, a TF import, a short fit) but the notebook is the
    first thing users run, so it must not rot."""
    # The kernel inherits the environment: no display, so no GUI backend.
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=120,
        kernel_name="python3",
        resources={"metadata": {"path": REPO}},
    )
    client.execute()  # raises CellExecutionError on any error
    text = "\n".join(_text(c) for c in notebook.cells if c.cell_type == "code")
    # gradcheck's table covers the notebook layer's weights, all passing.
    assert "gated_linear/a" in text and "gated_linear/b" in text
    assert "FAIL" not in text
    accuracy = float(re.search(r"test accuracy: ([0-9.]+)", text).group(1))
    assert accuracy > 0.9
