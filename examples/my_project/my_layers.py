"""Two layers of this project's own, outside the package.

`RadialBasis` is written as the Keras guides write a layer: weights from
`add_weight` (no names needed), a forward pass, and autodiff derives the
backward pass. `Swish` shows the other kind: a derivative written by hand
in `tf.custom_gradient`, as when porting a numpy layer's backward pass.
Both are registered and have `get_config()`, so the run's `model.keras`
loads wherever this module can be imported.
"""

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="my_project")
class RadialBasis(keras.layers.Layer):
    """`y_j = exp(-|x - c_j|^2 / exp(2 s_j))`: `units` Gaussian bumps with
    learned centres `c` and log-widths `s`."""

    def __init__(self, units=16, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def build(self, input_shape):
        self.centres = self.add_weight(
            shape=(self.units, input_shape[-1]), initializer="random_normal"
        )
        self.log_widths = self.add_weight(
            shape=(self.units,), initializer="zeros"
        )

    def call(self, inputs):
        distance = tf.reduce_sum(
            tf.square(inputs[..., None, :] - self.centres), axis=-1
        )
        return tf.exp(-distance * tf.exp(-2.0 * self.log_widths))

    def get_config(self):
        return {**super().get_config(), "units": self.units}


@tf.custom_gradient
def _swish(x):
    """`x sigmoid(x)`, with its derivative `s + x s (1 - s)` written out.

    Autodiff would derive the same; this is the shape of a numpy layer's
    `backward` ported as it was. Built from TF ops on `x`, so it has a
    second derivative too."""
    s = tf.sigmoid(x)

    def grad(dy):
        return dy * (s + x * s * (1.0 - s))

    return x * s, grad


@keras.saving.register_keras_serializable(package="my_project")
class Swish(keras.layers.Layer):
    """`y = x sigmoid(x)`, its gradient by hand (`_swish`)."""

    def call(self, inputs):
        return _swish(inputs)
