"""Every Python code block in the README runs."""

import ast
import inspect
import os
import re
import textwrap

import models

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


def _methods(tree, names):
    """`name -> ast.dump` of the methods `names` in `tree`, without their
    docstrings (comments are not in the tree)."""
    found = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name in names:
            body = node.body
            if (
                body
                and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
            ):
                body = body[1:]
            found[node.name] = ast.dump(ast.Module(body, []))
    return found


def test_readme_step_is_custom_models_word_for_word():
    """The README's model of one's own copies `CustomModel`'s step: a
    change to the step that is not made there too fails here."""
    names = ("train_step", "test_step", "make_train_function")
    with open(os.path.join(REPO, "README.md")) as f:
        blocks = re.findall(r"```python\n(.*?)```", f.read(), re.S)
    [block] = [b for b in blocks if "class MyModel(keras.Model)" in b]
    source = textwrap.dedent(inspect.getsource(models.CustomModel))
    ours = _methods(ast.parse(source), names)
    assert sorted(ours) == sorted(names)
    assert _methods(ast.parse(block), names) == ours
