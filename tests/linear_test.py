"""Tests for `mylayers.Linear` and `mylayers.ManualLinear`."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import mylayers


class NumpyLinear:
    """The seed: a matmul layer with its backward pass derived by hand."""

    def __init__(self, weight, bias):
        self.weight, self.bias = weight, bias

    def forward(self, x):
        self.x = x
        return x @ self.weight.T + self.bias

    def backward(self, dy):
        self.d_weight = dy.T @ self.x
        self.d_bias = dy.sum(axis=0)
        return dy @ self.weight


def _gradients(layer, x, upstream):
    """Returns `(y, dL/dx, dL/dW, dL/db)` for `L = sum(y * upstream)`."""
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x)
        loss = tf.reduce_sum(y * upstream)
    dx, dw, db = tape.gradient(loss, [x, layer.kernel, layer.bias])
    return y.numpy(), dx.numpy(), dw.numpy(), db.numpy()


@pytest.mark.parametrize(
    "layer_class", [mylayers.Linear, mylayers.ManualLinear]
)
def test_basics(layer_class, tmp_path):
    layer = layer_class(5, activation="relu")
    y = layer(tf.ones((3, 4)))
    assert y.shape == (3, 5)
    assert [w.shape for w in layer.trainable_weights] == [(5, 4), (5,)]
    assert layer.compute_output_shape((None, 7, 4)) == (None, 7, 5)
    # Rank-3 input: the kernel applies to the last axis.
    assert layer(tf.ones((2, 7, 4))).shape == (2, 7, 5)

    restored = layer_class.from_config(layer.get_config())
    assert restored.get_config() == layer.get_config()
    assert layer_class(3, use_bias=False).get_config()["use_bias"] is False

    inputs = keras.Input((4,))
    model = keras.Model(inputs, layer_class(2)(inputs))
    model.compile("sgd", "mse")
    x = np.random.default_rng(0).normal(size=(16, 4)).astype("float32")
    before = model.get_weights()
    model.fit(x, np.zeros((16, 2)), verbose=0, epochs=1)
    assert not np.allclose(before[0], model.get_weights()[0])
    path = tmp_path / "m.keras"
    model.save(path)
    reloaded = keras.models.load_model(path)
    np.testing.assert_array_equal(
        model.predict(x, verbose=0), reloaded.predict(x, verbose=0)
    )


@pytest.mark.parametrize(
    "layer_class", [mylayers.Linear, mylayers.ManualLinear]
)
def test_correctness_against_numpy_seed(layer_class):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(6, 4))
    weight = rng.normal(size=(3, 4))
    bias = rng.normal(size=(3,))
    upstream = rng.normal(size=(6, 3))
    reference = NumpyLinear(weight, bias)
    y_ref = reference.forward(x)
    dx_ref = reference.backward(upstream)

    layer = layer_class(3, dtype="float64")
    layer.build((None, 4))
    layer.set_weights([weight, bias])
    y, dx, dw, db = _gradients(layer, x, upstream)
    np.testing.assert_allclose(y, y_ref, atol=1e-10)
    np.testing.assert_allclose(dx, dx_ref, atol=1e-10)
    np.testing.assert_allclose(dw, reference.d_weight, atol=1e-10)
    np.testing.assert_allclose(db, reference.d_bias, atol=1e-10)


def test_hand_written_gradients_equal_autodiff_in_float64():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 5, 8))  # rank 3: batch axes are summed over
    upstream = rng.normal(size=(2, 5, 3))
    auto = mylayers.Linear(3, dtype="float64")
    manual = mylayers.ManualLinear(3, dtype="float64")
    auto.build((None, 5, 8))
    manual.build((None, 5, 8))
    manual.set_weights(auto.get_weights())
    for a, m in zip(
        _gradients(auto, x, upstream), _gradients(manual, x, upstream)
    ):
        np.testing.assert_allclose(m, a, atol=1e-10, rtol=0)


def test_seed_polynomial_second_derivative():
    """The seed example: y = x^3 + x^2 + x + 5 at x = 3."""
    x = tf.Variable(3.0)
    with tf.GradientTape() as outer:
        with tf.GradientTape() as inner:
            y = x**3 + x**2 + x + 5
        dy_dx = inner.gradient(y, x)
    d2y_dx2 = outer.gradient(dy_dx, x)
    assert float(dy_dx) == 34.0
    assert float(d2y_dx2) == 20.0


@pytest.mark.parametrize(
    "layer_class", [mylayers.Linear, mylayers.ManualLinear]
)
def test_second_derivative_through_layer(layer_class):
    """d2/dx2 of sum(tanh(Linear(x))) matches the analytic value."""
    layer = layer_class(1, activation="tanh", dtype="float64")
    layer.build((None, 1))
    layer.set_weights([np.array([[2.0]]), np.array([0.5])])
    x = tf.Variable([[0.3]], dtype=tf.float64)
    with tf.GradientTape() as outer:
        with tf.GradientTape() as inner:
            y = tf.reduce_sum(layer(x))
        first = inner.gradient(y, x)
    second = outer.gradient(first, x)
    t = np.tanh(2.0 * 0.3 + 0.5)
    np.testing.assert_allclose(first.numpy(), [[2.0 * (1 - t**2)]], rtol=1e-12)
    np.testing.assert_allclose(
        second.numpy(), [[4.0 * (-2 * t * (1 - t**2))]], rtol=1e-12
    )


@pytest.mark.parametrize(
    "layer_class", [mylayers.Linear, mylayers.ManualLinear]
)
@pytest.mark.parametrize("units", [0, -3, 2.5, "4", True])
def test_invalid_units(layer_class, units):
    with pytest.raises(ValueError, match="units"):
        layer_class(units)


@pytest.mark.parametrize(
    "layer_class", [mylayers.Linear, mylayers.ManualLinear]
)
def test_wrong_input_size_names_layer(layer_class):
    layer = layer_class(2, name="my_dense")
    layer(tf.ones((1, 3)))
    with pytest.raises(ValueError, match="my_dense"):
        layer(tf.ones((1, 4)))
    with pytest.raises(ValueError, match="my_dense"):
        layer_class(2, name="my_dense")(tf.ones((3,)))
