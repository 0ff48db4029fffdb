"""Quantization with a straight-through gradient estimator."""

import keras
import tensorflow as tf

from mylayers import checks
from mylayers.examples import Example


@tf.custom_gradient
def _straight_through(x, quantized):
    """Returns `quantized` forward and passes `dy` to `x` where `|x| <= 1`.

    The true derivative of rounding is zero almost everywhere, so autodiff
    would stop all learning upstream. The straight-through estimator
    (Bengio et al. 2013) pretends the quantizer is the identity on the range
    it covers and zero outside it, where the forward pass saturates.
    """

    def grad(dy):
        inside = tf.cast(tf.abs(x) <= 1, dy.dtype)
        return dy * inside, None

    return tf.identity(quantized), grad


@keras.saving.register_keras_serializable(package="mylayers")
class StraightThroughQuantize(keras.layers.Layer):
    """Uniform quantizer to `2^bits` levels in `[-1, 1]`, trained with STE.

    Forward, with `n = 2^bits - 1`:
    `y = 2 round((clip(x, -1, 1) + 1) n / 2) / n - 1`, and for `bits=1`,
    `y = sign(x)` with `sign(0) = 1`. Backward (straight-through estimator):
    `dL/dx = dL/dy * 1[|x| <= 1]`. No weights.

    Args:
        bits: Integer in `[1, 16]`, the number of bits per value.
        **kwargs: Base layer arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: A floating-point tensor of any shape.

    Input shape:
        Any.

    Output shape:
        Same as the input.

    Example:

    >>> x = tf.constant([-2.0, -0.2, 0.4, 0.9])
    >>> with tf.GradientTape() as tape:
    ...     tape.watch(x)
    ...     y = StraightThroughQuantize(bits=2)(x)
    >>> y.numpy().round(4)
    array([-1.    , -0.3333,  0.3333,  1.    ], dtype=float32)
    >>> tape.gradient(y, x).numpy()
    array([0., 1., 1., 1.], dtype=float32)
    """

    def __init__(self, bits=8, **kwargs):
        super().__init__(**kwargs)
        self.bits = checks.require(
            checks.is_int(bits, 1, 16),
            self,
            "bits",
            bits,
            "an integer in [1, 16]",
        )

    def call(self, inputs):
        if self.bits == 1:
            quantized = tf.where(inputs >= 0, 1.0, -1.0)
        else:
            levels = 2.0**self.bits - 1
            unit = (tf.clip_by_value(inputs, -1, 1) + 1) / 2
            quantized = 2 * tf.round(unit * levels) / levels - 1
        quantized = tf.cast(quantized, inputs.dtype)
        return _straight_through(inputs, tf.stop_gradient(quantized))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def reference_backward(self, inputs, upstream):
        """The intended input gradient, for `mylayers.gradcheck`."""
        return tf.where(tf.abs(inputs) <= 1, upstream, tf.zeros_like(upstream))

    def get_config(self):
        return {**super().get_config(), "bits": self.bits}

    @classmethod
    def examples(cls, **kwargs):
        """Small instances and inputs, for gradcheck and the tests
        (`mylayers.examples`)."""
        return [
            Example(cls(bits=2, **kwargs), (2, 4)),
            Example(cls(bits=1, **kwargs), (2, 4)),
        ]
