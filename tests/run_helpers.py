"""Helpers for tests that run `train.py` as a user would, in a subprocess."""

import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def train_command(workdir, *overrides, config="default.py"):
    return [
        sys.executable,
        os.path.join(REPO, "train.py"),
        "--config",
        os.path.join(REPO, "configs", config),
        "--workdir",
        str(workdir),
        *overrides,
    ]


def run(workdir, *overrides, **kwargs):
    return subprocess.run(
        train_command(workdir, *overrides, **kwargs),
        capture_output=True,
        text=True,
    )


def start(workdir, *overrides):
    return subprocess.Popen(
        train_command(workdir, *overrides),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def logged_steps(workdir):
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        lines = f.read().splitlines()
    # The last line may be half-written while the trainer runs.
    steps = []
    for line in lines:
        try:
            steps.append(json.loads(line)["step"])
        except ValueError:
            break
    return steps


def wait_for(condition, process, timeout=180):
    """Polls `condition()` until true; fails if `process` ends first."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        if process.poll() is not None:
            raise AssertionError(
                "trainer ended before the awaited moment:\n"
                + process.stderr.read()[-3000:]
            )
        time.sleep(0.01)
    raise AssertionError("timed out waiting for the trainer")


def latest_checkpoint_step(workdir):
    index = os.path.join(workdir, "checkpoints", "checkpoint")
    if not os.path.exists(index):
        return None
    with open(index) as f:
        first = f.readline()
    return int(first.rsplit("-", 1)[1].strip().strip('"'))
