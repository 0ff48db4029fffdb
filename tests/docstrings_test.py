"""Runs every `>>>` example in the package docstrings."""

import doctest
import importlib
import pkgutil

import pytest
import tensorflow as tf

import models
import mylayers
import template_trainer

MODULES = sorted(
    f"{package.__name__}.{info.name}"
    for package in (mylayers, models, template_trainer)
    for info in pkgutil.iter_modules(package.__path__)
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(
        module,
        extraglobs={"tf": tf},
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
    )
    assert result.failed == 0


def test_layers_have_examples():
    finder = doctest.DocTestFinder()
    for name in mylayers.__all__:
        tests = finder.find(getattr(mylayers, name))
        assert any(t.examples for t in tests), (
            f"{name} has no >>> example in its docstring; every public name "
            "of mylayers shows one, run by this test"
        )


def test_ci_runs_the_readme_test_command():
    import os

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(repo, "README.md")) as f:
        readme = f.read()
    commands = [line for line in readme.splitlines() if "pip install" in line]
    # The README's first two commands: train, then test with the lock.
    assert "train.py --config configs/default.py" in commands[0]
    assert "-c requirements-lock.txt" in commands[1]
    assert commands[1].endswith("pytest -q")
    with open(os.path.join(repo, ".ci", "run")) as f:
        ci = f.read()
    # .ci/run greps the README for the command and runs it as written.
    assert (
        "grep -m1 'pip install -c requirements-lock.txt -e \".\\[test\\]\"'"
        in ci
    )
