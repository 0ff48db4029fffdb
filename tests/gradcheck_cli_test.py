"""`python -m mylayers.gradcheck`, in a process of its own: a file of its
own, so the test processes share the suite's slowest tests out evenly."""

import os
import subprocess
import sys

import pytest

from mylayers.gradcheck.__main__ import cli_cases


@pytest.mark.slow
def test_cli_checks_every_layer():
    """`python -m mylayers.gradcheck` passes. Slow (about 35 s): a second
    process that checks every layer at orders 1 and 2 in three modes."""
    result = subprocess.run(
        [sys.executable, "-m", "mylayers.gradcheck"],
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert result.returncode == 0, result.stdout[-3000:]
    lines = result.stdout.splitlines()
    assert lines[0].split()[:2] == ["target", "tensor"]
    targets = {line.split()[0] for line in lines[1:-2]}
    assert len(targets) == len(cli_cases())
    assert lines[-1].endswith(": 0 failed, 4 skipped.")
