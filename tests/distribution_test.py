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
from run_helpers import latest_checkpoint_step, train_command

import models  # noqa: F401  (registers the classes load_model needs)
import template_trainer
from configs import default
from template_trainer import cluster, distribution


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
SHORT_SETTINGS = {
    "num_epochs": 1,
    "model.hidden_units": (64, 64),
    "model.dropout": 0.0,
}
SHORT = [f"--config.{name}={value}" for name, value in SHORT_SETTINGS.items()]


@pytest.fixture(scope="session")
def single_device(tmp_path_factory):
    """The reference: `configs/default.py` with `SHORT_SETTINGS` on one
    device, trained in this process. Op determinism is left off here (it
    is process-wide and permanent); the comparisons' tolerance, 1e-5, is
    far above what it changes on a CPU."""
    workdir = tmp_path_factory.mktemp("single")
    config = default.get_config()
    config.deterministic = False
    config.update_from_flattened_dict(SHORT_SETTINGS)
    template_trainer.train_and_evaluate(config, str(workdir))
    return workdir / "model.keras"


# Two replicas on two logical CPUs (`mirrored`, `cpu_devices`) are checked
# against one device in tests/mirrored_test.py, in one process for all its
# checks.


# 164 steps, long enough not to end before the interruption, after a
# checkpoint (two workers on two cores take ~0.1 s a step here).
LONG = ["--config.num_epochs=4", "--config.checkpoint_every_steps=20"]


def _start_past_a_checkpoint(workdir):
    """Two workers of a `LONG` run, once their first checkpoint is
    written."""
    workers = _start_workers(workdir, *LONG)
    # A guard against a hang, not a speed check: the workers normally save
    # within seconds.
    deadline = time.time() + 180
    while not latest_checkpoint_step(workdir):
        if time.time() > deadline:
            pytest.fail("the workers wrote no checkpoint: they hang")
        for worker in workers:
            assert worker.poll() is None, worker.stderr.read()[-3000:]
        time.sleep(0.05)
    return workers


def _error_lines(stderr):
    return [line for line in stderr.splitlines() if line.startswith("error:")]


@pytest.mark.slow
def test_a_dead_worker_ends_its_peer_in_one_line(tmp_path):
    """A dead peer must end its survivor, not hang it: two workers of a
    TF_CONFIG cluster, one killed (SIGKILL) after a checkpoint, and
    TensorFlow's peer health checks end the other (~10 s here; the
    timeout only keeps a hang from stalling the suite) with one line.
    Only real worker processes talking over loopback show it. (A signal
    to one worker stopping both at one saved step, and the rerun resuming
    there, are shown by the Slurm test below, whose SIGUSR1 takes the same
    path as SIGTERM.)"""
    survivor, victim = _start_past_a_checkpoint(tmp_path)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    _, stderr = survivor.communicate(timeout=120)
    assert survivor.returncode == 2
    assert "Traceback" not in stderr
    [message] = _error_lines(stderr)
    assert "lost contact with /job:worker" in message
    assert "task:1" in message
    # What was saved before stays, for the rerun to resume from.
    assert latest_checkpoint_step(tmp_path) >= 20


def _slurm_job_with_free_ports(num_tasks):
    """A fake SLURM_JOB_ID whose ports (`cluster.PORT_BASE` + id % 10_000
    + the task's place) are free on this machine now."""
    sockets = []
    for job in range(os.getpid() % 10_000, 10_000 + os.getpid() % 10_000):
        base = cluster.PORT_BASE + job % 10_000
        try:
            for port in range(base, base + num_tasks):
                sockets.append(socket.socket())
                sockets[-1].bind(("127.0.0.1", port))
            return str(1_000_000 + job)
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
            sockets.clear()
    pytest.fail("no free ports for a fake Slurm job")


def _start_slurm_tasks(workdir, bin_dir, job, *overrides):
    """Two tasks of one `srun` step on localhost, as Slurm's variables
    describe them: no TF_CONFIG."""
    tasks = []
    for rank in range(2):
        env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
        env.update(
            SLURM_JOB_ID=job,
            SLURM_PROCID=str(rank),
            SLURM_NODEID="0",
            SLURM_LOCALID=str(rank),
            SLURM_STEP_NUM_TASKS="2",
            SLURM_STEP_NODELIST="localhost",
            SLURM_STEP_TASKS_PER_NODE="2",
            PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        )
        tasks.append(
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
    return tasks


@pytest.mark.slow
def test_slurm_tasks_requeued_by_sigusr1_resume_equal_to_one_device(
    tmp_path, single_device
):
    """Two tasks of a faked Slurm step form one cluster from Slurm's
    variables alone and train as one device does (the multi-worker path,
    which `model.fit` cannot take in Keras 3; TF_CONFIG's cluster is
    formed by the interrupted-run test above). Slurm's time-limit warning
    (SIGUSR1) reaches one task: both stop at one saved step, the chief
    requeues the job once, and the requeued tasks (the same variables)
    resume and end as one device does. Only real processes talking over
    loopback show it."""
    calls = tmp_path / "scontrol-calls"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    (bin_dir / "scontrol").chmod(0o755)
    workdir = tmp_path / "run"
    job = _slurm_job_with_free_ports(2)
    # A checkpoint at step 10 says the tasks train; the signal then comes
    # at the next loop call's end, well before the 41st, last step.
    flags = [*SHORT, "--config.checkpoint_every_steps=10"]
    chief, other = _start_slurm_tasks(workdir, bin_dir, job, *flags)
    deadline = time.time() + 180  # against a hang, not a speed check
    while (latest_checkpoint_step(workdir) or 0) < 10:
        if time.time() > deadline:
            pytest.fail("the tasks wrote no checkpoint: they hang")
        for task in (chief, other):
            assert task.poll() is None, task.stderr.read()[-3000:]
        time.sleep(0.05)
    other.send_signal(signal.SIGUSR1)
    stderrs = {}
    for name, task in (("chief", chief), ("other", other)):
        _, stderrs[name] = task.communicate(timeout=120)
        assert task.returncode == 128 + signal.SIGUSR1, stderrs[name][-3000:]
        assert "Traceback" not in stderrs[name]
    stopped = re.search(
        r"stopped by SIGUSR1 on another worker at step (\d+); checkpoint "
        r"saved to \S+ckpt-\1\.",
        stderrs["chief"],
    )
    assert stopped, stderrs["chief"][-3000:]
    step = int(stopped.group(1))
    assert 10 <= step < 41
    assert f"stopped by SIGUSR1 at step {step};" in stderrs["other"]
    assert latest_checkpoint_step(workdir) == step
    assert calls.read_text().splitlines() == [f"requeue {job}"]
    assert (
        f"Requeued Slurm job {job} (scontrol requeue {job}): it resumes "
        f"from step {step} when it starts again."
    ) in stderrs["chief"]
    assert "Requeued" not in stderrs["other"]

    # The requeued job: the same command, the same variables.
    outputs = _finish(_start_slurm_tasks(workdir, bin_dir, job, *flags))
    assert all(f"at step {step}." in stdout for stdout in outputs)
    assert all("Done: step=41," in stdout for stdout in outputs)
    assert calls.read_text().splitlines() == [f"requeue {job}"]
    assert (workdir / "checkpoints" / "ckpt-41.index").exists()
    final = json.loads((workdir / "metrics.jsonl").read_text().splitlines()[-1])
    assert final["step"] == 41 and "best_test_accuracy" in final
    # Both workers end with the same weights, equal to one device's.
    _assert_close(
        workdir / "model.keras", workdir / "worker-1" / "model.keras", atol=0
    )
    _assert_close(workdir / "model.keras", single_device, atol=1e-5)
