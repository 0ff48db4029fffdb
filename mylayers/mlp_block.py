"""A pre-norm residual MLP block built from other `mylayers` layers."""

import keras

from mylayers import checks
from mylayers.examples import Example
from mylayers.gelu import gelu
from mylayers.linear import Linear
from mylayers.rms_norm import RMSNorm


@keras.saving.register_keras_serializable(package="mylayers")
class MLPBlock(keras.layers.Layer):
    """Residual MLP: `y = x + Linear_out(act(Linear_in(RMSNorm(x))))`.

    The transformer feed-forward block with pre-normalization: the residual
    path carries `x` unchanged, so deep stacks of blocks stay trainable.
    `Linear_in` maps `features -> hidden_units`, `Linear_out` maps back.

    Args:
        hidden_units: Positive integer, the width of the hidden layer.
        activation: Activation of the hidden layer (name or callable).
            Keras's `"gelu"` runs as `mylayers.gelu`: the same outputs,
            and a backward pass that keeps a third of the memory.
        epsilon: `RMSNorm`'s epsilon.
        dropout: Dropout rate on the branch, before it is added to `x`,
            in [0, 1).
        **kwargs: Base layer arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: A tensor of rank >= 2 whose last axis is `features`.
        training: Whether dropout is on.

    Input shape:
        `(..., features)`.

    Output shape:
        Same as the input.

    Example:

    >>> block = MLPBlock(8)
    >>> block(tf.ones((2, 4))).shape
    TensorShape([2, 4])
    >>> len(block.trainable_weights)  # norm scale, two kernels, two biases
    5
    """

    def __init__(
        self,
        hidden_units,
        activation="gelu",
        epsilon=1e-6,
        dropout=0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.hidden_units = checks.positive_int(
            self, "hidden_units", hidden_units
        )
        self.activation = keras.activations.get(activation)
        self.epsilon = epsilon
        self.dropout = checks.dropout_rate(self, dropout)
        self.dropout_layer = keras.layers.Dropout(
            dropout, dtype=self.dtype_policy
        )
        # Sublayers inherit this layer's dtype policy (mixed precision too).
        self.norm = RMSNorm(epsilon, dtype=self.dtype_policy, name="norm")
        # Keras's GELU runs as `mylayers.gelu`: the same function, whose
        # backward pass keeps only its input, the block's widest tensor.
        hidden_activation = self.activation
        if hidden_activation is keras.activations.gelu:
            hidden_activation = gelu
        self.hidden = Linear(
            hidden_units,
            activation=hidden_activation,
            dtype=self.dtype_policy,
            name="hidden",
        )
        # Position-wise: a padding mask passes through unchanged.
        self.supports_masking = True
        self.input_spec = keras.layers.InputSpec(min_ndim=2)

    def build(self, input_shape):
        features = checks.known_last_axis(self, input_shape)
        self.out = Linear(features, dtype=self.dtype_policy, name="out")
        self.norm.build(input_shape)
        self.hidden.build(input_shape)
        self.out.build((*input_shape[:-1], self.hidden_units))
        self.input_spec = keras.layers.InputSpec(
            min_ndim=2, axes={-1: features}
        )

    def call(self, inputs, training=None):
        branch = self.out(self.hidden(self.norm(inputs)))
        return inputs + self.dropout_layer(branch, training=training)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {
            **super().get_config(),
            "hidden_units": self.hidden_units,
            "activation": keras.activations.serialize(self.activation),
            "epsilon": self.epsilon,
            "dropout": self.dropout,
        }

    @classmethod
    def examples(cls, **kwargs):
        """Small instances and inputs, for gradcheck and the tests
        (`mylayers.examples`)."""
        return [Example(cls(5, **kwargs), (2, 4))]
