"""A workdir that vanishes under a run (deleted, or replaced by a file, as
when a mount goes away) ends it in one line, as a full disk does: what
TensorFlow raises then (FailedPrecondition, NotFound, Unknown) is a
write failure, not a crash."""

import os
import shutil

import pytest
import tensorflow as tf
from run_helpers import STEPS_PER_EPOCH, tiny_config

import template_trainer
from template_trainer import errors


@pytest.mark.slow
def test_workdir_replaced_by_a_file_mid_run(tmp_path):
    """Slow: a training run of its own."""
    workdir = tmp_path / "run"
    save = tf.train.CheckpointManager.save
    calls = []

    def save_then_vanish(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            shutil.rmtree(workdir)
            workdir.write_text("not a directory any more")
        return save(self, *args, **kwargs)

    config = tiny_config(checkpoint_every_steps=STEPS_PER_EPOCH)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tf.train.CheckpointManager, "save", save_then_vanish)
        with pytest.raises(template_trainer.WriteError) as failed:
            template_trainer.train_and_evaluate(config, str(workdir))
    message = str(failed.value)
    assert message.startswith("could not write the checkpoint to ")
    assert "FailedPreconditionError" in message and "\n" not in message
    assert failed.value.exit_code == 1


@pytest.mark.parametrize(
    "error",
    [
        tf.errors.NotFoundError(None, None, "run/ckpt: No such file"),
        tf.errors.FailedPreconditionError(None, None, "run is not a dir"),
        tf.errors.UnknownError(None, None, "run: Input/output error"),
    ],
)
def test_what_a_vanished_workdir_raises_is_a_write_error(error):
    with pytest.raises(errors.WriteError) as failed:
        with errors.writing("checkpoint", "run/ckpt"):
            raise error
    assert type(error).__name__ in str(failed.value)
    assert os.path.basename(str(failed.value.path)) == "ckpt"
