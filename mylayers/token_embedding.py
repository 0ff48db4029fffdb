"""Token embedding, with learned positions or none (for rotary ones)."""

import keras
import numpy as np
import tensorflow as tf

from mylayers import checks
from mylayers.examples import Example

POSITIONS = ("learned", "none")


@keras.saving.register_keras_serializable(package="mylayers")
class TokenEmbedding(keras.layers.Layer):
    """Token lookup, plus a learned position vector: `y[t] = E[x[t]] + P[t]`.

    With `positions="none"` there is no `P`: a model that rotates queries
    and keys by position (`CausalSelfAttention(rotary=True)`) needs none,
    and then handles sequences of any length.

    The lookup is a gather, so its gradient is a sparse update of the rows
    of `E` the batch used (`tf.IndexedSlices`); the tape derives it.

    With `mask_zero=True`, id 0 is padding: the layer's output carries a
    Keras mask, `x != 0`, that layers with `supports_masking` pass on, and
    that Keras applies to the loss.

    Args:
        vocabulary_size: Positive integer, the number of token ids.
        output_dim: Positive integer, the width of each vector.
        positions: "learned" (add `P`) or "none".
        max_length: Positive integer, the longest sequence: the rows of
            `P`. Required with `positions="learned"`.
        mask_zero: Whether id 0 is padding.
        embeddings_initializer: Initializer for `E` and `P`.
        **kwargs: Base layer arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: Integer token ids.

    Input shape:
        `(batch, length)`.

    Output shape:
        `(batch, length, output_dim)`.

    Example:

    >>> layer = TokenEmbedding(10, 4, positions="learned", max_length=8)
    >>> layer(tf.constant([[1, 2, 0]])).shape
    TensorShape([1, 3, 4])
    >>> [w.name for w in layer.weights]
    ['embeddings', 'positions']
    """

    def __init__(
        self,
        vocabulary_size,
        output_dim,
        positions="learned",
        max_length=None,
        mask_zero=False,
        embeddings_initializer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.vocabulary_size = checks.positive_int(
            self, "vocabulary_size", vocabulary_size
        )
        self.output_dim = checks.positive_int(self, "output_dim", output_dim)
        checks.require(
            positions in POSITIONS,
            self,
            "positions",
            positions,
            f"one of {POSITIONS}",
        )
        if positions == "learned" or max_length is not None:
            checks.positive_int(self, "max_length", max_length)
        self.positions = positions
        self.max_length = max_length
        self.mask_zero = bool(mask_zero)
        # GPT-2's scale: unit-variance rows would dwarf what the blocks add.
        self.embeddings_initializer = keras.initializers.get(
            embeddings_initializer
            or keras.initializers.RandomNormal(stddev=0.02)
        )
        self.supports_masking = True
        self.input_spec = keras.layers.InputSpec(ndim=2)

    def build(self, input_shape):
        self.embeddings = self.add_weight(
            name="embeddings",
            shape=(self.vocabulary_size, self.output_dim),
            initializer=self.embeddings_initializer,
        )
        if self.positions == "learned":
            self.position_embeddings = self.add_weight(
                name="positions",
                shape=(self.max_length, self.output_dim),
                initializer=self.embeddings_initializer,
            )

    def call(self, inputs):
        outputs = tf.gather(self.embeddings, tf.cast(inputs, tf.int32))
        if self.positions == "learned":
            if (inputs.shape[1] or 0) > self.max_length:
                raise ValueError(
                    f"TokenEmbedding '{self.name}' has positions for "
                    f"max_length={self.max_length} tokens. Received: "
                    f"inputs.shape={inputs.shape}"
                )
            length = tf.shape(inputs)[1]
            outputs = outputs + self.position_embeddings[:length]
        return outputs

    def compute_mask(self, inputs, mask=None):
        if not self.mask_zero:
            return None
        # keras.ops, not tf: Functional models call this on symbolic inputs.
        return keras.ops.not_equal(inputs, 0)

    def compute_output_shape(self, input_shape):
        return (*input_shape, self.output_dim)

    def get_config(self):
        return {
            **super().get_config(),
            "vocabulary_size": self.vocabulary_size,
            "output_dim": self.output_dim,
            "positions": self.positions,
            "max_length": self.max_length,
            "mask_zero": self.mask_zero,
            "embeddings_initializer": keras.initializers.serialize(
                self.embeddings_initializer
            ),
        }

    @classmethod
    def examples(cls, **kwargs):
        """Small instances and inputs, for gradcheck and the tests
        (`mylayers.examples`)."""
        ids = np.array([[1, 2, 0], [4, 3, 1]])
        return [Example(cls(5, 3, max_length=3, **kwargs), ids)]
