"""The `Linear` layer with its backward pass written by hand."""

import keras
import tensorflow as tf

from mylayers.examples import Example
from mylayers.linear import Linear


def _flatten_batch(tensor):
    """Reshapes `(..., d)` to `(n, d)` so the backward pass is two matmuls."""
    return tf.reshape(tensor, (-1, tf.shape(tensor)[-1]))


@tf.custom_gradient
def _affine_with_bias(x, kernel, bias):
    """`x W^T + b` with the numpy-style backward pass.

    Autodiff would derive the same gradients; this exists to show how a
    backward pass ported from numpy is written, and the tests prove it equal
    to autodiff. The gradient is built from TF ops on the captured tensors, so
    it is itself differentiable (second derivatives work).
    """
    y = tf.matmul(x, kernel, transpose_b=True) + bias

    def grad(dy):
        dx = tf.matmul(dy, kernel)
        dy2 = _flatten_batch(dy)
        dkernel = tf.matmul(dy2, _flatten_batch(x), transpose_a=True)
        dbias = tf.reduce_sum(dy2, axis=0)
        return dx, dkernel, dbias

    return y, grad


@tf.custom_gradient
def _affine(x, kernel):
    """`x W^T` with the numpy-style backward pass (see `_affine_with_bias`)."""
    y = tf.matmul(x, kernel, transpose_b=True)

    def grad(dy):
        dkernel = tf.matmul(
            _flatten_batch(dy), _flatten_batch(x), transpose_a=True
        )
        return tf.matmul(dy, kernel), dkernel

    return y, grad


@keras.saving.register_keras_serializable(package="mylayers")
class ManualLinear(Linear):
    """`Linear` whose gradients are the hand-derived numpy formulas.

    `Y = activation(X W^T + b)`, with the backward pass of the affine part
    written out in `tf.custom_gradient`:

    - `dX = dY W`
    - `dW = dY^T X`
    - `db = sum(dY)` over every axis but the last.

    Use it as the template for porting a layer whose backward pass you already
    have; for new layers, prefer `Linear`, which lets autodiff do this.
    Arguments, shapes and weights are those of `Linear`.

    Example:

    >>> layer = ManualLinear(2, kernel_initializer="ones")
    >>> x = tf.constant([[1.0, 2.0, 3.0]])
    >>> with tf.GradientTape() as tape:
    ...     tape.watch(x)
    ...     y = layer(x)
    >>> tape.gradient(y, x).numpy()
    array([[2., 2., 2.]], dtype=float32)
    """

    def call(self, inputs):
        # Weights are passed in as tensors (cast to the compute dtype), so the
        # custom gradient needs no `variables` argument and the cast carries
        # the gradient back to the float32 variables under mixed precision.
        kernel = tf.cast(self.kernel, self.compute_dtype)
        if self.use_bias:
            bias = tf.cast(self.bias, self.compute_dtype)
            outputs = _affine_with_bias(inputs, kernel, bias)
        else:
            outputs = _affine(inputs, kernel)
        return self.activation(outputs)

    @classmethod
    def examples(cls, **kwargs):
        """Small instances and inputs, for gradcheck and the tests
        (`mylayers.examples`)."""
        return [Example(cls(3, activation="tanh", **kwargs), (2, 4))]
