"""A fully connected layer written as a forward pass only."""

import keras
import tensorflow as tf

from mylayers import checks
from mylayers.examples import Example


@keras.saving.register_keras_serializable(package="mylayers")
class Linear(keras.layers.Layer):
    """Fully connected layer: `Y = activation(X W^T + b)`.

    Only the forward pass is written here. `tf.GradientTape` records it and
    derives `dX = dY W`, `dW = dY^T X` and `db = sum(dY)` by itself; the tests
    check that these equal the hand-derived formulas of `ManualLinear`.

    The kernel is stored as `(units, input_dim)`, the layout of the numpy
    formula `X W^T`, so its values line up with numpy and PyTorch code.

    Args:
        units: Positive integer, the size of the last output axis.
        activation: Activation name or callable applied after the affine map.
            `None` means linear.
        use_bias: Whether to add a learned bias `b`.
        kernel_initializer: Initializer for `W`.
        bias_initializer: Initializer for `b`.
        **kwargs: Base layer arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: A tensor of rank >= 2 whose last axis is `input_dim`.

    Input shape:
        `(..., input_dim)`.

    Output shape:
        `(..., units)`.

    Example:

    >>> layer = Linear(3)
    >>> layer(tf.ones((2, 4))).shape
    TensorShape([2, 3])
    """

    def __init__(
        self,
        units,
        activation=None,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.units = checks.positive_int(self, "units", units)
        self.activation = keras.activations.get(activation)
        self.use_bias = use_bias
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        # Position-wise: a padding mask passes through unchanged.
        self.supports_masking = True
        self.input_spec = keras.layers.InputSpec(min_ndim=2)

    def build(self, input_shape):
        input_dim = checks.known_last_axis(self, input_shape)
        self.kernel = self.add_weight(
            name="kernel",
            shape=(self.units, input_dim),
            initializer=self.kernel_initializer,
        )
        if self.use_bias:
            self.bias = self.add_weight(
                name="bias",
                shape=(self.units,),
                initializer=self.bias_initializer,
            )
        else:
            self.bias = None
        self.input_spec = keras.layers.InputSpec(
            min_ndim=2, axes={-1: input_dim}
        )

    def call(self, inputs):
        # Leading axes are folded into one, so that any rank runs as one
        # 2-D MatMul (a broadcast batched MatMul, and its gradient's sum
        # over the batch axes, are slower on CPU: benchmarks/RESULTS.md).
        flat = inputs
        if inputs.shape.rank != 2:
            flat = tf.reshape(inputs, [-1, self.kernel.shape[1]])
        outputs = tf.matmul(flat, self.kernel, transpose_b=True)
        if self.use_bias:
            outputs = tf.nn.bias_add(outputs, self.bias)
        outputs = self.activation(outputs)
        if inputs.shape.rank != 2:
            leading = tf.shape(inputs)[:-1]
            outputs = tf.reshape(outputs, tf.concat([leading, [self.units]], 0))
        return outputs

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.units)

    def get_config(self):
        return {
            **super().get_config(),
            "units": self.units,
            "activation": keras.activations.serialize(self.activation),
            "use_bias": self.use_bias,
            "kernel_initializer": keras.initializers.serialize(
                self.kernel_initializer
            ),
            "bias_initializer": keras.initializers.serialize(
                self.bias_initializer
            ),
        }

    @classmethod
    def examples(cls, **kwargs):
        """Small instances and inputs, for gradcheck and the tests
        (`mylayers.examples`)."""
        return [Example(cls(3, activation="tanh", **kwargs), (2, 4))]
