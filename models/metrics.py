"""Metrics the trainer adds for language models."""

import math

import keras


@keras.saving.register_keras_serializable(package="models")
class BitsPerCharacter(keras.metrics.MeanMetricWrapper):
    """Mean cross-entropy of the next character, in bits: `loss / ln 2`.

    A model that predicts each of the V characters that occur as equally
    likely scores log2(V) bits (python_docs: log2(96) = 6.58); a perfect
    one, 0. Masked positions (padding) do not count.

    Args:
        name: The metric's name in logs.
        dtype: The metric's dtype.
    """

    def __init__(self, name="bpc", dtype=None):
        super().__init__(_bits, name=name, dtype=dtype)

    def get_config(self):
        return {"name": self.name, "dtype": self.dtype}


def _bits(y_true, y_pred):
    nats = keras.losses.sparse_categorical_crossentropy(
        y_true, y_pred, from_logits=True
    )
    return nats / math.log(2.0)
