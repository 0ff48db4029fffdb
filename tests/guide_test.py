"""Runs every code block of `docs/custom_gradients.md`, in order."""

import os
import re

import pytest

GUIDE = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    "docs",
    "custom_gradients.md",
)


def _python_blocks():
    with open(GUIDE) as f:
        return re.findall(r"^```python\n(.*?)^```$", f.read(), re.S | re.M)


def test_guide_has_code():
    with open(GUIDE) as f:
        text = f.read()
    # Every fenced block is Python, so every one of them is run below.
    assert text.count("```python") == text.count("```") // 2
    assert len(_python_blocks()) >= 8


@pytest.mark.slow
def test_guide_code_blocks_run():
    """Slow (about 5 s): the guide's blocks build, check and train layers."""
    namespace = {"__name__": "guide"}
    for i, block in enumerate(_python_blocks()):
        try:
            exec(compile(block, f"{GUIDE} block {i}", "exec"), namespace)
        except Exception as error:
            pytest.fail(f"block {i} failed: {error!r}\n{block}")
