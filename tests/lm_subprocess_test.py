"""The character LM across process boundaries: MirroredStrategy over two
logical CPUs (it must be a process's first TensorFlow set-up) and SIGKILL
then resume. A file of its own, so the test processes share the suite's
slowest tests out evenly."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from run_helpers import (
    REPO,
    latest_checkpoint_step,
    logged_steps,
    start,
    tiny_lm_flags,
    wait_for,
)

_MIRRORED = """
import json
import numpy as np
import tensorflow as tf
from run_helpers import tiny_lm_config
from template_trainer import setup

config = tiny_lm_config(batch_size=32, distribution="mirrored", cpu_devices=2)
mirrored = setup.create_run(config, None, setup.create_strategy(config))
single = setup.create_run(
    tiny_lm_config(batch_size=32), None, tf.distribute.get_strategy()
)
start = single.model.get_weights()
same_start = all(
    np.array_equal(a, b) for a, b in zip(mirrored.model.get_weights(), start)
)
mirrored.train_steps(mirrored.iterator, tf.constant(4, tf.int64))
for _ in range(4):
    single.model.train_step(next(single.iterator))
pairs = list(zip(mirrored.model.get_weights(), single.model.get_weights()))
print(json.dumps({
    "replicas": mirrored.strategy.num_replicas_in_sync,
    "same_start": same_start,
    "max_diff": max(float(np.abs(a - b).max()) for a, b in pairs),
    "moved": max(
        float(np.abs(a - b).max())
        for a, b in zip(single.model.get_weights(), start)
    ),
}))
"""


@pytest.mark.slow
def test_mirrored_lm_trains_as_one_device():
    """Two replicas on two logical CPUs train the LM as one device on the
    same global batch: attention, the masked loss and clipping (the tiny
    config clips at 1.0) reduce across replicas as over the whole batch."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [os.path.join(REPO, "tests"), REPO, env.get("PYTHONPATH", "")]
    )
    result = subprocess.run(
        [sys.executable, "-c", _MIRRORED],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["replicas"] == 2
    assert report["same_start"]
    assert report["moved"] > 1e-3
    assert report["max_diff"] < 1e-5


# Loop calls of 3 steps (one trace of the loop), a checkpoint every 27:
# killed once step 30 is logged (24 steps before the next save), a run
# resumes from step 27 and trains steps 28-30 again.
RESUMABLE = tiny_lm_flags(
    "--config.steps_per_loop=3", "--config.checkpoint_every_steps=27"
)


def _checkpoint(workdir, step):
    """Every value checkpoint `step` of `workdir` holds, by name, but the
    data iterator's state (a variant, which numpy cannot hold; its
    position shows in the weights trained on the batches it gave)."""
    path = os.path.join(workdir, "checkpoints", f"ckpt-{step}")
    reader = tf.train.load_checkpoint(path)
    return {
        name: reader.get_tensor(name)
        for name, dtype in reader.get_variable_to_dtype_map().items()
        if dtype != tf.variant
    }


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_is_byte_identical(tmp_path, monkeypatch):
    """As `resume_test.py`'s for the digits MLP, with what the LM adds:
    the training iterator is a counter whose batches are drawn from the
    seed and the batch number, AdamW's slots, attention and rotary
    positions. Op determinism on (`configs/lm.py`'s default), so equal
    means bit for bit.

    Both runs are compared at their checkpoint of step 54, 27 steps after
    the resume: weights, optimizer slots and step, all a further step
    depends on but the iterator, whose position shows in the weights.
    Finishing the epoch would add ~10 s of steps, evaluation and export,
    which `resume_test.py` covers.
    """
    monkeypatch.setenv("PYTHONUNBUFFERED", "1")  # what a killed run said
    # A data directory of the test's own: one of the first two runs
    # prepares the dataset, the other reads it prepared (preparing it once
    # drew from the RNG that the model's initial weights come from).
    flags = [*RESUMABLE, f"--config.data_dir={tmp_path / 'data'}"]
    reference_dir, workdir = tmp_path / "uninterrupted", tmp_path / "killed"
    # The reference runs meanwhile: the two cores are shared anyway.
    reference = start(reference_dir, *flags, config="lm.py")
    process = start(workdir, *flags, config="lm.py")
    wait_for(lambda: any(s >= 30 for s in logged_steps(workdir)), process)
    process.kill()
    process.communicate()
    assert latest_checkpoint_step(workdir) == 27

    resumed = start(workdir, *flags, config="lm.py")
    for where, trainer in ((workdir, resumed), (reference_dir, reference)):
        wait_for(lambda: (latest_checkpoint_step(where) or 0) >= 54, trainer)
        trainer.kill()
    stdout, _ = resumed.communicate()
    reference.communicate()
    assert "at step 27." in stdout
    ours, theirs = _checkpoint(workdir, 54), _checkpoint(reference_dir, 54)
    assert ours.keys() == theirs.keys()
    assert len(ours) > 20
    differ = [k for k in ours if not np.array_equal(ours[k], theirs[k])]
    assert not differ
    # Steps 28-30, trained twice, are logged once.
    assert logged_steps(workdir) == list(range(3, 55, 3))
