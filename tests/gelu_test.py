"""`mylayers.gelu`: Keras's exact GELU, with a backward pass that keeps
only its input, and `MLPBlock` running Keras's GELU as it."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import mylayers

X = tf.random.stateless_normal((4, 257), [1, 2]) * 3


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_same_bits_as_keras_gelu(dtype):
    x = tf.cast(X, dtype)
    np.testing.assert_array_equal(mylayers.gelu(x), keras.activations.gelu(x))


def test_float64_keeps_its_precision():
    """In float64, TensorFlow's GELU rounds its 1/sqrt(2) to float32
    first; this one does not: the two differ by float32's rounding."""
    x = tf.cast(X, tf.float64)
    exact = x * 0.5 * (1 + tf.math.erf(x / np.sqrt(2)))
    np.testing.assert_allclose(mylayers.gelu(x), exact, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(
        mylayers.gelu(x), keras.activations.gelu(x), rtol=1e-7, atol=1e-7
    )


def test_first_and_second_derivatives_equal_autodiffs():
    def derivatives(f):
        with tf.GradientTape() as outer:
            outer.watch(X)
            with tf.GradientTape() as inner:
                inner.watch(X)
                y = f(X)
            first = inner.gradient(y, X)
        return first, outer.gradient(first, X)

    ours = derivatives(mylayers.gelu)
    keras_ones = derivatives(keras.activations.gelu)
    for got, expected in zip(ours, keras_ones):
        # float32: both sides round their few ops differently.
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_gradchecked_to_second_order_in_every_mode():
    x = tf.random.stateless_normal((3, 5), [0, 1], dtype=tf.float64) * 2
    report = mylayers.gradcheck(mylayers.gelu, x, order=2)
    assert report.ok, report.table()
    assert {row.mode for row in report.rows} == {"eager", "function", "jit"}


def test_mlp_block_runs_keras_gelu_as_it():
    block = mylayers.MLPBlock(8)
    assert block.hidden.activation is mylayers.gelu
    # Saved as before: the block's own choice, "gelu".
    assert block.get_config()["activation"] == "gelu"
    relu = mylayers.MLPBlock(8, activation="relu")
    assert relu.hidden.activation is keras.activations.relu


def test_saves_by_name_as_an_activation(tmp_path):
    model = keras.Sequential(
        [keras.Input((3,)), mylayers.Linear(4, activation=mylayers.gelu)]
    )
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.layers[0].activation is mylayers.gelu
    x = np.ones((2, 3), "float32")
    np.testing.assert_array_equal(loaded(x), model(x))
