"""The numpy seed layer, forward and backward in numpy, as a Keras layer."""

import keras
import tensorflow as tf

from mylayers import checks
from mylayers.examples import Example
from mylayers.numpy_bridge import numpy_op


class _SeedLinear:
    """The seed: a numpy matmul layer with its backward pass derived by hand.

    It keeps `x` from `forward` for `backward`, as numpy code does; the
    bridge needs stateless functions, so `_forward` and `_backward` below
    build one per call.
    """

    def __init__(self, weight, bias):
        self.weight, self.bias = weight, bias

    def forward(self, x):
        self.x = x
        return x @ self.weight.T + self.bias

    def backward(self, dy):
        self.d_weight = dy.T @ self.x
        self.d_bias = dy.sum(axis=0)
        return dy @ self.weight


def _forward(x, weight, bias):
    return _SeedLinear(weight, bias).forward(x)


def _backward(dy, x, weight, bias):
    seed = _SeedLinear(weight, bias)
    seed.x = x
    dx = seed.backward(dy)
    return dx, seed.d_weight, seed.d_bias


def _output_shape(x_shape, weight_shape, bias_shape):
    return (x_shape[0], weight_shape[0])


_seed_affine = numpy_op(_forward, _backward, _output_shape, name="NumpyLinear")


@keras.saving.register_keras_serializable(package="mylayers")
class NumpyLinear(keras.layers.Layer):
    """`Linear` computed by numpy code: `Y = X W^T + b`.

    Forward and backward are the numpy seed's (`dX = dY W`, `dW = dY^T X`,
    `db = sum(dY)`), run through `mylayers.numpy_op`, so gradients reach the
    input and both weights. The price of numpy: it cannot run under XLA
    (`supports_jit` is False, so `compile(jit_compile=True)` falls back to
    `jit_compile=False`), has no second derivative
    (`differentiable_twice` is False; asking for one raises), runs on the
    host CPU, and `model.export()` cannot save numpy code: the export
    succeeds, but calling it in another process fails ("Could not find
    callback"). `.keras` files work, since loading rebuilds the layer.

    Args:
        units: Positive integer, the size of the last output axis.
        kernel_initializer: Initializer for `W`, of shape
            `(units, input_dim)`.
        bias_initializer: Initializer for `b`.
        **kwargs: Base layer arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: A tensor of rank >= 2 whose last axis is `input_dim`.

    Input shape:
        `(..., input_dim)`.

    Output shape:
        `(..., units)`.

    Example:

    >>> layer = NumpyLinear(2, kernel_initializer="ones")
    >>> x = tf.constant([[1.0, 2.0, 3.0]])
    >>> with tf.GradientTape() as tape:
    ...     tape.watch(x)
    ...     y = layer(x)
    >>> y.numpy(), tape.gradient(y, x).numpy()
    (array([[6., 6.]], dtype=float32), array([[2., 2., 2.]], dtype=float32))
    """

    differentiable_twice = False

    def __init__(
        self,
        units,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.units = checks.positive_int(self, "units", units)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        # Read by Keras's `compile(jit_compile=...)` and by gradcheck.
        self.supports_jit = False
        self.input_spec = keras.layers.InputSpec(min_ndim=2)

    def build(self, input_shape):
        input_dim = checks.known_last_axis(self, input_shape)
        self.kernel = self.add_weight(
            name="kernel",
            shape=(self.units, input_dim),
            initializer=self.kernel_initializer,
        )
        self.bias = self.add_weight(
            name="bias", shape=(self.units,), initializer=self.bias_initializer
        )
        self.input_spec = keras.layers.InputSpec(
            min_ndim=2, axes={-1: input_dim}
        )

    def call(self, inputs):
        # The seed works on matrices: fold every batch axis into one.
        flat = tf.reshape(inputs, (-1, tf.shape(inputs)[-1]))
        flat.set_shape((None, self.kernel.shape[1]))
        outputs = _seed_affine(
            flat,
            tf.cast(self.kernel, self.compute_dtype),
            tf.cast(self.bias, self.compute_dtype),
        )
        out_shape = tf.concat([tf.shape(inputs)[:-1], [self.units]], axis=0)
        outputs = tf.reshape(outputs, out_shape)
        outputs.set_shape(self.compute_output_shape(inputs.shape))
        return outputs

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.units)

    def get_config(self):
        return {
            **super().get_config(),
            "units": self.units,
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
        return [Example(cls(3, **kwargs), (2, 4))]
