"""Every Python code block in the README runs."""

import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_readme_python_blocks_run():
    with open(os.path.join(REPO, "README.md")) as f:
        blocks = re.findall(r"```python\n(.*?)```", f.read(), re.S)
    assert len(blocks) >= 3
    namespace = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)
    # The seed example's numbers.
    assert float(namespace["dy_dx"]) == 34.0
    assert float(namespace["d2y_dx2"]) == 20.0
    assert namespace["model"].compiled
