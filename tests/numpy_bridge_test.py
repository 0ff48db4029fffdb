"""Tests for `mylayers.numpy_op` and the `NumpyLinear` layer built on it."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import mylayers


def _cube_op():
    """`x^3 * w` with a numpy backward, two inputs."""
    return mylayers.numpy_op(
        lambda x, w: x**3 * w,
        lambda dy, x, w: (3 * x**2 * w * dy, np.sum(x**3 * dy)),
        lambda x_shape, w_shape: x_shape,
        name="cube",
    )


def _seed(x, weight, bias, dy):
    """The seed's formulas, worked out independently of the layer."""
    return x @ weight.T + bias, dy @ weight, dy.T @ x, dy.sum(axis=0)


@pytest.mark.parametrize("compiled", [False, True])
def test_gradients_reach_every_input(compiled):
    op = _cube_op()
    x = tf.constant([1.0, 2.0], tf.float64)
    w = tf.constant(0.5, tf.float64)

    def run(x, w):
        with tf.GradientTape() as tape:
            tape.watch([x, w])
            y = op(x, w)
        return (y, *tape.gradient(y, [x, w]))

    y, dx, dw = (tf.function(run) if compiled else run)(x, w)
    np.testing.assert_allclose(y.numpy(), [0.5, 4.0])
    np.testing.assert_allclose(dx.numpy(), [1.5, 6.0])
    np.testing.assert_allclose(dw.numpy(), 9.0)


def test_static_shape_in_function_graph():
    op = _cube_op()

    @tf.function(input_signature=[tf.TensorSpec((None, 3), tf.float32)])
    def f(x):
        y = op(x, tf.constant(1.0))
        assert y.shape.as_list() == [None, 3]
        return y

    assert f(tf.ones((2, 3))).shape == (2, 3)


def test_numpy_linear_matches_seed_formulas():
    rng = np.random.default_rng(0)
    x, dy = rng.normal(size=(2, 3, 4)), rng.normal(size=(2, 3, 5))
    weight, bias = rng.normal(size=(5, 4)), rng.normal(size=(5,))
    layer = mylayers.NumpyLinear(5, dtype="float64")
    layer.build((None, 3, 4))
    layer.set_weights([weight, bias])
    x_t = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x_t)
        y = layer(x_t)
        loss = tf.reduce_sum(y * dy)
    dx, dw, db = tape.gradient(loss, [x_t, layer.kernel, layer.bias])
    # Batch axes folded into one, as the layer does.
    y_ref, dx_ref, dw_ref, db_ref = _seed(
        x.reshape(6, 4), weight, bias, dy.reshape(6, 5)
    )
    np.testing.assert_allclose(y.numpy().reshape(6, 5), y_ref, atol=1e-12)
    np.testing.assert_allclose(dx.numpy().reshape(6, 4), dx_ref, atol=1e-12)
    np.testing.assert_allclose(dw.numpy(), dw_ref, atol=1e-12)
    np.testing.assert_allclose(db.numpy(), db_ref, atol=1e-12)


def test_numpy_linear_trains_with_fit_in_functional_model():
    inputs = keras.Input((4,))
    outputs = mylayers.NumpyLinear(1)(mylayers.NumpyLinear(8)(inputs))
    assert outputs.shape == (None, 1)  # static shape for the Functional API
    model = keras.Model(inputs, outputs)
    # The layer says it cannot be compiled; Keras falls back to no XLA.
    with pytest.warns(UserWarning, match="jit_compile=False"):
        model.compile(keras.optimizers.SGD(0.05), "mse", jit_compile=True)
    assert model.jit_compile is False
    rng = np.random.default_rng(1)
    x = rng.normal(size=(64, 4)).astype("float32")
    y = x @ np.array([[1.0], [-2.0], [0.5], [3.0]], "float32")
    history = model.fit(x, y, epochs=20, batch_size=16, verbose=0)
    assert history.history["loss"][-1] < 0.05 * history.history["loss"][0]


def test_xla_raises_clear_error():
    layer = mylayers.NumpyLinear(2)
    layer.build((None, 3))
    f = tf.function(lambda x: layer(x), jit_compile=True)
    with pytest.raises(NotImplementedError, match="cannot run under XLA"):
        f(tf.ones((1, 3)))


@pytest.mark.parametrize("compiled", [False, True])
def test_second_derivative_raises_instead_of_none(compiled):
    layer = mylayers.NumpyLinear(2)
    layer.build((None, 3))

    def second(x):
        with tf.GradientTape() as outer:
            outer.watch(x)
            with tf.GradientTape() as inner:
                inner.watch(x)
                y = tf.reduce_sum(tf.tanh(layer(x)))
            dx = inner.gradient(y, x)
        return outer.gradient(dx, x)

    with pytest.raises(NotImplementedError, match="no second derivative"):
        (tf.function(second) if compiled else second)(tf.ones((1, 3)))


def test_first_derivative_under_outer_tape_still_works():
    """Only asking for the second derivative raises, not recording one."""
    op = _cube_op()
    x = tf.constant([2.0])
    with tf.GradientTape(persistent=True) as outer:
        outer.watch(x)
        with tf.GradientTape() as inner:
            inner.watch(x)
            y = op(x, tf.constant(1.0))
        dx = inner.gradient(y, x)
    np.testing.assert_allclose(dx.numpy(), [12.0])
    with pytest.raises(NotImplementedError, match="cube"):
        outer.gradient(dx, x)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_reaches_numpy_as_float32(dtype):
    seen = []

    def forward(x):
        seen.append(x.dtype)
        return x * 2

    op = mylayers.numpy_op(forward, lambda dy, x: (2 * dy,), lambda s: s)
    x = tf.constant([1.5, 2.5], dtype)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = op(x)
    assert seen == [np.float32]
    assert y.dtype == dtype and tape.gradient(y, x).dtype == dtype
    np.testing.assert_array_equal(tf.cast(y, tf.float32).numpy(), [3.0, 5.0])
