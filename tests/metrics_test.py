"""`BitsPerCharacter`: the cross-entropy in bits, masked positions left
out."""

import math

import keras
import numpy as np

import models


def test_bits_per_character_is_the_loss_in_bits():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 5, 7)).astype("float32")
    labels = rng.integers(0, 7, size=(3, 5))
    metric = models.BitsPerCharacter()
    metric.update_state(labels, logits)
    nats = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(
        labels, logits
    )
    np.testing.assert_allclose(
        float(metric.result()), float(nats) / math.log(2), rtol=1e-5
    )


def test_uniform_logits_score_log2_of_the_vocabulary():
    metric = models.BitsPerCharacter()
    metric.update_state(np.zeros((2, 4)), np.zeros((2, 4, 96), "float32"))
    np.testing.assert_allclose(float(metric.result()), math.log2(96), rtol=1e-6)


def test_masked_positions_do_not_count():
    logits = np.zeros((1, 2, 4), "float32")
    logits[0, 1, 0] = 10.0  # position 1 is sure of id 0: ~0 bits
    metric = models.BitsPerCharacter()
    metric.update_state(
        np.zeros((1, 2)), logits, sample_weight=np.array([[1.0, 0.0]])
    )
    np.testing.assert_allclose(float(metric.result()), 2.0, rtol=1e-6)
