"""Identity forward, norm-clipped gradient backward."""

import keras
import tensorflow as tf

from mylayers import checks
from mylayers.examples import Example


@tf.custom_gradient
def _clip_gradient(x, max_norm):
    """Identity whose gradient is `dy` rescaled to norm at most `max_norm`.

    Autodiff of an identity passes `dy` through unchanged; clipping it is the
    point of the layer. The norm is taken in at least float32 so float16
    gradients do not overflow while it is computed. `max_norm` is a
    hyperparameter: it gets no gradient.
    """

    def grad(dy):
        norm_dtype = tf.float32 if dy.dtype.size < 4 else dy.dtype
        norm = tf.norm(tf.cast(dy, norm_dtype))
        limit = tf.cast(max_norm, norm_dtype)
        factor = tf.minimum(tf.cast(1, norm_dtype), limit / norm)
        return dy * tf.cast(factor, dy.dtype), None

    return tf.identity(x), grad


@keras.saving.register_keras_serializable(package="mylayers")
class ClipGradient(keras.layers.Layer):
    """Gradient clipping inside a model: `y = x`, backward `clip(dL/dy)`.

    Backward, `dL/dx = dL/dy * min(1, max_norm / ||dL/dy||)`, where the norm
    is the Euclidean norm over the whole upstream tensor (the batch
    included). It bounds the gradient that reaches the layers below, e.g. an
    encoder that a loss spike would otherwise wreck. No weights.

    Args:
        max_norm: Positive float, the largest gradient norm let through.
        **kwargs: Base layer arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: A floating-point tensor of any shape.

    Input shape:
        Any.

    Output shape:
        Same as the input.

    Example:

    >>> x = tf.constant([1.0, 2.0])
    >>> with tf.GradientTape() as tape:
    ...     tape.watch(x)
    ...     y = ClipGradient(max_norm=1.0)(x)
    ...     loss = tf.reduce_sum(y * [3.0, 4.0])  # upstream norm 5
    >>> tape.gradient(loss, x).numpy()
    array([0.6, 0.8], dtype=float32)
    """

    def __init__(self, max_norm=1.0, **kwargs):
        super().__init__(**kwargs)
        checks.require(
            checks.is_number(max_norm, minimum=0, strict=True),
            self,
            "max_norm",
            max_norm,
            "a finite, positive float",
        )
        self.max_norm = float(max_norm)

    def call(self, inputs):
        return _clip_gradient(inputs, tf.constant(self.max_norm, tf.float64))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def reference_backward(self, inputs, upstream):
        """The intended input gradient, for `mylayers.gradcheck`."""
        norm = tf.sqrt(tf.reduce_sum(tf.square(upstream)))
        return tf.where(
            norm <= self.max_norm, upstream, upstream * (self.max_norm / norm)
        )

    def get_config(self):
        return {**super().get_config(), "max_norm": self.max_norm}

    @classmethod
    def examples(cls, **kwargs):
        """Small instances and inputs, for gradcheck and the tests
        (`mylayers.examples`)."""
        return [Example(cls(1.5, **kwargs), (2, 4))]
