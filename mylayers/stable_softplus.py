"""Softplus with a custom gradient that stays finite for any float32 input."""

import keras
import tensorflow as tf

from mylayers.examples import Example


@tf.custom_gradient
def _stable_softplus(x):
    """`log(1 + exp(x))` computed as `max(x, 0) + log1p(exp(-|x|))`.

    Autodiff is not enough here. The naive formula's gradient,
    `exp(x) / (1 + exp(x))`, is `inf / inf = NaN` once `exp(x)` overflows
    (x > 88 in float32). Autodiff of the stable formula is finite but wrong
    at `x = 0`, where the subgradients of `max` and `|x|` give 0 instead of
    1/2. The exact derivative is `sigmoid(x)`, which TensorFlow evaluates
    without overflow; it is built from TF ops on `x`, so the second
    derivative `sigmoid(x) (1 - sigmoid(x))` comes out of autodiff.
    """
    y = tf.nn.relu(x) + tf.math.log1p(tf.exp(-tf.abs(x)))

    def grad(dy):
        return dy * tf.sigmoid(x)

    return y, grad


@keras.saving.register_keras_serializable(package="mylayers")
class StableSoftplus(keras.layers.Layer):
    """Softplus activation: `y = log(1 + exp(x))`, stable for large `|x|`.

    Computed as `max(x, 0) + log1p(exp(-|x|))`, with the gradient
    `dy/dx = sigmoid(x)` written out, so output, gradient and second
    derivative are finite and exact for `|x|` up to the float32 limit
    (see `_stable_softplus` for why autodiff is not used). No weights.

    Args:
        **kwargs: Base layer arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: A floating-point tensor of any shape.

    Input shape:
        Any.

    Output shape:
        Same as the input.

    Example:

    >>> x = tf.constant([-1e4, 0.0, 1e4])
    >>> with tf.GradientTape() as tape:
    ...     tape.watch(x)
    ...     y = StableSoftplus()(x)
    >>> y.numpy()
    array([0.000000e+00, 6.931472e-01, 1.000000e+04], dtype=float32)
    >>> tape.gradient(y, x).numpy()
    array([0. , 0.5, 1. ], dtype=float32)
    """

    def call(self, inputs):
        return _stable_softplus(inputs)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    @classmethod
    def examples(cls, **kwargs):
        """Small instances and inputs, for gradcheck and the tests
        (`mylayers.examples`)."""
        return [Example(cls(**kwargs), (2, 4))]
