"""A run that is killed, preempted or damaged loses no work."""

import os
import signal

import keras
import numpy as np
import pytest
from run_helpers import (
    latest_checkpoint_step,
    logged_steps,
    run,
    start,
    wait_for,
)

import models  # noqa: F401  (registers the classes load_model needs)

# A model slow enough per step (~10-30 ms on 2 cores) to stop at a chosen
# step, with dropout, whose RNG state the checkpoint must carry.
SLOW = [
    "--config.model.hidden_units=(2048, 2048)",
    "--config.model.dropout=0.2",
    "--config.batch_size=128",  # 12 steps per epoch
    "--config.num_epochs=12",  # 144 steps
    "--config.steps_per_loop=1",
    "--config.checkpoint_every_steps=10",
    "--config.eval_every_epochs=4",
    "--config.warmup_steps=20",
]


def _weights(workdir):
    model = keras.models.load_model(os.path.join(workdir, "model.keras"))
    return model.get_weights()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    result = run(workdir, *SLOW)
    assert result.returncode == 0, result.stderr[-3000:]
    return _weights(workdir)


def _kill_mid_epoch(workdir, process):
    wait_for(lambda: any(s >= 37 for s in logged_steps(workdir)), process)


def _kill_right_after_checkpoint(workdir, process):
    wait_for(lambda: (latest_checkpoint_step(workdir) or 0) >= 60, process)


def _kill_late(workdir, process):
    wait_for(lambda: any(s >= 125 for s in logged_steps(workdir)), process)


@pytest.mark.slow
@pytest.mark.parametrize(
    "kill_when", [_kill_mid_epoch, _kill_right_after_checkpoint, _kill_late]
)
def test_sigkill_then_resume_is_byte_identical(
    tmp_path, uninterrupted, kill_when
):
    """Exact resume is the trainer's central promise; only real SIGKILLs of
    a real subprocess at several points show it holds."""
    process = start(tmp_path, *SLOW)
    kill_when(tmp_path, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = latest_checkpoint_step(tmp_path)
    assert killed_at is not None and 0 < killed_at < 144
    assert not (tmp_path / "model.keras").exists()

    result = run(tmp_path, *SLOW)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"at step {killed_at}." in result.stdout
    for ours, reference in zip(_weights(tmp_path), uninterrupted):
        np.testing.assert_array_equal(ours, reference)
    # Steps logged after the checkpoint and trained again are logged once.
    assert logged_steps(tmp_path) == list(range(1, 145))


@pytest.mark.slow
def test_sigterm_saves_and_says_how_to_resume(tmp_path):
    process = start(tmp_path, *SLOW)
    wait_for(lambda: any(s >= 25 for s in logged_steps(tmp_path)), process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM
    assert "Traceback" not in stderr
    stopped_at = latest_checkpoint_step(tmp_path)
    assert f"stopped by SIGTERM at step {stopped_at}" in stderr
    assert "Rerun the same command to resume" in stderr
    # Saved at the signal, not at the last scheduled checkpoint.
    assert stopped_at % 10 != 0 or stopped_at >= 25

    result = run(tmp_path, *SLOW)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"at step {stopped_at}." in result.stdout
    assert "Done: step=144" in result.stdout


def test_truncated_newest_checkpoint_falls_back(tmp_path):
    tiny = [
        "--config.model.hidden_units=(16,)",
        "--config.num_epochs=2",
        "--config.checkpoint_every_steps=30",
    ]
    assert run(tmp_path, *tiny).returncode == 0
    data = tmp_path / "checkpoints" / "ckpt-92.data-00000-of-00001"
    size = data.stat().st_size
    with open(data, "r+b") as f:
        f.truncate(size // 2)

    result = run(tmp_path, *tiny[:1], "--config.num_epochs=3", *tiny[2:])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ckpt-92 is damaged" in result.stderr
    assert "ckpt-90 at step 90." in result.stdout
    assert "Done: step=138" in result.stdout


def test_second_trainer_on_same_workdir_fails_fast(tmp_path):
    first = start(tmp_path, *SLOW)
    try:
        wait_for(lambda: logged_steps(tmp_path), first)
        second = run(tmp_path, *SLOW)
        assert second.returncode == 2
        assert "Traceback" not in second.stderr
        assert f"in use by a running trainer (pid {first.pid})" in second.stderr
        assert first.poll() is None, "the first trainer must keep running"
    finally:
        first.kill()
        first.wait()


def test_resume_with_other_config_is_refused(tmp_path):
    tiny = ["--config.model.hidden_units=(16,)", "--config.num_epochs=1"]
    assert run(tmp_path, *tiny).returncode == 0

    refused = run(
        tmp_path, "--config.model.hidden_units=(32,)", "--config.num_epochs=2"
    )
    assert refused.returncode == 2
    message = [
        line
        for line in refused.stderr.splitlines()
        if line.startswith("error:")
    ]
    assert len(message) == 1
    assert "model.hidden_units: [16] -> [32]" in message[0]
    assert "num_epochs" not in message[0]  # the run length may change

    longer = run(tmp_path, tiny[0], "--config.num_epochs=2")
    assert longer.returncode == 0, longer.stderr[-3000:]
    assert "at step 46." in longer.stdout

    allowed = run(
        tmp_path,
        "--config.model.hidden_units=(16,)",
        "--config.learning_rate=1e-4",
        "--config.num_epochs=3",
        "--allow_config_change",
    )
    assert allowed.returncode == 0, allowed.stderr[-3000:]
    assert "Done: step=138" in allowed.stdout


def _error_lines(result):
    return [
        line for line in result.stderr.splitlines() if line.startswith("error:")
    ]


def test_model_change_with_allow_config_change_keeps_the_run(tmp_path):
    """A config that changes the model's shapes cannot resume the run: it
    must say so (not call good checkpoints damaged) and leave config.json
    as it was, so the original command still resumes."""
    tiny = ["--config.model.hidden_units=(16,)", "--config.num_epochs=1"]
    assert run(tmp_path, *tiny).returncode == 0
    saved = (tmp_path / "config.json").read_text()

    changed = run(
        tmp_path,
        "--config.model.hidden_units=(32,)",
        "--config.num_epochs=2",
        "--allow_config_change",
    )
    assert changed.returncode == 2
    assert "Traceback" not in changed.stderr
    assert "damaged" not in changed.stderr
    [message] = _error_lines(changed)
    assert "ckpt-46 does not fit the model of this config" in message
    assert (tmp_path / "config.json").read_text() == saved

    resumed = run(tmp_path, tiny[0], "--config.num_epochs=2")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "at step 46." in resumed.stdout


def test_workdir_without_checkpoint_takes_a_new_config(tmp_path):
    """A run that failed before its first save left config.json but nothing
    to resume: a corrected config must start afresh, not be refused."""
    (tmp_path / "config.json").write_text('{"learning_rate": 123.0}')
    (tmp_path / "metrics.jsonl").write_text('{"step": 40, "loss": 1.0}\n')
    tiny = ["--config.model.hidden_units=(16,)", "--config.num_epochs=1"]
    result = run(tmp_path, *tiny)
    assert result.returncode == 0, result.stderr[-3000:]
    assert '"learning_rate": 0.003' in (tmp_path / "config.json").read_text()
    # The failed attempt's records are gone; this run's are in order.
    assert logged_steps(tmp_path) == [46]


def test_half_written_metrics_line_does_not_break_the_resume(tmp_path):
    tiny = ["--config.model.hidden_units=(16,)", "--config.num_epochs=1"]
    assert run(tmp_path, *tiny).returncode == 0
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 50, "loss": 0.')  # cut off mid-write
    result = run(tmp_path, tiny[0], "--config.num_epochs=2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "curves.png").exists()
    assert logged_steps(tmp_path) == [46, 92]
    for line in (tmp_path / "metrics.jsonl").read_text().splitlines():
        assert line.endswith("}")


def test_rerun_past_the_end_says_there_is_nothing_to_train(tmp_path):
    tiny = ["--config.model.hidden_units=(16,)", "--config.num_epochs=2"]
    assert run(tmp_path, *tiny).returncode == 0
    shorter = run(tmp_path, tiny[0], "--config.num_epochs=1")
    assert shorter.returncode == 0, shorter.stderr[-3000:]
    assert "already at step 92, at or past this config's 46 steps" in (
        shorter.stdout
    )
