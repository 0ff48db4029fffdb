"""The mutant list stays runnable: every patch still applies to exactly
one place, names are unique, and the tests each names exist. (Running
the mutants is `python tests/mutation/run.py`, minutes, not a test.)"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "mutation"))

import run  # noqa: E402


def test_every_mutant_applies_to_the_tree():
    mutants = run.load_mutants()
    assert len(mutants) >= 30
    assert run.problems(mutants) == []


def test_a_patch_that_no_longer_applies_is_reported(tmp_path):
    (tmp_path / "a.py").write_text("x = 1\nx = 1\n")
    (tmp_path / "a_test.py").write_text("")
    run.load_mutants()  # puts the repository on sys.path
    from tests.mutation.mutant import Mutant

    mutant = Mutant("m", "f", "a.py", "x = 1", "x = 2", ("a_test.py",))
    assert run.problems([mutant], root=tmp_path) == [
        "m: `old` occurs 2 times in a.py"
    ]
