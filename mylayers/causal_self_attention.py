"""Causal multi-head self-attention that honours Keras padding masks."""

import keras
import tensorflow as tf

from mylayers import checks, rotary


@keras.saving.register_keras_serializable(package="mylayers")
class CausalSelfAttention(keras.layers.Layer):
    """Multi-head self-attention where position `t` sees positions `<= t`.

    `q, k, v = x Wqkv^T + bqkv` (one matmul for all three), split into
    `num_heads` heads of `d = features / num_heads`; per head
    `softmax(q k^T / sqrt(d) + M) v`, where `M` is `-inf` above the diagonal
    (the future) and at padded keys; the heads are concatenated and mapped
    back, `y = o Wo^T + bo`. Only the forward pass is written: the tape
    derives the backward pass through softmax and both matmuls.

    Padding arrives as a Keras mask (from `TokenEmbedding(mask_zero=True)`,
    or `mask=`): padded keys get no attention. A query with no visible key
    at all (a padded position at the start of a left-padded row) attends
    uniformly instead of producing NaN; its output is padding, masked
    downstream. The mask passes through to the next layer.

    Under mixed precision the scores and softmax are computed in float32;
    in float64, in float64.

    Args:
        num_heads: Positive integer; must divide the input width.
        rotary: Whether to rotate queries and keys by position
            (`mylayers.rotary.rotate`): relative positions, no length limit.
        dropout: Dropout rate on the attention weights, in [0, 1).
        use_bias: Whether the projections add biases.
        kernel_initializer: Initializer for `Wqkv` and `Wo`.
        **kwargs: Base layer arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: `(batch, length, features)`.
        mask: Optional boolean `(batch, length)`, False at padding.
        training: Whether dropout is on.

    Input shape:
        `(batch, length, features)`.

    Output shape:
        Same as the input.

    Example:

    >>> layer = CausalSelfAttention(num_heads=2)
    >>> layer(tf.ones((1, 5, 8))).shape
    TensorShape([1, 5, 8])
    """

    def __init__(
        self,
        num_heads,
        rotary=True,
        dropout=0.0,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_heads = checks.positive_int(self, "num_heads", num_heads)
        self.rotary = bool(rotary)
        self.dropout = checks.dropout_rate(self, dropout)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.dropout_layer = keras.layers.Dropout(
            dropout, dtype=self.dtype_policy
        )
        self.supports_masking = True
        self.input_spec = keras.layers.InputSpec(ndim=3)

    def build(self, input_shape):
        features = checks.known_last_axis(self, input_shape)
        depth, remainder = divmod(features, self.num_heads)
        if remainder or (self.rotary and depth % 2):
            need = "an even multiple" if self.rotary else "a multiple"
            raise ValueError(
                f"CausalSelfAttention needs {need} of num_heads="
                f"{self.num_heads} as its input width. Received: "
                f"input_shape={input_shape}"
            )
        self.depth = depth
        # Stored (out, in), as `Linear`'s kernel: the layout of `x W^T`.
        self.qkv_kernel = self.add_weight(
            name="qkv_kernel",
            shape=(3 * features, features),
            initializer=self.kernel_initializer,
        )
        self.output_kernel = self.add_weight(
            name="output_kernel",
            shape=(features, features),
            initializer=self.kernel_initializer,
        )
        if self.use_bias:
            self.qkv_bias = self.add_weight(
                name="qkv_bias", shape=(3 * features,), initializer="zeros"
            )
            self.output_bias = self.add_weight(
                name="output_bias", shape=(features,), initializer="zeros"
            )
        self.input_spec = keras.layers.InputSpec(ndim=3, axes={-1: features})

    def call(self, inputs, mask=None, training=None):
        batch, length = tf.shape(inputs)[0], tf.shape(inputs)[1]
        qkv = tf.matmul(inputs, self.qkv_kernel, transpose_b=True)
        if self.use_bias:
            qkv = qkv + self.qkv_bias
        qkv = tf.reshape(qkv, [batch, length, 3, self.num_heads, self.depth])
        query, key, value = tf.unstack(qkv, axis=2)  # (batch, length, h, d)
        if self.rotary:
            query, key = rotary.rotate(query), rotary.rotate(key)
        scores = tf.einsum("bqhd,bkhd->bhqk", query, key)
        # At least float32, as half precision lacks the softmax's range;
        # float64 stays float64, or its gradients get float32's rounding.
        score_dtype = tf.float32 if inputs.dtype.size < 4 else inputs.dtype
        scores = tf.cast(scores, score_dtype) * self.depth**-0.5
        # Replaced, not added to: a row with no key to look at (the start
        # of a left-padded row) is then exactly uniform, in any dtype.
        scores = tf.where(self._allowed(length, mask), scores, -1e9)
        weights = tf.nn.softmax(scores, axis=-1)
        weights = self.dropout_layer(
            tf.cast(weights, inputs.dtype), training=training
        )
        attended = tf.einsum("bhqk,bkhd->bqhd", weights, value)
        attended = tf.reshape(attended, tf.shape(inputs))
        outputs = tf.matmul(attended, self.output_kernel, transpose_b=True)
        if self.use_bias:
            outputs = outputs + self.output_bias
        return outputs

    def _allowed(self, length, mask):
        """Where a query may look: keys at or before it, and not padding.
        Elsewhere the scores become a large negative number, not -inf, so
        that a row with nothing to look at gives no NaN."""
        allowed = tf.linalg.band_part(tf.ones([length, length]), -1, 0) > 0
        allowed = allowed[None, None]  # (1, 1, query, key)
        if mask is not None:
            keys = tf.cast(mask, tf.bool)[:, None, None, :]
            allowed = tf.logical_and(allowed, keys)
        return allowed

    def compute_mask(self, inputs, mask=None):
        return mask

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {
            **super().get_config(),
            "num_heads": self.num_heads,
            "rotary": self.rotary,
            "dropout": self.dropout,
            "use_bias": self.use_bias,
            "kernel_initializer": keras.initializers.serialize(
                self.kernel_initializer
            ),
        }
