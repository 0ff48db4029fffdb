"""Causal multi-head self-attention that honours Keras padding masks."""

import keras
import tensorflow as tf

from mylayers import checks, rotary
from mylayers.examples import PADDING, Example


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
        self.qkv_bias = self.output_bias = None
        if self.use_bias:
            self.qkv_bias = self.add_weight(
                name="qkv_bias", shape=(3 * features,), initializer="zeros"
            )
            self.output_bias = self.add_weight(
                name="output_bias", shape=(features,), initializer="zeros"
            )
        self.input_spec = keras.layers.InputSpec(ndim=3, axes={-1: features})

    def call(self, inputs, mask=None, training=None):
        query, key, value = self._heads(inputs)
        attended = self._attend(query, key, value, mask, training)
        return self._merge(attended, inputs)

    def call_cached(self, inputs, cache, index):
        """Attention of `inputs`, the text's positions `index, index + 1,
        ...`, over them and the keys and values of the positions before,
        kept in `cache`: one step of generation, with no recomputation of
        the past. Inference only (no dropout, no padding mask).

        Args:
            inputs: `(batch, n, features)`.
            cache: `(2, batch, heads, length, depth)`, the keys and values
                of every position the cache can hold (rotated, if rotary);
                those at `index` and after are overwritten. None: a new
                cache of `n` positions (`index` must be 0).
            index: Scalar int, the position of `inputs[:, 0]`.

        Returns:
            `(outputs, cache)`: outputs as `call`'s, and the cache with
            `inputs`' keys and values written at their positions.
        """
        query, key, value = self._heads(inputs, offset=index)
        if cache is None:
            keys, values = key, value
        else:
            # The new positions replace the old ones there, spread to the
            # cache's length by a gather: fixed shapes and no padding by
            # a tensor, so a generation loop compiles (XLA included).
            n = tf.shape(key)[2]
            positions = tf.range(tf.shape(cache)[3])
            written = (positions >= index) & (positions < index + n)
            written = written[None, None, :, None]
            spread = tf.clip_by_value(positions - index, 0, n - 1)
            keys = tf.where(written, tf.gather(key, spread, axis=2), cache[0])
            values = tf.where(
                written, tf.gather(value, spread, axis=2), cache[1]
            )
        # Query `index + i` sees keys at `index + i` and before; later
        # places hold nothing yet, or an older window's keys.
        queries = index + tf.range(tf.shape(query)[2])
        allowed = tf.range(tf.shape(keys)[2])[None, :] <= queries[:, None]
        attended = self._weighted_sum(
            query, keys, values, allowed[None, None], training=False
        )
        return self._merge(attended, inputs), tf.stack([keys, values])

    def _heads(self, inputs, offset=0):
        """Queries, keys and values, `(batch, heads, length, depth)` each,
        rotated as the positions `offset, offset + 1, ...` if rotary."""
        batch, length = tf.shape(inputs)[0], tf.shape(inputs)[1]
        # The projections are 2-D MatMuls over all positions at once, and
        # the heads go first, so that both attention products are plain
        # batched MatMuls: on CPU that is faster than einsum or a broadcast
        # MatMul, for the same function (benchmarks/RESULTS.md).
        qkv = self._project(inputs, self.qkv_kernel, self.qkv_bias)
        qkv = tf.reshape(qkv, [batch, length, 3, self.num_heads, self.depth])
        qkv = tf.transpose(qkv, [2, 0, 3, 1, 4])  # (3, batch, h, length, d)
        query, key, value = tf.unstack(qkv)
        if self.rotary:
            query = rotary.rotate(query, offset, sequence_axis=2)
            key = rotary.rotate(key, offset, sequence_axis=2)
        return query, key, value

    def _attend(self, query, key, value, mask, training):
        """The heads' attended values, `(batch, heads, length, depth)`."""
        allowed = self._allowed(tf.shape(query)[2], mask)
        return self._weighted_sum(query, key, value, allowed, training)

    def _weighted_sum(self, query, key, value, allowed, training):
        """`softmax(q k^T / sqrt(d) + M) v`, `M` large and negative where
        `allowed` (broadcast to `(batch, heads, query, key)`) is False."""
        scores = tf.matmul(query, key, transpose_b=True)  # (b, h, q, k)
        # At least float32, as half precision lacks the softmax's range;
        # float64 stays float64, or its gradients get float32's rounding.
        score_dtype = tf.float32 if query.dtype.size < 4 else query.dtype
        scores = tf.cast(scores, score_dtype) * self.depth**-0.5
        # Replaced, not added to: a row with no key to look at (the start
        # of a left-padded row) is then exactly uniform, in any dtype.
        scores = tf.where(allowed, scores, -1e9)
        weights = tf.nn.softmax(scores, axis=-1)
        weights = self.dropout_layer(
            tf.cast(weights, query.dtype), training=training
        )
        return tf.matmul(weights, value)  # (batch, h, query, d)

    def _merge(self, attended, inputs):
        """The heads side by side, mapped back: `o Wo^T + bo`."""
        attended = tf.transpose(attended, [0, 2, 1, 3])
        attended = tf.reshape(attended, [-1, self.num_heads * self.depth])
        outputs = self._project(attended, self.output_kernel, self.output_bias)
        return tf.reshape(outputs, tf.shape(inputs))

    def _project(self, inputs, kernel, bias):
        """`x W^T + b` as one 2-D MatMul over every position."""
        flat = tf.reshape(inputs, [-1, kernel.shape[1]])
        outputs = tf.matmul(flat, kernel, transpose_b=True)
        if bias is not None:
            outputs = tf.nn.bias_add(outputs, bias)
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

    @classmethod
    def examples(cls, **kwargs):
        """Small instances and inputs, for gradcheck and the tests
        (`mylayers.examples`)."""
        # Order 2 on one head with rotary positions and padding, the most
        # that happens in it; order 1 on two heads.
        return [
            Example(cls(2, rotary=False, **kwargs), (2, 3, 2), order=1),
            Example(cls(1, **kwargs), (2, 3, 2), mask=PADDING),
        ]
