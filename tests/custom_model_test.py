"""Tests for `models.CustomModel` and `models.MLPClassifier`."""

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import models
import mylayers
from template_trainer import optimizers


def _data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype("float32")
    y = (x[:, 0] + x[:, 1] > 0).astype("int64")
    return x, y


def _functional(model_class=models.CustomModel):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    hidden = mylayers.Linear(8, activation="tanh")(inputs)
    return model_class(inputs, mylayers.Linear(2)(hidden))


def _compile(model):
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )
    return model


class Subclassed(models.CustomModel):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.hidden = mylayers.Linear(8, activation="tanh")
        self.out = mylayers.Linear(2)

    def call(self, x):
        return self.out(self.hidden(x))


@pytest.mark.parametrize("build", [_functional, lambda: Subclassed()])
def test_fit_evaluate_predict(build):
    x, y = _data()
    model = _compile(build())
    assert isinstance(model, models.CustomModel)
    history = model.fit(x, y, batch_size=16, epochs=5, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < losses[0]
    assert set(history.history) == {"loss", "accuracy"}
    results = model.evaluate(x, y, batch_size=16, verbose=0, return_dict=True)
    logits = model.predict(x, verbose=0)
    assert logits.shape == (64, 2)
    expected = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(
        y, logits
    )
    np.testing.assert_allclose(results["loss"], float(expected), rtol=1e-5)
    accuracy = np.mean(np.argmax(logits, axis=1) == y)
    np.testing.assert_allclose(results["accuracy"], accuracy, rtol=1e-6)


def test_logged_loss_equals_evaluate_when_weights_do_not_change():
    x, y = _data()
    model = _functional()
    model.compile(
        optimizer=keras.optimizers.SGD(0.0),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    with pytest.warns(UserWarning, match="learning rate is 0"):
        history = model.fit(x, y, batch_size=16, verbose=0).history
    fit_loss = history["loss"][0]
    eval_loss = model.evaluate(x, y, batch_size=16, verbose=0)
    assert fit_loss > 0.0
    np.testing.assert_allclose(fit_loss, eval_loss, rtol=1e-6)


def test_sample_weight_is_applied():
    x, y = _data()
    model = _compile(_functional())
    zero = model.evaluate(x, y, sample_weight=np.zeros(64), verbose=0)
    assert zero[0] == 0.0
    half = np.r_[np.ones(32), np.zeros(32)]
    weighted = model.evaluate(x, y, sample_weight=half, verbose=0)[0]
    first_half = model.evaluate(x[:32], y[:32], verbose=0)[0]
    np.testing.assert_allclose(weighted, first_half / 2, rtol=1e-5)


def test_train_step_matches_keras_builtin_step():
    x, y = _data()
    ours = _compile(_functional())
    theirs = _compile(_functional(keras.Model))
    theirs.set_weights(ours.get_weights())
    ours.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    theirs.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    for a, b in zip(ours.get_weights(), theirs.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_mlp_classifier_round_trip(tmp_path):
    model = models.MLPClassifier((8, 8, 1), 10, hidden_units=(16,), dropout=0.1)
    assert model.output_shape == (None, 10)
    assert [w.shape for w in model.trainable_weights] == [
        (16, 64),
        (16,),
        (10, 16),
        (10,),
    ]
    x = tf.random.stateless_uniform((4, 8, 8, 1), seed=(1, 2))
    model.save(tmp_path / "mlp.keras")
    reloaded = keras.models.load_model(tmp_path / "mlp.keras")
    assert isinstance(reloaded, models.MLPClassifier)
    assert reloaded.get_config() == model.get_config()
    np.testing.assert_array_equal(
        model.predict(x, verbose=0), reloaded.predict(x, verbose=0)
    )


@pytest.mark.parametrize("dropout", [-0.1, 1.0])
def test_mlp_classifier_invalid_dropout(dropout):
    with pytest.raises(ValueError, match="dropout"):
        models.MLPClassifier((8, 8, 1), 10, dropout=dropout)


def _schedule_model(schedule, iterations):
    """A tiny compiled model whose optimizer is at `iterations`."""
    model = _functional()
    model.compile(
        optimizer=keras.optimizers.SGD(schedule),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.optimizer.build(model.trainable_variables)
    model.optimizer.iterations.assign(iterations)
    return model


def _fit_warnings(model, x, y):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    return [str(w.message) for w in caught if "learning rate" in str(w.message)]


def _weights(model):
    return [v.numpy().copy() for v in model.trainable_variables]


@pytest.mark.parametrize(
    "iterations, warns",
    [(10, True), (3, False), (0, False)],
    ids=["exhausted", "decaying", "warming_up"],
)
def test_fit_warns_once_at_learning_rate_0(iterations, warns):
    """The trainer's warmup_cosine is 0 at its first step and from its
    last on: only the end warns, and it says how to go on."""
    schedule = optimizers.create_schedule(
        "warmup_cosine", 0.1, 8, 2, boundaries=(), decay_factor=0.1
    )
    model = _schedule_model(schedule, iterations)
    x, y = _data()
    before = _weights(model)
    messages = _fit_warnings(model, x, y)
    if not warns:
        assert messages == []
        return
    (message,) = messages
    assert message.startswith("fit: the learning rate is 0 at optimizer ")
    assert "will not change the weights" in message
    assert "model.compile(optimizer=" in message and "train.py" in message
    assert "\n" not in message
    # It tells the truth: the fit changed nothing.
    for a, b in zip(before, _weights(model)):
        np.testing.assert_array_equal(a, b)


def test_a_loaded_finished_run_warns_and_trains_nothing(tmp_path):
    """`load_model` of a model saved at the end of its cosine schedule
    restores the iteration count, so `fit` would train nothing: it says
    so, and the weights show it was right."""
    x, y = _data()
    schedule = keras.optimizers.schedules.CosineDecay(0.1, decay_steps=4)
    model = _schedule_model(schedule, 0)
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)  # 4 steps.
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    assert int(loaded.optimizer.iterations) == 4
    before = _weights(loaded)
    assert len(_fit_warnings(loaded, x, y)) == 1
    for a, b in zip(before, _weights(loaded)):
        np.testing.assert_array_equal(a, b)
