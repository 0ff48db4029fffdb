"""The trainer on several replicas and several worker processes."""

import json
import os
import re
import signal
import socket
import subprocess
import time

import keras
import numpy as np
import pytest
from run_helpers import latest_checkpoint_step, run, train_command

import distribution
import models  # noqa: F401  (registers the classes load_model needs)


def _weights(path):
    return keras.models.load_model(path).get_weights()


def _assert_close(a, b, atol):
    for x, y in zip(_weights(a), _weights(b), strict=True):
        np.testing.assert_allclose(x, y, atol=atol, rtol=0)


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _start_workers(workdir, *overrides):
    cluster = {"worker": [f"127.0.0.1:{p}" for p in _free_ports(2)]}
    workers = []
    for index in range(2):
        env = dict(os.environ)
        env["TF_CONFIG"] = json.dumps(
            {"cluster": cluster, "task": {"type": "worker", "index": index}}
        )
        workers.append(
            subprocess.Popen(
                train_command(
                    workdir, "--config.distribution=multi_worker", *overrides
                ),
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    return workers


def _finish(workers, timeout=300):
    results = [w.communicate(timeout=timeout) for w in workers]
    for worker, (_, stderr) in zip(workers, results):
        assert worker.returncode == 0, stderr[-3000:]
    return [stdout for stdout, _ in results]


def test_multi_worker_needs_tf_config(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(distribution.DistributionError, match="TF_CONFIG"):
        distribution.create_strategy("multi_worker", 10)


# No dropout: a replica draws masks for its half batch, one device for the
# whole batch, so with dropout the two differ by design.
SHORT = [
    "--config.num_epochs=3",
    "--config.model.hidden_units=(64, 64)",
    "--config.model.dropout=0.0",
]


@pytest.mark.slow
def test_mirrored_equals_single_device(tmp_path):
    """Two replicas on two logical CPUs must train exactly like one device
    on the same global batch; only a real run under the strategy shows it."""
    single = run(tmp_path / "single", *SHORT)
    mirrored = run(
        tmp_path / "mirrored",
        *SHORT,
        "--config.distribution=mirrored",
        "--config.cpu_devices=2",
    )
    assert single.returncode == 0, single.stderr[-3000:]
    assert mirrored.returncode == 0, mirrored.stderr[-3000:]
    _assert_close(
        tmp_path / "single" / "model.keras",
        tmp_path / "mirrored" / "model.keras",
        atol=1e-5,
    )


@pytest.mark.slow
def test_two_workers_train_the_default_config(tmp_path):
    """The multi-worker path (which `model.fit` cannot take in Keras 3)
    only shows itself in real processes talking over loopback."""
    outputs = _finish(_start_workers(tmp_path / "cluster"))
    # The reference is one process splitting each global batch in two, as
    # the two workers do. Against an unsplit batch, rounding differs at
    # ~1e-7 per step, which 4,600 Adam steps amplify to ~0.1 (measured);
    # the short-run test below compares with one device.
    single = run(
        tmp_path / "single",
        "--config.distribution=mirrored",
        "--config.cpu_devices=2",
    )
    assert single.returncode == 0, single.stderr[-3000:]
    for stdout in outputs:
        assert "Done: step=4600" in stdout
    cluster = tmp_path / "cluster"
    assert (cluster / "checkpoints" / "ckpt-4600.index").exists()
    assert (cluster / "metrics.jsonl").exists()
    final = json.loads((cluster / "metrics.jsonl").read_text().splitlines()[-1])
    assert final["step"] == 4600 and final["eval_accuracy"] > 0.97
    # Both workers end with the same weights, equal to one process's.
    _assert_close(
        cluster / "model.keras", cluster / "worker-1" / "model.keras", atol=0
    )
    _assert_close(
        cluster / "model.keras", tmp_path / "single" / "model.keras", atol=1e-5
    )


# 2,760 steps, long enough to interrupt after the first checkpoint.
LONG = ["--config.num_epochs=60", "--config.checkpoint_every_steps=100"]


def _start_past_first_checkpoint(workdir):
    """Two workers of a `LONG` run, once the first checkpoint is written."""
    workers = _start_workers(workdir, *LONG)
    deadline = time.time() + 180
    while latest_checkpoint_step(workdir) is None and time.time() < deadline:
        for worker in workers:
            assert worker.poll() is None, worker.stderr.read()[-3000:]
        time.sleep(0.05)
    return workers


def _assert_rerun_resumes(workdir, step):
    """Both workers, started again, resume at `step` and finish the run."""
    for stdout in _finish(_start_workers(workdir, *LONG)):
        assert f"at step {step}." in stdout
        assert re.search(r"Done: step=2760\b", stdout)


@pytest.mark.slow
def test_lost_worker_stops_the_survivor_and_the_rerun_resumes(tmp_path):
    """A dead peer must end its survivors, not hang them; only killing a
    real worker process shows that."""
    survivor, victim = _start_past_first_checkpoint(tmp_path)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    killed = time.time()
    _, stderr = survivor.communicate(timeout=60)
    assert time.time() - killed < 45
    assert survivor.returncode == 2
    assert "Traceback" not in stderr
    message = [
        line for line in stderr.splitlines() if line.startswith("error:")
    ]
    assert len(message) == 1
    assert "lost contact with /job:worker" in message[0]
    assert "task:1" in message[0]
    _assert_rerun_resumes(tmp_path, latest_checkpoint_step(tmp_path))


@pytest.mark.slow
def test_sigterm_to_one_worker_stops_both_at_one_saved_step(tmp_path):
    """A preempted machine signals one worker only; every save runs
    collectives on all of them, so they must stop, and save, together.
    Before they agreed, both died with a raw collective error."""
    chief, other = _start_past_first_checkpoint(tmp_path)
    other.send_signal(signal.SIGTERM)
    stderrs = {}
    for name, worker in (("chief", chief), ("other", other)):
        _, stderrs[name] = worker.communicate(timeout=120)
        assert worker.returncode == 128 + signal.SIGTERM, stderrs[name][-3000:]
        assert "Traceback" not in stderrs[name]
    stopped = re.search(
        r"stopped by SIGTERM on another worker at step (\d+); checkpoint "
        r"saved to \S+ckpt-\1\. Rerun the same command to resume\.",
        stderrs["chief"],
    )
    assert stopped, stderrs["chief"][-3000:]
    step = int(stopped.group(1))
    assert f"stopped by SIGTERM at step {step};" in stderrs["other"]
    assert latest_checkpoint_step(tmp_path) == step
    _assert_rerun_resumes(tmp_path, step)


@pytest.mark.slow
def test_two_workers_equal_one_device_on_a_short_run(tmp_path):
    outputs = _finish(_start_workers(tmp_path / "cluster", *SHORT))
    assert all("Done: step=138" in stdout for stdout in outputs)
    single = run(tmp_path / "single", *SHORT)
    assert single.returncode == 0, single.stderr[-3000:]
    _assert_close(
        tmp_path / "cluster" / "model.keras",
        tmp_path / "single" / "model.keras",
        atol=1e-5,
    )
