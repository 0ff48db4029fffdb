"""gradcheck fails on gradients that are nearly right, not only on sign
flips and factors of 2: a 1% error in float32 and float64, a 0.1% error
in float64; and it compares the forward-over-reverse Hessian-vector
product with finite differences."""

import numpy as np
import pytest
import tensorflow as tf

import mylayers

X = np.linspace(0.5, 1.5, 6).reshape(2, 3)


def _twin(factor):
    """`x sin x`, whose hand-written derivative is off by `factor`."""

    @tf.custom_gradient
    def x_sin_x(x):
        def grad(dy):
            return dy * (tf.cos(x) * x + tf.sin(x)) * factor

        return x * tf.sin(x), grad

    return x_sin_x


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_the_right_derivative_passes(dtype):
    report = mylayers.gradcheck(_twin(1.0), X, dtype=dtype, modes=("eager",))
    assert report.ok


@pytest.mark.parametrize(
    "dtype, factor",
    [
        ("float32", 1.01),
        ("float32", 0.99),
        ("float64", 1.01),
        ("float64", 1.001),
        ("float64", 0.999),
    ],
)
def test_a_near_miss_fails(dtype, factor):
    with pytest.raises(mylayers.GradcheckError) as caught:
        mylayers.gradcheck(_twin(factor), X, dtype=dtype, modes=("eager",))
    assert caught.value.report.worst().failed


def test_the_forward_over_reverse_route_is_compared(monkeypatch):
    """A forward-over-reverse Hessian-vector product 1% off fails that
    route's row, and only it: the route is compared with finite
    differences, not with itself or the other route."""
    jvp = tf.autodiff.ForwardAccumulator.jvp
    monkeypatch.setattr(
        tf.autodiff.ForwardAccumulator,
        "jvp",
        lambda self, *a, **k: tf.nest.map_structure(
            lambda t: t * 1.01, jvp(self, *a, **k)
        ),
    )
    with pytest.raises(mylayers.GradcheckError) as caught:
        mylayers.gradcheck(
            _twin(1.0),
            X,
            order=2,
            jacobian="projection",
            modes=("eager",),
        )
    failed = {row.check for row in caught.value.report.rows if row.failed}
    assert failed == {"order 2: Hu forward vs FD"}
