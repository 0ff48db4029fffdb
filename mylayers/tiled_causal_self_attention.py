"""Causal self-attention in tiles, with a backward pass that recomputes."""

import functools

import keras
import tensorflow as tf

from mylayers import checks
from mylayers.causal_self_attention import CausalSelfAttention
from mylayers.examples import PADDING, Example

# Added to a score where the key is not allowed: its weight is then exactly
# 0 in any row that sees some key. (`CausalSelfAttention` puts -1e9 in
# place of such scores; a row that sees no key is handled apart here.)
_MASKED = -1e9


@keras.saving.register_keras_serializable(package="mylayers")
class TiledCausalSelfAttention(CausalSelfAttention):
    """`CausalSelfAttention` whose memory grows linearly with the length.

    The same function, `softmax(q k^T / sqrt(d) + M) v` per head, computed
    `tile_size` queries against `tile_size` keys at a time with a running
    maximum and sum (the online softmax of FlashAttention), so the `length
    x length` weights never exist at once: the forward pass keeps only the
    output and each query's log-sum-exp `log sum_k exp(s_qk)`, and the
    backward pass, a custom gradient, recomputes each tile's weights from
    them. Plain autodiff would store every tile's weights for the backward
    pass, which is the memory this layer exists to save
    (docs/custom_gradients.md). A query tile skips the key tiles wholly in
    its future: about half the work of the plain layer, which computes
    every score and masks half of them.

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
        tile_size: Queries and keys per tile, a positive integer: the
            scores live `tile_size x tile_size` at a time per head.
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
    """`attention(query, key, value, key_mask)` in tiles of `tile`
    positions; call it positionally (keywords bypass the custom
    gradient)."""

    @tf.custom_gradient
    def attention(query, key, value, key_mask):
        """Autodiff is not what we want here: through the forward loop it
        would keep every tile's weights, `length x length` in all. This
        backward pass recomputes them from the output and the log-sum-exp,
        one tile at a time."""
        tiles = _Tiles(query, key, value, key_mask, tile)
        outputs, log_sums = tiles.forward()

        def grad(d_output):
            return (*tiles.backward(outputs, log_sums, d_output), None)

        return tiles.join(outputs), grad

    return attention


def _loop(condition, body, state):
    """`tf.while_loop`, one iteration at a time: by default it runs up to
    10 at once, and a tile's scores depend on no value the loop carries,
    so up to 10 tiles' scores would be alive together."""
    return tf.while_loop(condition, body, state, parallel_iterations=1)


class _Tiles:
    """Queries, keys and values `(batch, heads, length, depth)` cut into
    tiles of `tile` positions, the last one padded. Query tile `i` looks at
    key tiles `0..i` only: every later key is in its future, so causal
    attention needs about half the tile pairs, and half the work."""

    def __init__(self, query, key, value, key_mask, tile):
        self.length = tf.shape(key)[2]
        self.count = (self.length + tile - 1) // tile
        self.pad = self.count * tile - self.length
        self.tile = tile
        # `q k^T / sqrt(d)` as `(q / sqrt(d)) k^T`: scaled once, not per
        # tile pair.
        self.scale = query.shape[-1] ** -0.5
        # (count, batch, heads, tile, depth) each.
        self.queries = self._cut(query * self.scale)
        self.keys, self.values = self._cut(key), self._cut(value)
        # Added to the scores where a key may not be seen: at padding
        # (`(count, batch, 1, 1, tile)`) and, in a query's own tile, in
        # its future (`(tile, tile)`). The padding of the last tile is in
        # every real query's future.
        bias = tf.where(key_mask, 0.0, _MASKED)[:, None, :, None]
        self.key_bias = tf.linalg.matrix_transpose(
            self._cut(tf.cast(bias, query.dtype))
        )
        past = tf.linalg.band_part(tf.ones([tile, tile], query.dtype), -1, 0)
        self.future_bias = (1 - past) * _MASKED
        # A query with no key to look at (the start of a left-padded row)
        # is uniform over every key in the plain layer, whose scores are
        # all -1e9 there: its output is the mean of the values.
        seen = tf.cumsum(tf.cast(key_mask, tf.int32), axis=1) > 0
        self.empty_rows = tf.logical_not(seen)[:, None, :, None]
        self.empty = self._cut(self.empty_rows)  # (count, batch, 1, tile, 1)
        self.mean_value = tf.reduce_mean(value, axis=2, keepdims=True)

    def _cut(self, x):
        """`(batch, heads, length, d)` -> `(count, batch, heads, tile, d)`,
        padded with zeros (False)."""
        x = tf.pad(x, [[0, 0], [0, 0], [0, self.pad], [0, 0]])
        shape = tf.shape(x)
        x = tf.reshape(x, [shape[0], shape[1], self.count, self.tile, -1])
        return tf.transpose(x, [2, 0, 1, 3, 4])

    def join(self, tiles):
        """`_cut` undone: padding dropped."""
        x = tf.transpose(tiles, [1, 2, 0, 3, 4])
        shape = tf.shape(x)
        x = tf.reshape(x, [shape[0], shape[1], -1, shape[4]])
        return x[:, :, : self.length]

    def scores(self, i, j):
        """Scores of query tile `i` against key tile `j`, `(batch, heads,
        tile, tile)`, -1e9 lower where a key may not be seen: its weight
        is then exactly 0 in any row that sees some key."""
        scores = tf.matmul(self.queries[i], self.keys[j], transpose_b=True)
        own_tile = tf.cast(tf.equal(i, j), scores.dtype)
        return scores + self.key_bias[j] + own_tile * self.future_bias

    def forward(self):
        """The online softmax: per key tile, rescale what was summed so far
        to the new running maximum, then add the tile's share. Returns the
        output and log-sum-exp of each query tile, stacked."""

        def query_tile(i, outputs, log_sums):
            def key_tile(j, maximum, total, output):
                scores = self.scores(i, j)
                new_maximum = tf.maximum(
                    maximum, tf.reduce_max(scores, -1, keepdims=True)
                )
                weights = tf.exp(scores - new_maximum)
                rescale = tf.exp(maximum - new_maximum)
                total = total * rescale + tf.reduce_sum(
                    weights, -1, keepdims=True
                )
                output = output * rescale + tf.matmul(weights, self.values[j])
                return j + 1, new_maximum, total, output

            output = tf.zeros_like(self.queries[0])
            total = tf.zeros_like(output[..., :1])
            _, maximum, total, output = _loop(
                lambda j, *_: j <= i,
                key_tile,
                (0, total - 1e30, total, output),
            )
            empty = self.empty[i]
            output = tf.where(empty, self.mean_value, output / total)
            # An empty row's weights are all equal, and not the tiles':
            # +inf makes those the backward pass recomputes 0.
            log_sum = maximum + tf.math.log(total)
            infinity = tf.cast(float("inf"), log_sum.dtype)
            log_sum = tf.where(empty, infinity, log_sum)
            return i + 1, outputs.write(i, output), log_sums.write(i, log_sum)

        _, outputs, log_sums = _loop(
            lambda i, *_: i < self.count,
            query_tile,
            (0, self._array(), self._array()),
        )
        return outputs.stack(), log_sums.stack()

    def backward(self, outputs, log_sums, d_output):
        """`dq, dk, dv` from each tile pair's weights, recomputed from the
        query row's log-sum-exp as `p = exp(s - lse)`: `dv = p^T do`,
        `ds = p (do v^T - rowsum(do * o))`, `dq = ds k`, `dk = ds^T q`
        (both times the scale). A masked score's `p` is 0, so it passes
        no gradient on, as befits a constant. Key tile `j` sums over query
        tiles `j..count-1`."""
        d_outputs = self._cut(d_output)
        rowsums = tf.reduce_sum(d_outputs * outputs, -1, keepdims=True)

        def key_tile(j, d_queries, d_keys, d_values):
            def query_tile(i, d_queries, d_key, d_value):
                weights = tf.exp(self.scores(i, j) - log_sums[i])
                d_value += tf.matmul(weights, d_outputs[i], transpose_a=True)
                d_weights = tf.matmul(
                    d_outputs[i], self.values[j], transpose_b=True
                )
                d_scores = weights * (d_weights - rowsums[i])
                d_queries = tf.tensor_scatter_nd_add(
                    d_queries,
                    [[i]],
                    tf.matmul(d_scores, self.keys[j])[None],
                )
                # The queries are scaled already.
                d_key += tf.matmul(d_scores, self.queries[i], transpose_a=True)
                return i + 1, d_queries, d_key, d_value

            zeros = tf.zeros_like(self.keys[0])
            _, d_queries, d_key, d_value = _loop(
                lambda i, *_: i < self.count,
                query_tile,
                (j, d_queries, zeros, zeros),
            )
            return (
                j + 1,
                d_queries,
                d_keys.write(j, d_key),
                d_values.write(j, d_value),
            )

        _, d_queries, d_keys, d_values = _loop(
            lambda j, *_: j < self.count,
            key_tile,
            (0, tf.zeros_like(self.queries), self._array(), self._array()),
        )
        # Each empty row gave every one of the `length` values 1/length
        # of its output's gradient.
        uniform = tf.reduce_sum(
            tf.where(self.empty_rows, d_output, 0.0), 2, keepdims=True
        ) / tf.cast(self.length, d_output.dtype)
        return (
            self.join(d_queries) * self.scale,
            self.join(d_keys.stack()),
            self.join(d_values.stack()) + uniform,
        )

    def _array(self):
        # One each: an eager TensorArray is written in place.
        return tf.TensorArray(self.queries.dtype, size=self.count)
