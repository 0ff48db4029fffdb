"""The best model is the one with the best validation result, and the
test split is scored on it, on a run whose best is not its last: the
learning rate jumps a thousandfold after two epochs, and the third
epoch's model forgets what the first two learned."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from run_helpers import STEPS_PER_EPOCH, tiny_config

import template_trainer
from template_trainer import summaries

TOTAL = 3 * STEPS_PER_EPOCH


@pytest.fixture(scope="module")
def collapsed(tmp_path_factory):
    """`(metrics, validation results by step, workdir)`."""
    workdir = tmp_path_factory.mktemp("collapsed")
    keras.utils.set_random_seed(0)
    config = tiny_config(
        num_epochs=3,
        schedule="piecewise",
        boundaries=(2 * STEPS_PER_EPOCH,),
        decay_factor=1000.0,
    )
    metrics = template_trainer.train_and_evaluate(config, str(workdir))
    records = summaries.read_records(workdir / "metrics.jsonl")
    validated = {
        r["step"]: r["val_accuracy"] for r in records if "val_accuracy" in r
    }
    return metrics, validated, workdir


def test_the_best_is_not_the_last(collapsed):
    metrics, validated, _ = collapsed
    assert sorted(validated) == [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH, TOTAL]
    # The collapse is far larger than any rounding: tens of points.
    assert validated[TOTAL] < max(validated.values()) - 0.2


def test_the_best_validation_result_is_kept(collapsed):
    metrics, validated, workdir = collapsed
    best_step = max(validated, key=validated.get)
    assert metrics["best_step"] == best_step != TOTAL
    assert metrics["best_val_accuracy"] == pytest.approx(
        validated[best_step], abs=1e-6
    )
    checkpoint = tf.train.latest_checkpoint(str(workdir / "best_checkpoint"))
    assert checkpoint.endswith(f"ckpt-{best_step}")


def test_the_test_split_is_scored_on_the_best_model(collapsed):
    metrics, _, workdir = collapsed
    # The best model tests about as it validated; the final one, as badly
    # as it validated.
    assert metrics["best_test_accuracy"] > metrics["test_accuracy"] + 0.2
    assert metrics["best_test_accuracy"] == pytest.approx(
        metrics["best_val_accuracy"], abs=0.15
    )
    best = keras.models.load_model(workdir / "best_model.keras")
    final = keras.models.load_model(workdir / "model.keras")
    assert not all(
        np.array_equal(a, b)
        for a, b in zip(best.get_weights(), final.get_weights())
    )
