"""A pre-norm transformer block built from other `mylayers` layers."""

import keras

from mylayers import checks
from mylayers.causal_self_attention import CausalSelfAttention
from mylayers.examples import PADDING, Example
from mylayers.mlp_block import MLPBlock
from mylayers.rms_norm import RMSNorm
from mylayers.tiled_causal_self_attention import TiledCausalSelfAttention

# `attention=` -> the layer that computes it.
ATTENTIONS = {
    "plain": CausalSelfAttention,
    "tiled": TiledCausalSelfAttention,
}


@keras.saving.register_keras_serializable(package="mylayers")
class TransformerBlock(keras.layers.Layer):
    """`h = x + Dropout(Attention(RMSNorm(x)))`, then `y = MLPBlock(h)`.

    The decoder block of GPT-style models with pre-normalization: each
    branch reads a normalized copy and adds to an untouched residual
    stream. `MLPBlock` is itself the pre-norm residual MLP
    (`h + Dropout(Linear(act(Linear(RMSNorm(h)))))`). Forward only: the
    tape derives the whole backward pass.

    Args:
        num_heads: Attention heads; must divide the input width.
        hidden_units: Width of the MLP's hidden layer (4x the input width
            in GPT-2).
        rotary: Whether attention rotates queries and keys by position.
        dropout: Dropout rate on both branches and on attention weights.
        activation: The MLP's hidden activation.
        epsilon: `RMSNorm`'s epsilon.
        attention: "plain" (`CausalSelfAttention`) or "tiled"
            (`TiledCausalSelfAttention`: memory linear in the length, no
            dropout on attention weights).
        **kwargs: Base layer arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: `(batch, length, features)`.
        mask: Optional boolean `(batch, length)`, False at padding; passed
            to attention and on to the next layer.
        training: Whether dropout is on.

    Input shape:
        `(batch, length, features)`.

    Output shape:
        Same as the input.

    Example:

    >>> block = TransformerBlock(num_heads=2, hidden_units=32)
    >>> block(tf.ones((1, 5, 8))).shape
    TensorShape([1, 5, 8])
    """

    def __init__(
        self,
        num_heads,
        hidden_units,
        rotary=True,
        dropout=0.0,
        activation="gelu",
        epsilon=1e-6,
        attention="plain",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_heads = checks.positive_int(self, "num_heads", num_heads)
        self.hidden_units = checks.positive_int(
            self, "hidden_units", hidden_units
        )
        self.rotary = bool(rotary)
        self.dropout = checks.dropout_rate(self, dropout)
        self.activation = keras.activations.get(activation)
        self.epsilon = epsilon
        checks.require(
            attention in ATTENTIONS,
            self,
            "attention",
            attention,
            " or ".join(map(repr, ATTENTIONS)),
        )
        self.attention_kind = attention
        policy = self.dtype_policy
        self.norm = RMSNorm(epsilon, dtype=policy, name="norm")
        self.attention = ATTENTIONS[attention](
            num_heads, rotary, dropout, dtype=policy, name="attention"
        )
        self.attention_dropout = keras.layers.Dropout(dropout, dtype=policy)
        self.mlp = MLPBlock(
            hidden_units,
            self.activation,
            epsilon,
            dropout,
            dtype=policy,
            name="mlp",
        )
        self.supports_masking = True
        self.input_spec = keras.layers.InputSpec(ndim=3)

    def build(self, input_shape):
        checks.known_last_axis(self, input_shape)
        self.norm.build(input_shape)
        self.attention.build(input_shape)
        self.mlp.build(input_shape)
        self.input_spec = keras.layers.InputSpec(
            ndim=3, axes={-1: input_shape[-1]}
        )

    def call(self, inputs, mask=None, training=None):
        branch = self.attention(self.norm(inputs), mask=mask, training=training)
        hidden = inputs + self.attention_dropout(branch, training=training)
        return self.mlp(hidden, training=training)

    def call_cached(self, inputs, cache, index):
        """`call` at the text's positions `index, ...`, attending over the
        keys and values in `cache` too (`CausalSelfAttention.call_cached`).
        Returns `(outputs, cache)`."""
        branch, cache = self.attention.call_cached(
            self.norm(inputs), cache, index
        )
        return self.mlp(inputs + branch), cache

    def compute_mask(self, inputs, mask=None):
        return mask

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {
            **super().get_config(),
            "num_heads": self.num_heads,
            "hidden_units": self.hidden_units,
            "rotary": self.rotary,
            "dropout": self.dropout,
            "activation": keras.activations.serialize(self.activation),
            "epsilon": self.epsilon,
            "attention": self.attention_kind,
        }

    @classmethod
    def examples(cls, **kwargs):
        """Small instances and inputs, for gradcheck and the tests
        (`mylayers.examples`)."""
        # Order 1: its parts are checked at order 2 on their own, and its
        # order 2 would be the longest check by far (~8 s).
        return [Example(cls(1, 3, **kwargs), (2, 3, 2), PADDING, order=1)]
