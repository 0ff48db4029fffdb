"""Identity forward, negated and scaled gradient backward."""

import keras
import tensorflow as tf

from mylayers import checks
from mylayers.examples import Example


@tf.custom_gradient
def _reverse_gradient(x, scale):
    """Identity whose gradient is `-scale * dy`.

    Autodiff of an identity passes `dy` through unchanged; reversing it is the
    point of the layer, so the backward pass has to be written by hand.
    `scale` is a hyperparameter, not a trained value: it gets no gradient.
    """

    def grad(dy):
        return -scale * dy, None

    return tf.identity(x), grad


@keras.saving.register_keras_serializable(package="mylayers")
class GradientReversal(keras.layers.Layer):
    """Gradient reversal: `y = x` forward, `dL/dx = -scale * dL/dy` backward.

    Put it between a feature extractor and a domain classifier
    (domain-adversarial training, Ganin & Lempitsky 2015): the classifier
    learns to tell domains apart while the features learn to hide them.
    No weights.

    Args:
        scale: Non-negative float, the factor applied to the reversed
            gradient (`lambda` in the paper).
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
    ...     y = GradientReversal(scale=0.5)(x)
    >>> y.numpy(), tape.gradient(y, x).numpy()
    (array([1., 2.], dtype=float32), array([-0.5, -0.5], dtype=float32))
    """

    def __init__(self, scale=1.0, **kwargs):
        super().__init__(**kwargs)
        checks.require(
            checks.is_number(scale, minimum=0),
            self,
            "scale",
            scale,
            "a finite, non-negative float",
        )
        self.scale = float(scale)

    def call(self, inputs):
        return _reverse_gradient(inputs, tf.constant(self.scale, inputs.dtype))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def reference_backward(self, inputs, upstream):
        """The intended input gradient, for `mylayers.gradcheck`."""
        return -self.scale * upstream

    def get_config(self):
        return {**super().get_config(), "scale": self.scale}

    @classmethod
    def examples(cls, **kwargs):
        """Small instances and inputs, for gradcheck and the tests
        (`mylayers.examples`)."""
        return [Example(cls(0.7, **kwargs), (2, 4))]
