"""A run that is killed, preempted, damaged or rerun loses no work."""

import json
import os
import shutil
import signal

import keras
import numpy as np
import pytest
from run_helpers import (
    STEPS_PER_EPOCH,
    latest_checkpoint_step,
    logged_steps,
    run,
    start,
    tiny_config,
    wait_for,
)

import models  # noqa: F401  (registers the classes load_model needs)
import template_trainer
from template_trainer import workdir as workdir_guard

# A run of one step per loop call (~15 ms a step on 2 cores, logged each
# step), so it can be stopped near a chosen step, with dropout, whose RNG
# state the checkpoint must carry.
SLOW = [
    "--config.model.hidden_units=(512, 512)",
    "--config.model.dropout=0.2",
    "--config.batch_size=128",  # 11 steps per epoch
    "--config.num_epochs=6",  # 66 steps
    "--config.steps_per_loop=1",
    "--config.checkpoint_every_steps=10",
    "--config.val_every_epochs=3",
    "--config.warmup_steps=20",
]
SLOW_STEPS = 66


def _weights(workdir):
    model = keras.models.load_model(os.path.join(workdir, "model.keras"))
    return model.get_weights()


@pytest.mark.slow
def test_sigterm_then_sigkill_then_resume_is_byte_identical(tmp_path):
    """Exact resume is the trainer's central promise; only real signals to
    a real subprocess show it holds.

    One run, stopped twice: SIGTERM (a preempted job: it saves at the
    signal, says how to resume and exits 143), then, after the rerun has
    passed its next checkpoint, SIGKILL in the middle of an epoch (the
    second rerun trains the steps after that checkpoint again, with the
    same data and dropout). It ends byte-identical to a run never stopped.
    """
    workdir = tmp_path / "stopped"
    # The run never stopped, meanwhile: the two cores are shared anyway.
    reference = start(tmp_path / "uninterrupted", *SLOW)
    process = start(workdir, *SLOW)
    wait_for(lambda: any(s >= 25 for s in logged_steps(workdir)), process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM
    assert "Traceback" not in stderr
    stopped_at = latest_checkpoint_step(workdir)
    assert f"stopped by SIGTERM at step {stopped_at}" in stderr
    assert "Rerun the same command to resume" in stderr
    # Saved at the signal, not at the last scheduled checkpoint.
    assert stopped_at % 10 != 0 or stopped_at >= 25

    process = start(workdir, *SLOW)
    kill_after = max(stopped_at + 12, 37)
    wait_for(
        lambda: any(s >= kill_after for s in logged_steps(workdir)), process
    )
    process.send_signal(signal.SIGKILL)
    _, _ = process.communicate()
    killed_at = latest_checkpoint_step(workdir)
    assert stopped_at < killed_at < SLOW_STEPS
    assert not (workdir / "model.keras").exists()

    result = run(workdir, *SLOW)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"at step {killed_at}." in result.stdout
    assert f"Done: step={SLOW_STEPS}" in result.stdout
    _, stderr = reference.communicate(timeout=300)
    assert reference.returncode == 0, stderr[-3000:]
    expected = _weights(tmp_path / "uninterrupted")
    for ours, theirs in zip(_weights(workdir), expected, strict=True):
        np.testing.assert_array_equal(ours, theirs)
    # Steps logged after a checkpoint and trained again are logged once.
    assert logged_steps(workdir) == list(range(1, SLOW_STEPS + 1))


def _train(workdir, allow_config_change=False, **overrides):
    config = tiny_config(**overrides)
    config.model.hidden_units = overrides.pop("hidden_units", (16,))
    return template_trainer.train_and_evaluate(
        config, str(workdir), allow_config_change
    )


@pytest.fixture(scope="session")
def one_epoch(tmp_path_factory):
    """A finished one-epoch run of the tiny config, for tests to copy."""
    workdir = tmp_path_factory.mktemp("one_epoch")
    _train(workdir, num_epochs=1)
    return workdir


@pytest.fixture
def finished(one_epoch, tmp_path):
    """A copy of `one_epoch`'s workdir, for one test to resume or damage."""
    workdir = tmp_path / "run"
    shutil.copytree(one_epoch, workdir)
    return workdir


@pytest.mark.slow
def test_truncated_newest_checkpoint_falls_back(tmp_path, capsys, caplog):
    _train(tmp_path, checkpoint_every_steps=30)  # saves 30, 60, 82
    data = tmp_path / "checkpoints" / "ckpt-82.data-00000-of-00001"
    with open(data, "r+b") as f:
        f.truncate(data.stat().st_size // 2)

    metrics = _train(tmp_path, num_epochs=3, checkpoint_every_steps=30)
    assert "ckpt-82 is damaged" in caplog.text
    assert "ckpt-60 at step 60." in capsys.readouterr().out
    assert metrics["step"] == 3 * STEPS_PER_EPOCH


def test_second_trainer_on_same_workdir_fails_fast(tmp_path):
    with workdir_guard.lock(str(tmp_path)):
        with pytest.raises(workdir_guard.WorkdirInUseError) as error:
            _train(tmp_path)
    assert f"in use by a running trainer (pid {os.getpid()})" in str(
        error.value
    )
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.slow
def test_resume_with_other_config_is_refused(finished, capsys):
    with pytest.raises(workdir_guard.ConfigMismatchError) as refused:
        _train(finished, num_epochs=2, hidden_units=(32,))
    message = str(refused.value)
    assert "model.hidden_units: [16] -> [32]" in message
    assert "num_epochs" not in message  # the run length may change

    _train(finished, num_epochs=2)
    assert f"at step {STEPS_PER_EPOCH}." in capsys.readouterr().out

    metrics = _train(
        finished, allow_config_change=True, num_epochs=3, learning_rate=1e-4
    )
    assert metrics["step"] == 3 * STEPS_PER_EPOCH


@pytest.mark.slow
def test_settings_that_leave_the_computation_may_change(finished, capsys):
    """Checkpoint cadence, keep-K and the logging interval change how often
    the run saves and logs, not what it computes."""
    metrics = _train(
        finished,
        num_epochs=2,
        checkpoint_every_steps=20,
        checkpoint_every_secs=60,
        max_checkpoints_to_keep=5,
        steps_per_loop=7,
    )
    assert f"at step {STEPS_PER_EPOCH}." in capsys.readouterr().out
    assert metrics["step"] == 2 * STEPS_PER_EPOCH
    saved = json.loads((finished / "config.json").read_text())
    assert saved["steps_per_loop"] == 7


@pytest.mark.slow
def test_run_of_an_older_trainer_is_refused_in_one_line(finished):
    """Before the validation split, config.json had no val_fraction; such a
    run trained on other examples and cannot resume."""
    path = finished / "config.json"
    old = json.loads(path.read_text())
    del old["val_fraction"]
    path.write_text(json.dumps(old))
    for allow in (False, True):
        with pytest.raises(workdir_guard.ConfigMismatchError) as refused:
            _train(finished, allow_config_change=allow, num_epochs=2)
        assert "older version of this trainer" in str(refused.value)
        assert "use a new --workdir" in str(refused.value)
    assert json.loads(path.read_text()) == old


@pytest.mark.slow
def test_model_change_with_allow_config_change_keeps_the_run(finished, capsys):
    """A config that changes the model's shapes cannot resume the run: it
    must say so (not call good checkpoints damaged) and leave config.json
    as it was, so the original command still resumes."""
    saved = (finished / "config.json").read_text()
    error = template_trainer.checkpoints.CheckpointMismatchError
    with pytest.raises(error) as changed:
        _train(
            finished,
            allow_config_change=True,
            num_epochs=2,
            hidden_units=(32,),
        )
    assert f"ckpt-{STEPS_PER_EPOCH} does not fit the model of this config" in (
        str(changed.value)
    )
    assert (finished / "config.json").read_text() == saved
    capsys.readouterr()
    _train(finished, num_epochs=2)
    assert f"at step {STEPS_PER_EPOCH}." in capsys.readouterr().out


@pytest.mark.slow
def test_workdir_without_checkpoint_takes_a_new_config(tmp_path):
    """A run that failed before its first save left config.json but nothing
    to resume: a corrected config must start afresh, not be refused."""
    (tmp_path / "config.json").write_text('{"learning_rate": 123.0}')
    (tmp_path / "metrics.jsonl").write_text('{"step": 40, "loss": 1.0}\n')
    _train(tmp_path, num_epochs=1)
    assert '"learning_rate": 0.003' in (tmp_path / "config.json").read_text()
    # The failed attempt's records are gone; this run's are in order.
    assert logged_steps(tmp_path) == [STEPS_PER_EPOCH]


@pytest.mark.slow
def test_half_written_metrics_line_does_not_break_the_resume(finished):
    with open(finished / "metrics.jsonl", "a") as f:
        f.write('{"step": 50, "loss": 0.')  # cut off mid-write
    _train(finished, num_epochs=2)
    assert (finished / "curves.png").exists()
    assert logged_steps(finished) == [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]
    for line in (finished / "metrics.jsonl").read_text().splitlines():
        assert line.endswith("}")


@pytest.mark.slow
def test_rerun_past_the_end_says_there_is_nothing_to_train(tmp_path, capsys):
    first = _train(tmp_path, num_epochs=2)
    capsys.readouterr()
    again = _train(tmp_path, num_epochs=1)
    assert "already at step 82, at or past this config's 41 steps" in (
        capsys.readouterr().out
    )
    # The same model, tested again: the same figures, each step logged once.
    assert again["test_accuracy"] == first["test_accuracy"]
    # A config that trained nothing does not replace the one that did.
    assert json.loads((tmp_path / "config.json").read_text())["num_epochs"] == 2
    assert logged_steps(tmp_path) == [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]
