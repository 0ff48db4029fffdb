"""Rotary position embedding (RoPE): a function, as it has no weights."""

import tensorflow as tf


def rotate(x, offset=0, base=10_000.0, sequence_axis=1):
    """Rotates pairs of features of `x` by angles that grow with position.

    Feature pair `(x[i], x[i + d/2])` at position `t` (`offset`, `offset+1`,
    ... along `sequence_axis`) turns by angle `t * base^(-2i/d)`. A query at
    `t` and a key at `s` then meet in a dot product that depends on `t - s`
    only, so attention sees relative positions, with no position weights
    and no length limit.

    Args:
        x: `(batch, length, heads, d)`, `d` even; or any rank with the
            positions along `sequence_axis` and the features last.
        offset: The position of the first element along `sequence_axis`
            (a decoder's cache length).
        base: Sets the slowest rotation's period, in positions.
        sequence_axis: The axis of positions: 1 for `(batch, length,
            heads, d)`, 2 for heads first, `(batch, heads, length, d)`.

    Returns:
        `x`'s shape and dtype; the angles are computed in float32.
    """
    depth = x.shape[-1]
    if depth is None or depth % 2:
        raise ValueError(
            "rotate expected an even, known last axis. Received: "
            f"x.shape={x.shape}"
        )
    rank = x.shape.rank
    if (
        rank is None
        or not -rank <= sequence_axis < rank
        or sequence_axis % rank == rank - 1
    ):
        raise ValueError(
            "rotate expected a sequence_axis before the last axis. "
            f"Received: sequence_axis={sequence_axis}, x.shape={x.shape}"
        )
    sequence_axis %= rank
    length = tf.shape(x)[sequence_axis]
    inverse_frequency = base ** (-tf.range(0, depth, 2, tf.float32) / depth)
    positions = tf.cast(tf.range(length) + offset, tf.float32)
    angles = positions[:, None] * inverse_frequency[None, :]  # (length, d/2)
    # (length, d/2) placed on (sequence_axis, last), broadcast elsewhere.
    shape = [1] * rank
    shape[sequence_axis], shape[-1] = length, depth // 2
    cos = tf.reshape(tf.cast(tf.cos(angles), x.dtype), shape)
    sin = tf.reshape(tf.cast(tf.sin(angles), x.dtype), shape)
    # Halves rather than interleaved pairs (GPT-NeoX's layout): two slices
    # instead of a strided gather; any fixed pairing of features is RoPE.
    first, second = tf.split(x, 2, axis=-1)
    return tf.concat(
        [first * cos - second * sin, first * sin + second * cos], axis=-1
    )
