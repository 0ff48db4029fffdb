"""Runs the notebooks in `notebooks/` headless; any cell error fails."""

import os
import re

import nbformat
import pytest
from nbclient import NotebookClient

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _text(cell):
    return "".join(
        output.get("text", "") + output.get("data", {}).get("text/plain", "")
        for output in cell.outputs
    )


def _run(name, monkeypatch):
    """Executes `notebooks/<name>` in a fresh kernel; returns the text its
    code cells printed. Raises CellExecutionError on any cell error, a
    failed `assert` in the notebook included."""
    # The kernel inherits the environment (TFDS_DATA_DIR from conftest.py
    # too): no display, so no GUI backend.
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = nbformat.read(
        os.path.join(REPO, "notebooks", name), as_version=4
    )
    client = NotebookClient(
        notebook,
        timeout=120,
        kernel_name="python3",
        resources={"metadata": {"path": REPO}},
    )
    client.execute()
    return "\n".join(_text(c) for c in notebook.cells if c.cell_type == "code")


@pytest.mark.slow
def test_quickstart_runs_headless(monkeypatch):
    """Slow (a kernel, a TF import, a short fit) but the notebook is the
    first thing users run, so it must not rot."""
    text = _run("quickstart.ipynb", monkeypatch)
    # gradcheck's table covers the notebook layer's weights, all passing.
    assert "gated_linear/a" in text and "gated_linear/b" in text
    assert "FAIL" not in text
    accuracy = float(re.search(r"test accuracy: ([0-9.]+)", text).group(1))
    assert accuracy > 0.9


@pytest.mark.slow
def test_attention_runs_headless(monkeypatch):
    """Slow (a kernel, a TF import, gradchecks, 120 training steps): the
    notebook is the worked example of a new attention layer, and its own
    asserts (causality, padding, gradcheck) fail the run if it rots."""
    text = _run("attention.ipynb", monkeypatch)
    # Both weights are checked at order 1 and 2, and pass.
    for check in ("order 1: J vs FD", "order 2: Hu forward vs FD"):
        for weight in ("qkv", "out"):
            rows = re.findall(rf"attention\S*/{weight} .*{check}.*", text)
            assert rows and all(row.rstrip().endswith(" ok") for row in rows)
    # The twin with a wrong softmax backward is caught.
    assert "broken twin caught: gradient check failed" in text
    # It learns: validation bits per character fall, far below uniform
    # (6.58) and below predicting each character by its frequency (4.8).
    bpc = [
        float(b)
        for b in re.findall(r"validation bits per character ([0-9.]+)", text)
    ]
    assert len(bpc) == 4
    assert bpc[-1] < bpc[0] and bpc[-1] < 4.0
    # A line is sampled after the prompt.
    assert re.search(r"^The list \S", text, re.MULTILINE)
