"""End-to-end tests of `train.py` and `trainer.train_and_evaluate`."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
from run_helpers import run

import trainer
from configs import default

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tiny_config():
    config = default.get_config()
    # Op determinism is process-wide and permanent; in-process tests leave
    # it off so they don't change later tests (e.g. Keras then refuses XLA).
    config.deterministic = False
    config.model.hidden_units = (32,)
    config.model.dropout = 0.0  # two epochs of a tiny model: learn fast
    config.num_epochs = 2
    config.eval_every_epochs = 1
    config.checkpoint_every_steps = 30
    config.schedule = "constant"
    return config


def test_train_and_evaluate_returns_metrics(tmp_path):
    metrics = trainer.train_and_evaluate(_tiny_config(), str(tmp_path))
    assert metrics["step"] == 2 * 46
    # Two epochs of a small MLP already beat chance (10%) by far.
    assert metrics["eval_accuracy"] > 0.6
    assert metrics["eval_loss"] < 2.0
    assert 0.0 < metrics["loss"] < 2.3
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    # Training scalars after every loop (cut at checkpoints, every 30 steps),
    # evaluation at the end of every epoch (46 steps).
    assert [r["step"] for r in records] == [30, 46, 60, 90, 92]
    assert [r["step"] for r in records if "eval_accuracy" in r] == [46, 92]
    assert all("learning_rate" in r and "steps/s" in r for r in records)
    assert os.listdir(tmp_path / "tensorboard")
    assert (tmp_path / "checkpoints" / "ckpt-92.index").exists()
    for name in ("model.keras", "best_model.keras", "curves.png"):
        assert (tmp_path / name).exists(), name
    for name in ("saved_model", "best_saved_model"):
        assert (tmp_path / name / "saved_model.pb").exists(), name


def test_saved_model_keras_predicts_the_same_in_fresh_process(tmp_path):
    trainer.train_and_evaluate(_tiny_config(), str(tmp_path))
    model = keras.models.load_model(tmp_path / "model.keras")
    x = np.random.default_rng(0).uniform(size=(5, 8, 8, 1)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", model.predict(x, verbose=0))
    script = (
        "import os, numpy as np; os.environ['KERAS_BACKEND']='tensorflow'\n"
        "import keras, models\n"
        f"d = {str(tmp_path)!r}\n"
        "m = keras.models.load_model(os.path.join(d, 'model.keras'))\n"
        "y = m.predict(np.load(os.path.join(d, 'x.npy')), verbose=0)\n"
        "np.testing.assert_array_equal(y, np.load(os.path.join(d, 'y.npy')))\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True)


def _train_cmd(workdir, *overrides):
    return [
        sys.executable,
        os.path.join(REPO, "train.py"),
        "--config",
        os.path.join(REPO, "configs", "default.py"),
        "--workdir",
        str(workdir),
        *overrides,
    ]


def test_killed_run_resumes_from_its_checkpoint(tmp_path):
    """SIGKILL after the first checkpoint; the rerun continues from it."""
    overrides = [
        "--config.num_epochs=20",
        "--config.checkpoint_every_steps=46",
        "--config.steps_per_loop=5",
        "--config.model.hidden_units=(512, 512)",
    ]
    process = subprocess.Popen(
        _train_cmd(tmp_path, *overrides),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    index = tmp_path / "checkpoints" / "checkpoint"
    deadline = time.time() + 120
    while not index.exists() and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert index.exists(), "no checkpoint was written before the deadline"
    match = re.search(
        r'^model_checkpoint_path: "ckpt-(\d+)"', index.read_text(), re.M
    )
    killed_at = int(match.group(1))
    assert 0 < killed_at < 920

    rerun = subprocess.run(
        _train_cmd(tmp_path, *overrides), capture_output=True, text=True
    )
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"at step {killed_at}." in rerun.stdout
    assert re.search(r"Done: step=920\b", rerun.stdout)
    steps = [
        json.loads(line)["step"]
        for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
    ]
    # The rerun logged only the epochs after the checkpoint, through the end.
    assert steps[-1] == 920
    assert steps.count(920) == 1


def test_fast_dev_run_trains_a_few_steps_and_writes_nothing(tmp_path):
    config = _tiny_config()
    config.fast_dev_run = 4
    metrics = trainer.train_and_evaluate(config, str(tmp_path / "run"))
    assert metrics["step"] == 4
    assert {"loss", "accuracy", "eval_loss", "eval_accuracy"} <= set(metrics)
    assert not (tmp_path / "run").exists()


def test_overfit_batches_drives_the_loss_to_zero(tmp_path):
    config = _tiny_config()
    config.model.hidden_units = (64,)
    config.overfit_batches = 2
    config.num_epochs = 100  # 2 steps per epoch
    config.eval_every_epochs = 100
    metrics = trainer.train_and_evaluate(config, str(tmp_path))
    assert metrics["step"] == 200
    assert metrics["eval_accuracy"] == 1.0
    assert metrics["eval_loss"] < 0.05


def test_exported_saved_models_serve_the_same_predictions(tmp_path):
    import tensorflow as tf

    train_config = _tiny_config()
    trainer.train_and_evaluate(train_config, str(tmp_path))
    x = np.random.default_rng(1).uniform(size=(3, 8, 8, 1)).astype("float32")
    for prefix in ("", "best_"):
        model = keras.models.load_model(tmp_path / f"{prefix}model.keras")
        served = tf.saved_model.load(str(tmp_path / f"{prefix}saved_model"))
        np.testing.assert_allclose(
            served.serve(x).numpy(), model.predict(x, verbose=0), atol=1e-6
        )


def test_diverging_run_stops_with_one_line(tmp_path):
    result = run(
        tmp_path,
        "--config.optimizer=sgd",
        "--config.schedule=constant",
        "--config.learning_rate=1e12",
        "--config.max_consecutive_non_finite=3",
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    errors = [s for s in result.stderr.splitlines() if s.startswith("error:")]
    assert errors == [
        "error: 3 consecutive training steps had a NaN or Inf loss or "
        "gradients (max_consecutive_non_finite=3); none of them changed the "
        "weights. Lower the learning rate, check the data for NaN/Inf, or "
        "clip gradients (global_clipnorm)."
    ]


@pytest.mark.parametrize(
    "overrides",
    [
        {"mixed_precision": "mixed_bfloat16"},
        {"global_clipnorm": 0.5, "layer_grad_norms": True},
        {"gradient_accumulation_steps": 2, "max_consecutive_non_finite": 5},
        {"jit_compile": True},
    ],
    ids=["bf16", "clip+layer_norms", "accumulation+guard", "xla"],
)
def test_step_options_reach_the_model(tmp_path, overrides):
    config = _tiny_config()
    config.num_epochs = 1
    config.update(overrides)
    metrics = trainer.train_and_evaluate(config, str(tmp_path))
    assert metrics["step"] == 46
    assert metrics["eval_accuracy"] > 0.3  # it learnt something
    record = json.loads(
        (tmp_path / "metrics.jsonl").read_text().splitlines()[-1]
    )
    assert 0 < record["grad_norm"] < 100
    if overrides.get("global_clipnorm"):
        # The logged norm is before clipping; per-layer norms are logged.
        assert any(k.startswith("grad_norm/") for k in record)
    if "max_consecutive_non_finite" in overrides:
        assert record["non_finite_steps"] == 0
    model = keras.models.load_model(tmp_path / "model.keras")
    assert model.dtype_policy.name == overrides.get(
        "mixed_precision", "float32"
    )
