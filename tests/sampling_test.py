"""The sampler's draws follow the distribution its settings say: the
softmax of the logits divided by the temperature, cut to the `top_k`
likeliest, never padding. Checked on a stand-in model with fixed logits,
over many draws."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from models.sampling import generate

LOGITS = np.array([5.0, 0.0, 1.0, 2.0, 0.5, 1.5], np.float32)  # id 0: pad
DRAWS = 3000


def _fixed_model():
    """Every position's next-id logits are `LOGITS`, whatever it reads."""
    ids = keras.Input((None,), dtype="int32")
    scores = keras.layers.Lambda(
        lambda ids: tf.zeros_like(ids, tf.float32)[..., None] + LOGITS,
        output_shape=(None, len(LOGITS)),
    )(ids)
    return keras.Model(ids, scores)


def _frequencies(ids):
    return np.bincount(ids, minlength=len(LOGITS)) / len(ids)


def _expected(temperature, top_k=0):
    logits = LOGITS[1:] / temperature
    if top_k:
        logits = np.where(logits < np.sort(logits)[-top_k], -np.inf, logits)
    p = np.exp(logits - logits.max())
    return np.concatenate([[0.0], p / p.sum()])


@pytest.mark.parametrize(
    "temperature, top_k", [(1.0, 0), (0.5, 0), (2.0, 0), (1.0, 2)]
)
def test_draws_follow_the_tempered_and_cut_softmax(temperature, top_k):
    ids = generate(
        _fixed_model(),
        [1],
        DRAWS,
        temperature=temperature,
        top_k=top_k,
        context_length=4,
    )
    # Padding is never drawn, however likely the model finds it.
    assert ids.min() >= 1
    # A frequency's standard error is at most 0.5 / sqrt(3000) = 0.009:
    # 0.04 is over four of them, and far below the gap between any two of
    # the settings' distributions (> 0.1 somewhere).
    np.testing.assert_allclose(
        _frequencies(ids), _expected(temperature, top_k), atol=0.04
    )
    if top_k:
        assert set(ids.tolist()) == {3, 5}
