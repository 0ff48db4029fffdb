"""Helpers for tests of the trainer: a tiny config for in-process runs, and
`train.py` run as a user would, in a subprocess."""

import json
import os
import subprocess
import sys
import time

from configs import default

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Digits: 1,302 training examples after the validation slice, so 41 steps of
# 32 per epoch.
STEPS_PER_EPOCH = 41


def tiny_config(**overrides):
    """`configs/default.py` made small and fast: a 32-unit MLP, 2 epochs,
    validation after each. Op determinism stays off: it is process-wide
    and permanent, and would change later in-process tests (Keras then
    declines XLA)."""
    config = default.get_config()
    config.deterministic = False
    config.model.hidden_units = (32,)
    config.model.dropout = 0.0  # two epochs of a tiny model: learn fast
    config.num_epochs = 2
    config.val_every_epochs = 1
    config.schedule = "constant"
    config.update(overrides)
    return config


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
