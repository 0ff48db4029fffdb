"""Tests for optimizers and learning-rate schedules from config values."""

import keras
import numpy as np
import pytest

from template_trainer import optimizers


def test_constant():
    assert optimizers.create_schedule("constant", 0.1, 100, 0, (), 0.1) == 0.1


def test_warmup_cosine_values():
    schedule = optimizers.create_schedule(
        "warmup_cosine", 1.0, 110, 10, (), 0.1
    )
    np.testing.assert_allclose(float(schedule(0)), 0.0, atol=1e-7)
    np.testing.assert_allclose(float(schedule(5)), 0.5, rtol=1e-6)
    np.testing.assert_allclose(float(schedule(10)), 1.0, rtol=1e-6)
    # Halfway through the cosine part: (1 + cos(pi/2)) / 2 = 0.5.
    np.testing.assert_allclose(float(schedule(60)), 0.5, rtol=1e-5)
    np.testing.assert_allclose(float(schedule(110)), 0.0, atol=1e-6)


def test_piecewise_values():
    schedule = optimizers.create_schedule("piecewise", 1.0, 0, 0, (10, 20), 0.1)
    np.testing.assert_allclose(
        [float(schedule(s)) for s in (0, 10, 11, 20, 21)],
        [1.0, 1.0, 0.1, 0.1, 0.01],
        rtol=1e-6,
    )


def test_optimizers_are_keras_native():
    sgd = optimizers.create_optimizer("sgd", 0.1, 0.9, True, 0.0)
    assert isinstance(sgd, keras.optimizers.SGD)
    assert sgd.momentum == 0.9 and sgd.nesterov
    adam = optimizers.create_optimizer("adam", 0.1, 0.9, False, 0.0)
    assert type(adam) is keras.optimizers.Adam
    adamw = optimizers.create_optimizer("adamw", 0.1, 0.9, False, 0.05)
    assert isinstance(adamw, keras.optimizers.AdamW)
    assert adamw.weight_decay == 0.05


@pytest.mark.parametrize("name", ["lion", ""])
def test_unknown_names(name):
    with pytest.raises(ValueError, match="expected one of"):
        optimizers.create_optimizer(name, 0.1, 0.0, False, 0.0)
    with pytest.raises(ValueError, match="expected one of"):
        optimizers.create_schedule(name, 0.1, 10, 0, (), 0.1)
