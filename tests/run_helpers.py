"""Helpers for tests of the trainer: a tiny config for in-process runs, and
`train.py` run as a user would, in a subprocess."""

import json
import os
import subprocess
import sys
import time

from configs import default, lm
from template_trainer.data.python_docs import builder as python_docs

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


# `configs/lm.py` made tiny (16 wide, one block of two heads), so an epoch
# (the training split once: 81 steps of 256 windows of 64 characters) takes
# seconds. A learning rate of 1e-2 makes that epoch enough to beat a
# unigram model by far (~4.1 bits per character against its 4.8).
TINY_LM = {
    "model.width": 16,
    "model.num_layers": 1,
    "model.num_heads": 2,
    "model.hidden_units": 32,
    "context_length": 64,
    "batch_size": 256,
    "learning_rate": 1e-2,
    "warmup_steps": 10,
    "num_epochs": 1,
    # Three loop calls of the same length: `train_steps` is traced once
    # per length (a trace of this step costs seconds).
    "steps_per_loop": 27,
}
LM_STEPS_PER_EPOCH = 81


def tiny_lm_config(**overrides):
    """`configs/lm.py` with `TINY_LM`, then `overrides` (dotted names for
    model fields: `**{"model.dropout": 0.1}`). Op determinism stays off,
    as in `tiny_config`."""
    config = lm.get_config()
    config.deterministic = False
    for name, value in {**TINY_LM, **overrides}.items():
        *parents, field = name.split(".")
        node = config
        for parent in parents:
            node = node[parent]
        node[field] = value
    return config


def tiny_lm_flags(*overrides):
    """`TINY_LM` as `train.py` flags (for `config="lm.py"`), then
    `overrides`. Op determinism is `configs/lm.py`'s: on."""
    return [f"--config.{k}={v}" for k, v in TINY_LM.items()] + list(overrides)


def corpus_splits():
    """The text of each split of `python_docs`, cut from the bundled
    corpus by the builder's rule, not read through TFDS."""
    text = python_docs.read_corpus()
    length = python_docs.BLOCK_LENGTH
    splits = {"train": [], "validation": [], "test": []}
    for index, start in enumerate(range(0, len(text), length)):
        block = text[start : start + length]
        splits[python_docs.split_of_block(index)].append(block)
    return {split: "".join(blocks) for split, blocks in splits.items()}


def same_threads_env(**extra):
    """`os.environ` (and `extra`) for a fresh process whose results are
    compared bit for bit with this one's: TensorFlow's thread count as in
    this process (`conftest.py` sets one in test processes), since it
    decides how sums are split, and so their rounding."""
    import tensorflow as tf

    env = {**os.environ, **extra}
    threads = tf.config.threading.get_intra_op_parallelism_threads()
    if threads:
        env["TF_NUM_INTRAOP_THREADS"] = str(threads)
    return env


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


def start(workdir, *overrides, config="default.py"):
    return subprocess.Popen(
        train_command(workdir, *overrides, config=config),
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
