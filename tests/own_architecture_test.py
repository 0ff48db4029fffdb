"""An architecture of one's own, named by import path in `config.model.name`:
resolved, its fields checked, its saving proven before the first step, and
trained with the bundled ones' guarantees. In-process, from modules written
to a temporary directory."""

import importlib
import os
import signal
import sys
import types

import keras
import numpy as np
import pytest
from run_helpers import STEPS_PER_EPOCH, tiny_config

import template_trainer
from template_trainer import config_checks, setup, summaries

INFO = types.SimpleNamespace(
    input_shape=(8, 8, 1), num_classes=10, normalization=None
)

# A subclass of `CustomModel` with a train_step of its own (dropout, whose
# RNG state the checkpoint must carry, and a loss of its own), registered
# for saving.
MY_MODELS = """
import keras
import tensorflow as tf

import models


@keras.saving.register_keras_serializable(package="my_models")
class MyModel(models.CustomModel):
    def __init__(self, input_shape, num_classes, units=16, **kwargs):
        super().__init__(**kwargs)
        self.flatten = keras.layers.Flatten()
        self.hidden = keras.layers.Dense(units, activation="relu")
        self.dropout = keras.layers.Dropout(0.3)
        self.out = keras.layers.Dense(num_classes)
        self.input_shape_, self.num_classes, self.units = (
            tuple(input_shape), num_classes, units
        )
        self(keras.ops.zeros((1, *input_shape)))  # builds the weights

    def get_config(self):
        return {
            **super().get_config(),
            "input_shape": self.input_shape_,
            "num_classes": self.num_classes,
            "units": self.units,
        }

    def call(self, x, training=False):
        x = self.dropout(self.hidden(self.flatten(x)), training=training)
        return self.out(x)

    def train_step(self, data):
        x, y = data
        with tf.GradientTape() as tape:
            y_pred = self(x, training=True)
            loss = self.compute_loss(x=x, y=y, y_pred=y_pred)
        variables = self.trainable_variables
        self.optimizer.apply(tape.gradient(loss, variables), variables)
        self.loss_tracker.update_state(loss)
        return self.compute_metrics(x, y, y_pred)


def factory(input_shape, num_classes, units):
    return MyModel(input_shape, num_classes, units=units)


class Unregistered(keras.layers.Layer):
    def call(self, x):
        return x * 2.0


def unsavable(input_shape, num_classes):
    inputs = keras.Input(input_shape)
    x = Unregistered()(keras.layers.Flatten()(inputs))
    return models.CustomModel(inputs, keras.layers.Dense(num_classes)(x))
"""


@pytest.fixture
def my_models(tmp_path, monkeypatch):
    """`my_models`, importable from `tmp_path` as from a config's folder."""
    (tmp_path / "my_models.py").write_text(MY_MODELS)
    (tmp_path / "broken_models.py").write_text("import no_such_package\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in ("my_models", "broken_models"):
        sys.modules.pop(name, None)


def _config(name, **fields):
    config = tiny_config(num_epochs=1)
    config.model = {"name": name, **fields}
    return config


@pytest.mark.parametrize(
    "name, fields, expected",
    [
        (
            "no_such_module:Model",
            {},
            "config.model.name='no_such_module:Model' is invalid: there is "
            "no module 'no_such_module'",
        ),
        (
            "my_models:NoSuch",
            {},
            "module my_models has no attribute 'NoSuch' (it defines MyModel, "
            "Unregistered, factory, unsavable)",
        ),
        (
            "broken_models:Model",
            {},
            "importing broken_models failed (ModuleNotFoundError: No module "
            "named 'no_such_package'; raised at ",
        ),
        (
            "my_models:MyModel",
            {"units": 4, "activation": "relu"},
            "config.model.activation is not a parameter of "
            "'my_models:MyModel' (it takes units)",
        ),
        (
            "my_models:factory",
            {"units": 4, "dropout": 0.1},
            "config.model.dropout is not a parameter of 'my_models:factory' "
            "(it takes units)",
        ),
    ],
)
def test_an_architecture_that_cannot_be_built_is_one_line(
    my_models, name, fields, expected
):
    with pytest.raises(config_checks.ConfigError) as error:
        setup._create_model(_config(name, **fields).model, INFO)
    assert expected in str(error.value)
    assert "\n" not in str(error.value)
    assert error.value.exit_code == 2


def test_bundled_architectures_take_their_configs_fields():
    """`configs/default.py`'s `model.activation` is the MLP's parameter;
    a field it does not take is refused, naming those it does."""
    config = tiny_config()
    assert setup._create_model(config.model, INFO).name == "mlp_classifier"
    config.model.widht = 3
    with pytest.raises(config_checks.ConfigError, match="takes hidden_units"):
        setup._create_model(config.model, INFO)


def test_a_model_that_would_not_load_is_refused_before_training(
    my_models, tmp_path
):
    workdir = tmp_path / "runs" / "w"
    with pytest.raises(setup.ModelNotSavableError) as error:
        template_trainer.train_and_evaluate(
            _config("my_models:unsavable"), str(workdir)
        )
    assert str(error.value).startswith(
        "my_models.Unregistered (layer 'unregistered') is not registered"
    )
    assert "@keras.saving.register_keras_serializable(package='my_models')" in (
        str(error.value)
    )
    assert not (tmp_path / "runs").exists()  # refused: nothing left behind


def _weights(workdir):
    model = keras.models.load_model(os.path.join(workdir, "model.keras"))
    return model.get_weights()


@pytest.mark.slow
def test_own_train_step_resumes_exactly_and_loads_with_its_module(
    my_models, tmp_path, monkeypatch
):
    """Stopped by SIGINT after step 25 and resumed, a run of the user's
    `CustomModel` subclass (own train_step, dropout) ends with the weights
    of a run never stopped; its model.keras loads with only the user's
    module imported."""
    config = _config("my_models:factory", units=16)
    config.num_epochs = 2
    config.steps_per_loop = 5
    reference = template_trainer.train_and_evaluate(
        config, str(tmp_path / "reference")
    )
    write = summaries.Writer.write

    def interrupt_after_step_25(self, step, scalars):
        write(self, step, scalars)
        if step > 25 and not interrupt_after_step_25.sent:
            interrupt_after_step_25.sent = True
            os.kill(os.getpid(), signal.SIGINT)

    interrupt_after_step_25.sent = False
    monkeypatch.setattr(summaries.Writer, "write", interrupt_after_step_25)
    stopped = tmp_path / "stopped"
    with pytest.raises(template_trainer.Preempted) as preempted:
        template_trainer.train_and_evaluate(config, str(stopped))
    assert preempted.value.step == 30
    monkeypatch.undo()
    monkeypatch.syspath_prepend(str(my_models))
    resumed = template_trainer.train_and_evaluate(config, str(stopped))
    assert resumed["step"] == reference["step"] == 2 * STEPS_PER_EPOCH
    for ours, theirs in zip(
        _weights(stopped), _weights(tmp_path / "reference"), strict=True
    ):
        np.testing.assert_array_equal(ours, theirs)

    # As in a fresh process: the class known only once its module loads.
    del sys.modules["my_models"]
    keras.saving.get_custom_objects().pop("my_models>MyModel")
    with pytest.raises(TypeError, match="MyModel"):
        keras.models.load_model(stopped / "model.keras")
    importlib.import_module("my_models")
    model = keras.models.load_model(stopped / "model.keras")
    assert type(model).__module__ == "my_models"
    x = np.random.default_rng(0).uniform(size=(2, 8, 8, 1)).astype("float32")
    assert model.predict(x, verbose=0).shape == (2, 10)
