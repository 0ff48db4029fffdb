"""Causal self-attention in tiles, with a backward pass that recomputes."""

import functools

import keras
import tensorflow as tf

from mylayers import checks
from mylayers.causal_self_attention import CausalSelfAttention
from mylayers.examples import PADDING, Example

# Where a key is not allowed, as in `CausalSelfAttention`: a row with no
# allowed key is then uniform over the real keys.
_MASKED = -1e9


@keras.saving.register_keras_serializable(package="mylayers")
class TiledCausalSelfAttention(CausalSelfAttention):
    """`CausalSelfAttention` whose memory grows linearly with the length.

    The same function, `softmax(q k^T / sqrt(d) + M) v` per head, computed
    over `tile_size` keys at a time with a running maximum and sum (the
    online softmax of FlashAttention), so the `length x length` weights
    never exist at once: the forward pass keeps only the output and each
    query's log-sum-exp `log sum_k exp(s_qk)` (as its running maximum
    and sum), and the backward pass, a
    custom gradient, recomputes each tile's weights from them. Plain
    autodiff would store every tile's weights for the backward pass, which
    is the memory this layer exists to save (docs/custom_gradients.md).

    Padding masks, rotary positions and the projections are
    `CausalSelfAttention`'s; there is no dropout on the attention weights
    (they are never all there to drop), and `call_cached` (generation)
    attends in one piece, as inference keeps no weights for a backward
    pass.

    Args:
        num_heads: Positive integer; must divide the input width.
        rotary: Whether to rotate queries and keys by position.
        dropout: Must be 0.
        use_bias: Whether the projections add biases.
        kernel_initializer: Initializer for `Wqkv` and `Wo`.
        tile_size: Keys per tile, a positive integer: the memory of the
            scores is `length x tile_size` per head.
        **kwargs: Base layer arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: `(batch, length, features)`.
        mask: Optional boolean `(batch, length)`, False at padding.
        training: Accepted for `CausalSelfAttention`'s signature.

    Input shape:
        `(batch, length, features)`.

    Output shape:
        Same as the input.

    Example:

    >>> tiled = TiledCausalSelfAttention(num_heads=2, tile_size=2)
    >>> plain = CausalSelfAttention(num_heads=2)
    >>> x = tf.random.normal((1, 5, 8), seed=1)
    >>> _ = tiled(x), plain(x)
    >>> plain.set_weights(tiled.get_weights())
    >>> bool(tf.reduce_max(tf.abs(tiled(x) - plain(x))) < 1e-6)
    True
    """

    def __init__(
        self,
        num_heads,
        rotary=True,
        dropout=0.0,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        tile_size=128,
        **kwargs,
    ):
        checks.require(
            dropout == 0,
            self,
            "dropout",
            dropout,
            "0 (tiled attention never holds all its weights to drop)",
        )
        super().__init__(
            num_heads, rotary, dropout, use_bias, kernel_initializer, **kwargs
        )
        self.tile_size = checks.positive_int(self, "tile_size", tile_size)

    def _attend(self, query, key, value, mask, training):
        # At least float32, as `CausalSelfAttention`'s scores.
        dtype = tf.float32 if query.dtype.size < 4 else query.dtype
        if mask is None:
            mask = tf.ones(tf.shape(query)[::2], tf.bool)  # (batch, length)
        attended = _tiled_attention(self.tile_size)(
            tf.cast(query, dtype),
            tf.cast(key, dtype),
            tf.cast(value, dtype),
            tf.cast(mask, tf.bool),
        )
        return tf.cast(attended, query.dtype)

    def get_config(self):
        return {**super().get_config(), "tile_size": self.tile_size}

    @classmethod
    def examples(cls, **kwargs):
        """Small instances and inputs, for gradcheck and the tests
        (`mylayers.examples`)."""
        return [Example(cls(1, tile_size=2, **kwargs), (2, 3, 2), PADDING, 1)]


@functools.lru_cache(maxsize=None)
def _tiled_attention(tile):
    """`attention(query, key, value, key_mask)` over `tile` keys at a time;
    call it positionally (keywords bypass the custom gradient)."""

    @tf.custom_gradient
    def attention(query, key, value, key_mask):
        """Autodiff is not what we want here: through the forward loop it
        would keep every tile's weights, `length x length` in all. This
        backward pass recomputes them from the output and the log-sum-exp,
        one tile at a time."""
        tiles = _Tiles(query, key, value, key_mask, tile)
        output, maximum, total = tiles.forward()

        def grad(d_output):
            return (*tiles.backward(output, maximum, total, d_output), None)

        return output, grad

    return attention


class _Tiles:
    """Queries `(batch, heads, length, depth)` against keys and values cut
    into tiles, the last one padded with keys no query may see."""

    def __init__(self, query, key, value, key_mask, tile):
        self.query = query
        self.length = tf.shape(key)[2]
        self.count = (self.length + tile - 1) // tile
        pad = self.count * tile - self.length
        self.tile = tile
        self.scale = tf.cast(query.shape[-1] ** -0.5, query.dtype)
        self.keys = self._cut(key, pad)
        self.values = self._cut(value, pad)
        # (count, batch, 1, 1, tile): True at real, unpadded keys.
        mask = tf.pad(key_mask, [[0, 0], [0, pad]])
        mask = tf.reshape(mask, [-1, self.count, tile])
        self.key_mask = tf.transpose(mask, [1, 0, 2])[:, :, None, None, :]

    def _cut(self, x, pad):
        """`(batch, heads, length, d)` -> `(count, batch, heads, tile, d)`."""
        x = tf.pad(x, [[0, 0], [0, 0], [0, pad], [0, 0]])
        shape = tf.shape(x)
        x = tf.reshape(x, [shape[0], shape[1], self.count, self.tile, -1])
        return tf.transpose(x, [2, 0, 1, 3, 4])

    def scores(self, j):
        """Tile `j`'s scores `(batch, heads, length, tile)` and where they
        are allowed. Padded keys get -inf, so a row whose real keys are
        all masked stays uniform over those, as in the plain layer."""
        scores = tf.matmul(self.query, self.keys[j], transpose_b=True)
        scores = scores * self.scale
        keys = j * self.tile + tf.range(self.tile)
        causal = keys[None, :] <= tf.range(self.length)[:, None]
        allowed = causal[None, None] & self.key_mask[j]
        scores = tf.where(allowed, scores, _MASKED)
        scores = tf.where(keys < self.length, scores, -float("inf"))
        return scores, allowed

    def forward(self):
        """The online softmax: per tile, rescale what was summed so far to
        the new running maximum, then add the tile's share."""
        rows = tf.shape(self.query)[:3]
        row_shape = tf.concat([rows, [1]], 0)
        maximum = tf.fill(row_shape, tf.constant(-1e30, self.query.dtype))
        total = tf.zeros(row_shape, self.query.dtype)
        output = tf.zeros_like(self.query)

        def step(j, maximum, total, output):
            scores, _ = self.scores(j)
            new_maximum = tf.maximum(
                maximum, tf.reduce_max(scores, -1, keepdims=True)
            )
            weights = tf.exp(scores - new_maximum)
            rescale = tf.exp(maximum - new_maximum)
            total = total * rescale + tf.reduce_sum(weights, -1, keepdims=True)
            output = output * rescale + tf.matmul(weights, self.values[j])
            return j + 1, new_maximum, total, output

        # One tile at a time: by default a while loop runs up to 10
        # iterations at once, and each tile's scores depend on no carried
        # value, so up to 10 tiles' scores would be alive together (the
        # whole `length x length` at 1024 keys in tiles of 128).
        _, maximum, total, output = tf.while_loop(
            lambda j, *_: j < self.count,
            step,
            (tf.constant(0), maximum, total, output),
            parallel_iterations=1,
        )
        # The log-sum-exp, `maximum + log(total)`, kept in its two parts:
        # in a row with no allowed key, -1e9 + log(n) rounds to -1e9.
        return output / total, maximum, total

    def backward(self, output, maximum, total, d_output):
        """`dq, dk, dv` from each tile's weights, recomputed from the
        row's log-sum-exp as `p = exp(s - maximum) / total`:
        `dv = p^T do`, `ds = p (do v^T - rowsum(do * o))`, `dq = ds k`,
        `dk = ds^T q` (both times the scale)."""
        rowsum = tf.reduce_sum(d_output * output, -1, keepdims=True)
        d_query = tf.zeros_like(self.query)

        def step(j, d_query, d_keys, d_values):
            scores, allowed = self.scores(j)
            weights = tf.exp(scores - maximum) / total
            d_values = d_values.write(
                j, tf.matmul(weights, d_output, transpose_a=True)
            )
            d_weights = tf.matmul(d_output, self.values[j], transpose_b=True)
            # A masked score is a constant: no gradient reaches q or k.
            d_scores = tf.where(allowed, weights * (d_weights - rowsum), 0.0)
            d_scores = d_scores * self.scale
            d_query = d_query + tf.matmul(d_scores, self.keys[j])
            d_keys = d_keys.write(
                j, tf.matmul(d_scores, self.query, transpose_a=True)
            )
            return j + 1, d_query, d_keys, d_values

        _, d_query, d_keys, d_values = tf.while_loop(
            lambda j, *_: j < self.count,
            step,
            (tf.constant(0), d_query, self._array(), self._array()),
            parallel_iterations=1,  # one tile at a time, as forward
        )
        return d_query, self._join(d_keys), self._join(d_values)

    def _array(self):
        # One each: an eager TensorArray is written in place.
        return tf.TensorArray(self.query.dtype, size=self.count)

    def _join(self, tiles):
        """The tiles' `(batch, heads, tile, d)` back to `(batch, heads,
        length, d)`, padding dropped."""
        x = tiles.stack()  # (count, batch, heads, tile, d)
        x = tf.transpose(x, [1, 2, 0, 3, 4])
        shape = tf.shape(x)
        x = tf.reshape(x, [shape[0], shape[1], -1, shape[4]])
        return x[:, :, : self.length]
