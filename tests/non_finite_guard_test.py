"""The non-finite guard checks the gradients as well as the loss: a step
whose loss is finite but whose gradient is not is skipped too."""

import keras
import numpy as np
import tensorflow as tf

import models


@keras.saving.register_keras_serializable(package="tests")
class SqrtAbs(keras.layers.Layer):
    """`sqrt(|x|)`: finite at 0, its gradient there is not."""

    def call(self, x):
        return tf.sqrt(tf.abs(x))


def _model():
    inputs = keras.Input((2,))
    hidden = keras.layers.Dense(2, kernel_initializer="ones")(inputs)
    outputs = keras.layers.Dense(1)(SqrtAbs()(hidden))
    model = models.CustomModel(inputs, outputs)
    model.compile(optimizer="sgd", loss="mse", max_consecutive_non_finite=3)
    return model


def test_finite_loss_with_non_finite_gradients_is_skipped():
    model = _model()
    before = [v.numpy() for v in model.trainable_variables]
    # x = 0: the hidden layer's output is its bias, 0, where sqrt's
    # gradient is infinite; the loss, sqrt(0) = 0 in, is finite.
    x, y = np.zeros((4, 2), "float32"), np.ones((4, 1), "float32")
    loss = keras.losses.mean_squared_error(y, model(x))
    assert np.isfinite(loss.numpy()).all()
    with tf.GradientTape() as tape:
        loss = keras.losses.mean_squared_error(y, model(x))
    gradients = tape.gradient(loss, model.trainable_variables)
    assert not all(np.isfinite(g.numpy()).all() for g in gradients)
    logs = model.train_step((tf.constant(x), tf.constant(y)))
    assert int(logs["non_finite_steps"]) == 1
    for a, b in zip(before, model.trainable_variables):
        np.testing.assert_array_equal(a, b.numpy())


def test_finite_step_is_applied():
    model = _model()
    before = [v.numpy() for v in model.trainable_variables]
    x, y = np.ones((4, 2), "float32"), np.zeros((4, 1), "float32")
    logs = model.train_step((tf.constant(x), tf.constant(y)))
    assert int(logs["non_finite_steps"]) == 0
    assert not all(
        np.array_equal(a, b.numpy())
        for a, b in zip(before, model.trainable_variables)
    )
