"""The character LM across a process boundary: SIGKILL, then resume. A
file of its own, so the test processes share the suite's slowest tests out
evenly. (Its run on two replicas is in `mirrored_test.py`.)"""

import os

import numpy as np
import pytest
import tensorflow as tf
from run_helpers import (
    latest_checkpoint_step,
    logged_steps,
    start,
    tiny_lm_flags,
    wait_for,
)

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
