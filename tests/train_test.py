"""End-to-end tests of `template_trainer.train_and_evaluate`, in-process."""

import json
import os
import signal
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from run_helpers import STEPS_PER_EPOCH, same_threads_env, tiny_config

import template_trainer
from template_trainer import loop, summaries

EPOCHS = 3
TOTAL = EPOCHS * STEPS_PER_EPOCH  # 123


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """One run shared by the tests that only read what it left."""
    workdir = tmp_path_factory.mktemp("tiny")
    config = tiny_config(
        num_epochs=EPOCHS,
        checkpoint_every_steps=30,
        max_checkpoints_to_keep=2,
        steps_per_loop=50,
    )
    metrics = template_trainer.train_and_evaluate(config, str(workdir))
    records = summaries.read_records(workdir / "metrics.jsonl")
    return metrics, records, workdir


def test_returns_the_final_metrics_of_every_split(tiny_run):
    metrics, _, _ = tiny_run
    assert metrics["step"] == TOTAL
    # Three epochs of a small MLP already beat chance (10%) by far.
    assert metrics["val_accuracy"] > 0.6
    assert metrics["test_accuracy"] > 0.6
    assert 0.0 < metrics["loss"] < 2.3
    for name in ("test_loss", "best_test_loss", "best_test_accuracy"):
        assert np.isfinite(metrics[name]), name


def test_logs_every_loop_call_and_validates_every_epoch(tiny_run):
    _, records, workdir = tiny_run
    # A loop call ends at steps_per_loop (50), at each checkpoint (every
    # 30 steps) and at each epoch's end (41 steps).
    assert [r["step"] for r in records] == [30, 41, 60, 82, 90, 120, 123]
    assert [r["step"] for r in records if "val_accuracy" in r] == [41, 82, 123]
    assert all("learning_rate" in r and "steps/s" in r for r in records)
    assert not any(k.startswith("eval_") for r in records for k in r)
    assert os.listdir(workdir / "tensorboard")


def test_test_split_is_evaluated_once_at_the_end(tiny_run):
    metrics, records, _ = tiny_run
    tested = [r["step"] for r in records if "test_accuracy" in r]
    assert tested == [TOTAL]
    last = records[-1]
    for name in ("test_accuracy", "best_test_accuracy"):
        assert last[name] == pytest.approx(metrics[name])


def test_keeps_the_newest_checkpoints_at_the_step_cadence(tiny_run):
    _, _, workdir = tiny_run
    index = tf.train.get_checkpoint_state(str(workdir / "checkpoints"))
    kept = [os.path.basename(p) for p in index.all_model_checkpoint_paths]
    # Saved at 30, 60, 90, 120 and the end; max_checkpoints_to_keep=2.
    assert kept == ["ckpt-120", f"ckpt-{TOTAL}"]
    files = os.listdir(workdir / "checkpoints")
    assert not any(f.startswith(("ckpt-30.", "ckpt-90.")) for f in files)


def test_best_model_is_chosen_on_validation_accuracy(tiny_run):
    metrics, records, workdir = tiny_run
    validated = [
        (r["val_accuracy"], -r["step"]) for r in records if "val_accuracy" in r
    ]
    best_accuracy, minus_step = max(validated)
    assert metrics["best_step"] == -minus_step
    assert metrics["best_val_accuracy"] == pytest.approx(best_accuracy)
    best = keras.models.load_model(workdir / "best_model.keras")
    checkpoint = tf.train.latest_checkpoint(str(workdir / "best_checkpoint"))
    assert checkpoint.endswith(f"ckpt-{metrics['best_step']}")
    final = keras.models.load_model(workdir / "model.keras")
    if metrics["best_step"] != TOTAL:
        assert not all(
            np.array_equal(a, b)
            for a, b in zip(best.get_weights(), final.get_weights())
        )


def _files(directory):
    """{relative path: bytes} of every file under `directory`."""
    return {
        os.path.relpath(os.path.join(root, name), directory): open(
            os.path.join(root, name), "rb"
        ).read()
        for root, _, names in os.walk(directory)
        for name in names
    }


@pytest.mark.slow
def test_a_best_model_that_is_the_final_one_is_copied(tmp_path, monkeypatch):
    """One epoch, one validation: the best model is the final model. Its
    test figures are the final ones and its exports copies of theirs,
    without a second pass over the test split or a second export."""
    passes = []

    def counted(run, evaluate, prefix):
        passes.append(prefix)
        return original(run, evaluate, prefix)

    original = loop._evaluate
    monkeypatch.setattr(loop, "_evaluate", counted)
    metrics = template_trainer.train_and_evaluate(
        tiny_config(num_epochs=1), str(tmp_path)
    )
    assert metrics["best_step"] == metrics["step"] == STEPS_PER_EPOCH
    assert passes == ["val_", "test_"]
    for name in ("loss", "accuracy"):
        assert metrics[f"best_test_{name}"] == metrics[f"test_{name}"]
    final, best = tmp_path / "model.keras", tmp_path / "best_model.keras"
    assert best.read_bytes() == final.read_bytes()
    exported = _files(tmp_path / "saved_model")
    assert exported and _files(tmp_path / "best_saved_model") == exported
    assert not [n for n in os.listdir(tmp_path) if "partial" in n]
    record = summaries.read_records(tmp_path / "metrics.jsonl")[-1]
    assert record["best_test_accuracy"] == metrics["test_accuracy"]


def test_exported_models_serve_the_same_predictions(tiny_run):
    _, _, workdir = tiny_run
    x = np.random.default_rng(1).uniform(size=(3, 8, 8, 1)).astype("float32")
    for prefix in ("", "best_"):
        model = keras.models.load_model(workdir / f"{prefix}model.keras")
        served = tf.saved_model.load(str(workdir / f"{prefix}saved_model"))
        np.testing.assert_allclose(
            served.serve(x).numpy(), model.predict(x, verbose=0), atol=1e-6
        )
    assert (workdir / "curves.png").exists()
    assert not [n for n in os.listdir(workdir) if "partial" in n]


@pytest.mark.slow
def test_saved_model_keras_predicts_the_same_in_fresh_process(tiny_run):
    """The registration of the project's classes must work in a process
    that never trained: only a fresh process shows it."""
    _, _, workdir = tiny_run
    model = keras.models.load_model(workdir / "model.keras")
    x = np.random.default_rng(0).uniform(size=(5, 8, 8, 1)).astype("float32")
    np.save(workdir / "x.npy", x)
    np.save(workdir / "y.npy", model.predict(x, verbose=0))
    script = (
        "import os, numpy as np; os.environ['KERAS_BACKEND']='tensorflow'\n"
        "import keras, models\n"
        f"d = {str(workdir)!r}\n"
        "m = keras.models.load_model(os.path.join(d, 'model.keras'))\n"
        "y = m.predict(np.load(os.path.join(d, 'x.npy')), verbose=0)\n"
        "np.testing.assert_array_equal(y, np.load(os.path.join(d, 'y.npy')))\n"
    )
    subprocess.run(
        [sys.executable, "-c", script],
        check=True,
        timeout=120,
        env=same_threads_env(),
    )


@pytest.mark.slow
def test_fast_dev_run_trains_a_few_steps_and_writes_nothing(tmp_path):
    """Slow: a training run of its own."""
    config = tiny_config(fast_dev_run=4)
    metrics = template_trainer.train_and_evaluate(config, str(tmp_path / "run"))
    assert metrics["step"] == 4
    assert {"loss", "val_loss", "test_loss", "test_accuracy"} <= set(metrics)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_overfit_batches_drives_the_validation_loss_to_zero(tmp_path):
    config = tiny_config(overfit_batches=2, num_epochs=100)
    config.model.hidden_units = (64,)
    config.val_every_epochs = 100
    metrics = template_trainer.train_and_evaluate(config, str(tmp_path))
    assert metrics["step"] == 200  # 2 steps per epoch
    assert metrics["val_accuracy"] == 1.0
    assert metrics["val_loss"] < 0.05


@pytest.mark.slow
def test_sigint_in_the_loop_saves_and_stops(tmp_path, monkeypatch):
    """Ctrl-C (SIGINT) during training: the loop saves the current step and
    raises `Preempted`, whose exit code is the shell's, 130."""
    write = summaries.Writer.write

    def interrupt_after_step_50(self, step, scalars):
        write(self, step, scalars)
        if step > 50 and not interrupt_after_step_50.sent:
            interrupt_after_step_50.sent = True
            os.kill(os.getpid(), signal.SIGINT)

    interrupt_after_step_50.sent = False
    monkeypatch.setattr(summaries.Writer, "write", interrupt_after_step_50)
    # What the process had (Python's default, or SIG_IGN in a test worker
    # whose parent ignores Ctrl-C): the trainer must put it back.
    before = signal.getsignal(signal.SIGINT)
    # Loop calls end at 20, 40, 41, 61, ...: the signal comes after 61.
    config = tiny_config(num_epochs=EPOCHS, steps_per_loop=20)
    with pytest.raises(template_trainer.Preempted) as stopped:
        template_trainer.train_and_evaluate(config, str(tmp_path))
    assert stopped.value.signum == signal.SIGINT
    assert stopped.value.exit_code == 130
    assert stopped.value.step == 61
    assert "stopped by SIGINT at step 61;" in str(stopped.value)
    newest = tf.train.latest_checkpoint(str(tmp_path / "checkpoints"))
    assert newest.endswith("ckpt-61")  # saved at the signal
    # The handler is the process's own again once the trainer is done.
    assert signal.getsignal(signal.SIGINT) is before
    monkeypatch.undo()
    resumed = template_trainer.train_and_evaluate(config, str(tmp_path))
    assert resumed["step"] == TOTAL


@pytest.mark.slow
def test_diverging_run_stops_with_the_guards_message(tmp_path):
    config = tiny_config(
        optimizer="sgd",
        learning_rate=1e12,
        max_consecutive_non_finite=3,
    )
    with pytest.raises(template_trainer.TrainingDivergedError) as diverged:
        template_trainer.train_and_evaluate(config, str(tmp_path))
    assert str(diverged.value) == (
        "3 consecutive training steps had a NaN or Inf loss or "
        "gradients (max_consecutive_non_finite=3); none of them changed the "
        "weights. Lower the learning rate, check the data for NaN/Inf, or "
        "clip gradients (global_clipnorm)."
    )
    assert diverged.value.exit_code == 1


def test_metrics_jsonl_records_are_json(tiny_run):
    _, _, workdir = tiny_run
    for line in (workdir / "metrics.jsonl").read_text().splitlines():
        assert isinstance(json.loads(line), dict)


@pytest.fixture(scope="session")
def one_step_per_call(tmp_path_factory):
    """One epoch logged after every step: each record is one step's values."""
    workdir = tmp_path_factory.mktemp("one_step")
    config = tiny_config(num_epochs=1, steps_per_loop=1)
    template_trainer.train_and_evaluate(config, str(workdir))
    return summaries.read_records(workdir / "metrics.jsonl")


@pytest.mark.slow
def test_logged_training_values_are_means_over_their_interval(
    tmp_path, one_step_per_call
):
    """With 10 steps per loop call, the record at step 20 is the mean of
    steps 11-20 alone, not of the epoch so far (same computation: the
    logging interval does not change it). Slow: two training runs."""
    config = tiny_config(num_epochs=1, steps_per_loop=10)
    template_trainer.train_and_evaluate(config, str(tmp_path))
    records = summaries.read_records(tmp_path / "metrics.jsonl")
    per_step = {r["step"]: r for r in one_step_per_call}
    for record in records[:4]:  # steps 10, 20, 30, 40
        steps = range(record["step"] - 9, record["step"] + 1)
        for name in ("loss", "accuracy"):
            expected = np.mean([per_step[s][name] for s in steps])
            assert record[name] == pytest.approx(expected, rel=1e-4), name


def test_curves_draw_the_tasks_metric_and_the_learning_rate():
    records = [
        {"step": 10, "loss": 2.0, "bpc": 2.9, "accuracy": 0.4,
         "learning_rate": 1e-3},
        {"step": 20, "loss": 1.9, "bpc": 2.7, "val_bpc": 2.8, "val_loss": 1.9,
         "learning_rate": 1e-3},
    ]  # fmt: skip
    assert summaries.panels(records) == [
        ("loss", ["loss", "val_loss"]),
        ("accuracy", ["accuracy"]),
        ("bpc", ["bpc", "val_bpc"]),
        ("learning rate", ["learning_rate"]),
    ]


def test_the_config_is_in_tensorboards_hparams(tiny_run):
    from tensorboard.plugins.hparams import plugin_data_pb2

    _, _, workdir = tiny_run
    hparams = {}
    for path in (workdir / "tensorboard").iterdir():
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                plugin = value.metadata.plugin_data
                if plugin.plugin_name != "hparams":
                    continue
                data = plugin_data_pb2.HParamsPluginData.FromString(
                    plugin.content
                )
                hparams.update(data.session_start_info.hparams)
    assert hparams["learning_rate"].number_value == pytest.approx(3e-3)
    assert hparams["model.name"].string_value == "mlp"
    assert hparams["model.hidden_units"].string_value == "[32]"
    assert hparams["deterministic"].bool_value is False


@pytest.mark.slow
def test_early_stopping_counts_validations_across_a_resume(tmp_path, capsys):
    """A learning rate too small to change the predictions: the first
    validation is the best, none after improves. Patience 3: a run of 2
    epochs has counted 1; resumed for 10 it stops at the 4th validation,
    not the 5th (its count came back from the checkpoint)."""
    config = tiny_config(
        num_epochs=2, learning_rate=1e-12, early_stopping_patience=3
    )
    template_trainer.train_and_evaluate(config, str(tmp_path))
    capsys.readouterr()
    config.num_epochs = 10
    metrics = template_trainer.train_and_evaluate(config, str(tmp_path))
    assert metrics["step"] == 4 * STEPS_PER_EPOCH
    assert metrics["best_step"] == STEPS_PER_EPOCH
    out = capsys.readouterr().out
    assert f"Early stopping at step {4 * STEPS_PER_EPOCH}: val_accuracy" in out
    assert "in 3 validations (early_stopping_patience=3)" in out
