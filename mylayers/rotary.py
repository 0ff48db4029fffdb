"""Rotary position embedding (RoPE): a function, as it has no weights."""

import tensorflow as tf


def rotate(x, offset=0, base=10_000.0):
    """Rotates pairs of features of `x` by angles that grow with position.

    Feature pair `(x[i], x[i + d/2])` at position `t` (`offset`, `offset+1`,
    ... along axis 1) turns by angle `t * base^(-2i/d)`. A query at `t` and a
    key at `s` then meet in a dot product that depends on `t - s` only, so
    attention sees relative positions, with no position weights and no
    length limit.

    Args:
        x: `(batch, length, heads, d)`, `d` even.
        offset: The position of `x[:, 0]` (a decoder's cache length).
        base: Sets the slowest rotation's period, in positions.

    Returns:
        `x`'s shape and dtype; the angles are computed in float32.
    """
    depth = x.shape[-1]
    if depth is None or depth % 2:
        raise ValueError(
            "rotate expected an even, known last axis. Received: "
            f"x.shape={x.shape}"
        )
    length = tf.shape(x)[1]
    inverse_frequency = base ** (-tf.range(0, depth, 2, tf.float32) / depth)
    positions = tf.cast(tf.range(length) + offset, tf.float32)
    angles = positions[:, None] * inverse_frequency[None, :]  # (length, d/2)
    cos = tf.cast(tf.cos(angles), x.dtype)[None, :, None, :]
    sin = tf.cast(tf.sin(angles), x.dtype)[None, :, None, :]
    # Halves rather than interleaved pairs (GPT-NeoX's layout): two slices
    # instead of a strided gather; any fixed pairing of features is RoPE.
    first, second = tf.split(x, 2, axis=-1)
    return tf.concat(
        [first * cos - second * sin, first * sin + second * cos], axis=-1
    )
