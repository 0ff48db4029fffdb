"""A 2-D convolution written as a forward pass only."""

import keras
import tensorflow as tf

from mylayers import checks
from mylayers.examples import Example


def _positive_pair(layer, argument, value):
    """`value` as `(rows, cols)`, from a positive int or a pair of them."""
    pair = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    ok = len(pair) == 2 and all(checks.is_int(v, 1) for v in pair)
    checks.require(
        ok, layer, argument, value, "a positive integer or a pair of them"
    )
    return pair


@keras.saving.register_keras_serializable(package="mylayers")
class Conv2D(keras.layers.Layer):
    """2-D convolution over channels-last images.

    `Y[n, i, j, f] = activation(sum_{a, b, c} X[n, s_h i + a, s_w j + b, c]
    W[a, b, c, f] + b[f])`, with `X` zero-padded for `padding="same"`. Like
    every deep-learning "convolution" it is a cross-correlation: the kernel is
    not flipped.

    Only the forward pass (`tf.nn.conv2d`) is written here. `tf.GradientTape`
    derives `dX` (a transposed convolution of `dY` with `W`), `dW` (a
    correlation of `X` with `dY`) and `db = sum(dY)` by itself, and
    differentiates those again for second derivatives; `python -m
    mylayers.gradcheck` checks them against finite differences.

    The kernel is stored as `(kernel_rows, kernel_cols, in_channels,
    filters)`, the layout of `keras.layers.Conv2D`, so weights move between
    the two unchanged.

    Args:
        filters: Positive integer, the number of output channels.
        kernel_size: Positive integer or pair `(rows, cols)`, the window.
        strides: Positive integer or pair `(rows, cols)`, the step of the
            window.
        padding: `"valid"` (no padding: the window stays inside the image)
            or `"same"` (zero padding, as TensorFlow places it, so the output
            has `ceil(size / stride)` rows and columns).
        activation: Activation name or callable applied after the bias.
            `None` means linear.
        use_bias: Whether to add a learned bias `b`, one per filter.
        kernel_initializer: Initializer for `W`.
        bias_initializer: Initializer for `b`.
        **kwargs: Base layer arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: A rank-4 tensor whose last axis is `in_channels`.

    Input shape:
        `(batch, rows, cols, in_channels)`.

    Output shape:
        `(batch, new_rows, new_cols, filters)`: `ceil(rows / s_h)` rows for
        `"same"`, `ceil((rows - kernel_rows + 1) / s_h)` for `"valid"`;
        columns likewise.

    Example:

    >>> layer = Conv2D(4, 3, strides=2, padding="same")
    >>> layer(tf.ones((2, 7, 8, 3))).shape
    TensorShape([2, 4, 4, 4])
    """

    def __init__(
        self,
        filters,
        kernel_size,
        strides=1,
        padding="valid",
        activation=None,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if padding not in ("same", "valid"):
            raise ValueError(
                f'{type(self).__name__} expected padding="same" or "valid". '
                f"Received: padding={padding!r}"
            )
        self.filters = checks.positive_int(self, "filters", filters)
        self.kernel_size = _positive_pair(self, "kernel_size", kernel_size)
        self.strides = _positive_pair(self, "strides", strides)
        self.padding = padding
        self.activation = keras.activations.get(activation)
        self.use_bias = use_bias
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.input_spec = keras.layers.InputSpec(ndim=4)

    def build(self, input_shape):
        in_channels = checks.known_last_axis(self, input_shape, "channel axis")
        self.kernel = self.add_weight(
            name="kernel",
            shape=(*self.kernel_size, in_channels, self.filters),
            initializer=self.kernel_initializer,
        )
        if self.use_bias:
            self.bias = self.add_weight(
                name="bias",
                shape=(self.filters,),
                initializer=self.bias_initializer,
            )
        else:
            self.bias = None
        self.input_spec = keras.layers.InputSpec(ndim=4, axes={-1: in_channels})

    def call(self, inputs):
        # Keras autocasts the float32 variables to the compute dtype here.
        outputs = tf.nn.conv2d(
            inputs, self.kernel, self.strides, self.padding.upper()
        )
        if self.use_bias:
            outputs = tf.nn.bias_add(outputs, self.bias)
        return self.activation(outputs)

    def compute_output_shape(self, input_shape):
        batch, *spatial, _ = input_shape
        if self.padding == "valid":
            spatial = [
                None if n is None else n - k + 1
                for n, k in zip(spatial, self.kernel_size)
            ]
        rows, cols = [
            None if n is None else -(-n // s)  # ceil(n / s)
            for n, s in zip(spatial, self.strides)
        ]
        return (batch, rows, cols, self.filters)

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "kernel_size": self.kernel_size,
            "strides": self.strides,
            "padding": self.padding,
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
        return [
            Example(
                cls(2, 3, padding="same", activation="tanh", **kwargs),
                (1, 4, 4, 2),
            ),
            Example(cls(2, (2, 3), strides=2, **kwargs), (1, 5, 5, 2)),
        ]
