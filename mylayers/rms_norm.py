"""Root-mean-square normalization with a learned scale."""

import keras
import tensorflow as tf

from mylayers import checks
from mylayers.examples import Example


@keras.saving.register_keras_serializable(package="mylayers")
class RMSNorm(keras.layers.Layer):
    """RMS normalization: `y = x / sqrt(mean(x^2, axis=-1) + epsilon) * g`.

    Unlike layer normalization it neither centres `x` nor adds a bias. `g` is
    a learned scale, one per feature. Under mixed precision the mean square is
    computed in float32, where `x^2` cannot overflow.

    Args:
        epsilon: Positive float added to the mean square before the square
            root, so an all-zero input gives zeros instead of NaN.
        scale_initializer: Initializer for `g`.
        **kwargs: Base layer arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: A tensor of rank >= 2 whose last axis is `features`.

    Input shape:
        `(..., features)`.

    Output shape:
        Same as the input.

    Example:

    >>> layer = RMSNorm()
    >>> layer(tf.constant([[3.0, 4.0]])).numpy().round(4)
    array([[0.8485, 1.1314]], dtype=float32)
    """

    def __init__(self, epsilon=1e-6, scale_initializer="ones", **kwargs):
        super().__init__(**kwargs)
        checks.require(
            checks.is_number(epsilon, minimum=0, strict=True),
            self,
            "epsilon",
            epsilon,
            "a positive float",
        )
        self.epsilon = float(epsilon)
        self.scale_initializer = keras.initializers.get(scale_initializer)
        # Position-wise: a padding mask passes through unchanged.
        self.supports_masking = True
        self.input_spec = keras.layers.InputSpec(min_ndim=2)

    def build(self, input_shape):
        features = checks.known_last_axis(self, input_shape)
        self.scale = self.add_weight(
            name="scale",
            shape=(features,),
            initializer=self.scale_initializer,
        )
        self.input_spec = keras.layers.InputSpec(
            min_ndim=2, axes={-1: features}
        )

    def call(self, inputs):
        # Half-precision x^2 overflows for |x| > 256; normalize in float32.
        stat_dtype = tf.float32 if inputs.dtype.size < 4 else inputs.dtype
        x = tf.cast(inputs, stat_dtype)
        mean_square = tf.reduce_mean(tf.square(x), axis=-1, keepdims=True)
        normalized = x * tf.math.rsqrt(mean_square + self.epsilon)
        return tf.cast(normalized, inputs.dtype) * tf.cast(
            self.scale, inputs.dtype
        )

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {
            **super().get_config(),
            "epsilon": self.epsilon,
            "scale_initializer": keras.initializers.serialize(
                self.scale_initializer
            ),
        }

    @classmethod
    def examples(cls, **kwargs):
        """Small instances and inputs, for gradcheck and the tests
        (`mylayers.examples`)."""
        return [Example(cls(**kwargs), (2, 4))]
