"""Tests for `models.CNNClassifier` and `configs/cnn.py`."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import models
import mylayers
from configs import cnn


def test_basics(tmp_path):
    model = models.CNNClassifier((8, 8, 1), 10, filters=(4, 8), dropout=0.1)
    assert model.output_shape == (None, 10)
    # Every layer with weights comes from `mylayers`.
    assert [type(layer) for layer in model.layers if layer.weights] == [
        mylayers.Conv2D,
        mylayers.Conv2D,
        mylayers.Linear,
        mylayers.Linear,
    ]
    assert [tuple(w.shape) for w in model.trainable_weights] == [
        (3, 3, 1, 4),
        (4,),
        (3, 3, 4, 8),
        (8,),
        (128, 2 * 2 * 8),  # 8x8 halved twice; Linear stores (units, in)
        (128,),
        (10, 128),
        (10,),
    ]
    x = tf.random.stateless_uniform((4, 8, 8, 1), seed=(1, 2))
    model.save(tmp_path / "cnn.keras")
    reloaded = keras.models.load_model(tmp_path / "cnn.keras")
    assert isinstance(reloaded, models.CNNClassifier)
    assert reloaded.get_config() == model.get_config()
    np.testing.assert_array_equal(
        model.predict(x, verbose=0), reloaded.predict(x, verbose=0)
    )


def test_one_training_step_lowers_the_loss():
    model = models.CNNClassifier((8, 8, 1), 3, filters=(4,), hidden_units=())
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    x = tf.random.stateless_uniform((16, 8, 8, 1), seed=(3, 4))
    y = tf.constant([0, 1, 2, 0] * 4)
    before = model.evaluate(x, y, verbose=0)
    model.fit(x, y, batch_size=16, verbose=0)
    assert model.evaluate(x, y, verbose=0) < before


def test_config_builds_the_model_as_the_trainer_does():
    config = cnn.get_config()
    assert config.model.name == "cnn"
    kwargs = {k: v for k, v in config.model.items() if k != "name"}
    model = models.ARCHITECTURES["cnn"](
        input_shape=(8, 8, 1), num_classes=10, **kwargs
    )
    assert model.filters == tuple(config.model.filters)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"filters": (0,)}, "filters"),
        ({"filters": (8.0,)}, "filters"),
        ({"hidden_units": (-1,)}, "hidden_units"),
        ({"dropout": 1.0}, "dropout=1.0"),
        ({"filters": (4, 4, 4, 4)}, "input_shape"),
        ({"input_shape": (8, 8)}, "input_shape"),
    ],
)
def test_invalid_arguments(kwargs, match):
    kwargs = {"input_shape": (8, 8, 1), "num_classes": 10, **kwargs}
    with pytest.raises(ValueError, match=match):
        models.CNNClassifier(**kwargs)
