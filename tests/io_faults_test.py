"""A full disk or an unwritable workdir ends the run in one line, naming
what failed and the last good checkpoint, and loses nothing: the rerun
resumes. The write errors are injected where TensorFlow, Keras or Python
would raise them."""

import errno
import os

import keras
import pytest
import tensorflow as tf
from run_helpers import STEPS_PER_EPOCH, tiny_config

import template_trainer
from template_trainer import summaries

TOTAL = 3 * STEPS_PER_EPOCH


def _config():
    return tiny_config(num_epochs=3, checkpoint_every_steps=30)


def _fail_on_call(n, error):
    """A replacement that raises `error` from its `n`th call on."""
    calls = []

    def fail(original):
        def replacement(*args, **kwargs):
            calls.append(1)
            if len(calls) >= n:
                raise error
            return original(*args, **kwargs)

        return replacement

    return fail


def _assert_resumes(workdir, step, capsys):
    capsys.readouterr()
    metrics = template_trainer.train_and_evaluate(_config(), str(workdir))
    assert f"at step {step}." in capsys.readouterr().out
    assert metrics["step"] == TOTAL


@pytest.mark.slow
def test_full_disk_at_a_checkpoint(tmp_path, monkeypatch, capsys):
    full = tf.errors.ResourceExhaustedError(
        None, None, "ckpt-90_temp/part-00000; No space left on device"
    )
    save = tf.train.CheckpointManager.save

    def save_until_90(self, checkpoint_number=None, **kwargs):
        # Saves at 30 and 60 succeed; the one at 90 finds the disk full.
        if checkpoint_number == 90:
            raise full
        return save(self, checkpoint_number=checkpoint_number, **kwargs)

    monkeypatch.setattr(tf.train.CheckpointManager, "save", save_until_90)
    with pytest.raises(template_trainer.WriteError) as failed:
        template_trainer.train_and_evaluate(_config(), str(tmp_path))
    message = str(failed.value)
    assert message.startswith("could not write the checkpoint to ")
    assert (
        "ckpt-90 (ResourceExhaustedError: ckpt-90_temp/part-00000; No space "
        "left on device)"
    ) in message
    assert f"last good checkpoint, {tmp_path}/checkpoints/ckpt-60 " in message
    assert "(step 60)" in message and "rerun the same command" in message
    assert "\n" not in message
    assert failed.value.exit_code == 1
    monkeypatch.undo()
    _assert_resumes(tmp_path, 60, capsys)


@pytest.mark.slow
def test_workdir_that_becomes_unwritable(tmp_path, monkeypatch, capsys):
    """metrics.jsonl can no longer be appended to (the workdir's permissions
    or mount changed under the run)."""
    denied = PermissionError(
        errno.EACCES, "Permission denied", str(tmp_path / "metrics.jsonl")
    )
    # The fourth record (step 60, after the checkpoint there) fails.
    monkeypatch.setattr(
        summaries, "open", _fail_on_call(4, denied)(open), raising=False
    )
    with pytest.raises(template_trainer.WriteError) as failed:
        template_trainer.train_and_evaluate(_config(), str(tmp_path))
    message = str(failed.value)
    assert "could not write the metrics to" in message
    assert "(Permission denied)" in message
    assert "ckpt-60 (step 60)" in message
    monkeypatch.undo()
    _assert_resumes(tmp_path, 60, capsys)


@pytest.mark.slow
def test_export_that_cannot_be_written_leaves_the_old_one(
    tmp_path, monkeypatch, capsys
):
    config = _config()
    config.num_epochs = 1
    template_trainer.train_and_evaluate(config, str(tmp_path))
    before = (tmp_path / "model.keras").read_bytes()
    full = OSError(errno.ENOSPC, "No space left on device")
    # The first save is the start-of-run check's (to a temporary
    # directory); the second, the export at the end.
    monkeypatch.setattr(
        keras.Model, "save", _fail_on_call(2, full)(keras.Model.save)
    )
    with pytest.raises(template_trainer.WriteError) as failed:
        template_trainer.train_and_evaluate(_config(), str(tmp_path))
    message = str(failed.value)
    assert "could not write the model export to" in message
    assert "(No space left on device)" in message
    assert f"ckpt-{TOTAL} (step {TOTAL})" in message
    # The export of the first run is untouched, and no half-written file
    # is left beside it.
    assert (tmp_path / "model.keras").read_bytes() == before
    assert not [n for n in os.listdir(tmp_path) if "partial" in n]
    monkeypatch.undo()
    capsys.readouterr()
    metrics = template_trainer.train_and_evaluate(_config(), str(tmp_path))
    assert "already at step 123" in capsys.readouterr().out
    assert metrics["step"] == TOTAL
    assert (tmp_path / "model.keras").read_bytes() != before
