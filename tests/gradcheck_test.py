"""Tests for `mylayers.gradcheck`, its failure table and its CLI."""

import doctest
import importlib
import pkgutil
import re
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import mylayers
from mylayers import gradcheck as gradcheck_module_function
from mylayers.examples import public_layers
from mylayers.gradcheck.__main__ import cli_cases
from mylayers.gradcheck.__main__ import main as cli_main
from mylayers.gradcheck.messages import one_line

X = np.random.default_rng(0).uniform(-0.9, 0.9, size=(2, 3))


def _broken_affine(kind):
    """`x W^T + b` with one deliberate mistake in its backward pass."""

    @tf.custom_gradient
    def affine(x, kernel, bias):
        y = tf.matmul(x, kernel, transpose_b=True) + bias

        def grad(dy):
            dx = tf.matmul(dy, kernel)
            dkernel = tf.matmul(dy, x, transpose_a=True)
            dbias = tf.reduce_sum(dy, axis=0)
            if kind == "sign":
                dx = -dx
            elif kind == "scale":
                dkernel = 2 * dkernel
            elif kind == "missing":
                dbias = None
            return dx, dkernel, dbias

        return y, grad

    return affine


class BrokenLinear(mylayers.Linear):
    """`Linear` with a broken custom gradient (`kind` says how)."""

    def __init__(self, units, kind, **kwargs):
        super().__init__(units, **kwargs)
        self.kind = kind

    def call(self, inputs):
        kernel = tf.cast(self.kernel, self.compute_dtype)
        bias = tf.cast(self.bias, self.compute_dtype)
        return _broken_affine(self.kind)(inputs, kernel, bias)

    def get_config(self):
        return {**super().get_config(), "kind": self.kind}


def _failed_rows(report):
    return {(r.tensor, r.mode) for r in report.rows if r.label != "ok"}


def test_correct_layer_passes_every_check():
    layer = mylayers.ManualLinear(2, activation="tanh", name="dense")
    report = gradcheck_module_function(layer, X, order=2)
    assert report.ok
    assert {r.mode for r in report.rows} == {"eager", "function", "jit"}
    assert {r.tensor for r in report.rows} == {
        "inputs",
        "dense/kernel",
        "dense/bias",
    }
    checks = {r.check for r in report.rows}
    assert checks == {
        "order 1: J vs FD",
        "order 2: H vs FD",
        "order 2: Hu forward vs FD",
    }
    assert max(r.max_abs for r in report.rows) < 1e-8
    # The user's layer is untouched: still float32, same weights.
    assert layer.kernel.dtype == "float32"


@pytest.mark.parametrize("jacobian", ["full", "projection"])
@pytest.mark.parametrize(
    "kind, tensor, status",
    [
        ("sign", "inputs", "FAIL"),
        ("scale", "broken/kernel", "FAIL"),
        ("missing", "broken/bias", "FAIL: None gradient (disconnected)"),
    ],
)
def test_catches_broken_gradient_with_table(kind, tensor, status, jacobian):
    layer = BrokenLinear(2, kind, name="broken")
    with pytest.raises(mylayers.GradcheckError) as info:
        mylayers.gradcheck(layer, X, modes=["eager", "jit"], jacobian=jacobian)
    message = str(info.value)
    header = message.splitlines()[1]
    for column in ("tensor", "max abs err", "max rel err", "worst index"):
        assert column in header
    # Line 0 names the worst entry; the table follows.
    assert message.splitlines()[0].startswith("gradient check failed: ")
    failed = [line for line in message.splitlines()[1:] if "FAIL" in line]
    assert len(failed) == 2  # one per mode
    assert all(tensor in line and status in line for line in failed)
    assert _failed_rows(info.value.report) == {
        (tensor, "eager"),
        (tensor, "jit"),
    }


@pytest.mark.slow
def test_full_jacobians_in_traced_and_compiled_modes_catch_errors():
    """Full Jacobians, by a backward pass per output traced (and compiled)
    once, pass a right gradient at orders 1 and 2 and catch a wrong one in
    `tf.function` and XLA. Slow (about 4 s): two checks at order 2."""
    modes = ["function", "jit"]
    layer = mylayers.ManualLinear(2, activation="tanh", name="dense")
    report = mylayers.gradcheck(layer, X, order=2, modes=modes)
    assert {r.check for r in report.rows} >= {
        "order 1: J vs FD",
        "order 2: H vs FD",
    }
    with pytest.raises(mylayers.GradcheckError) as info:
        mylayers.gradcheck(BrokenLinear(2, "sign", name="b"), X, modes=modes)
    assert _failed_rows(info.value.report) == {
        ("inputs", "function"),
        ("inputs", "jit"),
    }


def test_failure_figures_locate_the_error():
    with pytest.raises(mylayers.GradcheckError) as info:
        mylayers.gradcheck(
            BrokenLinear(2, "scale", name="b"), X, modes=["eager"]
        )
    (row,) = [r for r in info.value.report.rows if r.label == "FAIL"]
    # dW doubled: the error is |dW| itself, so relative error is 1.
    np.testing.assert_allclose(row.max_rel, 1.0, rtol=1e-6)
    assert row.worst_index.startswith("y[") and "b/kernel[" in row.worst_index


def test_catches_silent_none_second_derivative():
    @tf.custom_gradient
    def cube(x):
        # stop_gradient: first derivative right, second silently zero.
        return x**3, lambda dy: dy * 3 * tf.stop_gradient(x) ** 2

    report = mylayers.gradcheck(lambda x: cube(x), X, modes=["eager"])
    assert report.ok
    with pytest.raises(mylayers.GradcheckError, match="order 2"):
        mylayers.gradcheck(lambda x: cube(x), X, order=2, modes=["eager"])


def test_override_is_checked_against_reference_not_finite_differences():
    layer = mylayers.StraightThroughQuantize(3)
    x = np.array([[-1.5, -0.2, 0.4, 2.0]])
    report = mylayers.gradcheck(layer, x)
    assert [r.check for r in report.rows] == ["order 1 vs reference"] * 3
    # A wrong declared reference (plain identity) is caught at |x| > 1.
    with pytest.raises(mylayers.GradcheckError) as info:
        mylayers.gradcheck(layer, x, reference=lambda x, u: u)
    (row, *_) = [r for r in info.value.report.rows if r.label == "FAIL"]
    # Only the entries with |x| > 1 differ.
    assert re.search(r"inputs\[0,[03]\]$", row.worst_index), row.worst_index


@pytest.mark.parametrize("scale", [1.0, 0.0])
def test_gradient_reversal_reference_detects_wrong_scale(scale):
    layer = mylayers.GradientReversal(0.5)
    with pytest.raises(mylayers.GradcheckError):
        mylayers.gradcheck(layer, X, reference=lambda x, u: -scale * u)


def test_numpy_layer_skips_xla_and_second_order():
    report = mylayers.gradcheck(mylayers.NumpyLinear(2), X, order=2)
    assert report.ok
    skipped = {(r.mode, r.label) for r in report.rows if r.tensor == "*"}
    assert skipped == {
        ("eager", "skipped (differentiable_twice=False)"),
        ("function", "skipped (differentiable_twice=False)"),
        ("jit", "skipped (supports_jit=False)"),
    }


@pytest.mark.slow
def test_model_and_projection_mode():
    """Slow: a model at order 2 in three modes;
    the fast lane checks projection mode on a broken layer."""
    inputs = keras.Input((3,))
    hidden = mylayers.RMSNorm(name="norm")(inputs)
    model = keras.Model(inputs, mylayers.Linear(2, name="out")(hidden))
    report = mylayers.gradcheck(model, X, jacobian="projection", order=2)
    assert report.ok
    assert {r.tensor for r in report.rows} == {
        "inputs",
        "norm/scale",
        "out/kernel",
        "out/bias",
    }
    assert "order 2: Hu reverse vs FD" in {r.check for r in report.rows}


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        ({"order": 3}, "order"),
        ({"jacobian": "diagonal"}, "jacobian"),
        ({"modes": ["gpu"]}, "modes"),
        ({"modes": []}, "modes"),
    ],
)
def test_invalid_arguments(kwargs, argument):
    with pytest.raises(ValueError, match=f"Received: {argument}="):
        mylayers.gradcheck(tf.sin, X, **kwargs)


def test_cli_main_fails_with_table(monkeypatch, capsys):
    monkeypatch.setattr(
        sys.modules["mylayers.gradcheck.__main__"],
        "cli_cases",
        lambda: [
            mylayers.Example(
                BrokenLinear(2, "sign", name="broken"), (2, 3), order=1
            )
        ],
    )
    assert cli_main([]) == 1
    out = capsys.readouterr().out
    assert "worst index" in out and "FAIL" in out and "1 failed" not in out
    assert "3 failed" in out  # inputs, in three modes


class _Added(keras.layers.Layer):
    """A layer added to the package: its file declares its examples."""

    def call(self, x):
        return 2.0 * x

    @classmethod
    def examples(cls, **kwargs):
        return [mylayers.Example(cls(**kwargs), (2, 3))]


def test_cli_checks_every_public_layer_and_one_added(monkeypatch):
    """Adding a layer is its file and a line in `mylayers/__init__.py`
    (`__all__`): the command then checks it, with no list to edit."""
    examples = cli_cases()
    assert {type(example.layer) for example in examples} == set(public_layers())
    declared = sum(len(cls.examples()) for cls in public_layers())
    assert len(examples) == declared > len(public_layers())
    monkeypatch.setattr(mylayers, "_Added", _Added, raising=False)
    monkeypatch.setattr(mylayers, "__all__", [*mylayers.__all__, "_Added"])
    added = [e for e in cli_cases() if isinstance(e.layer, _Added)]
    assert [e.inputs for e in added] == [(2, 3)]


def test_a_public_layer_without_examples_is_named(monkeypatch):
    class Bare(keras.layers.Layer):
        def call(self, x):
            return x

    monkeypatch.setattr(mylayers, "Bare", Bare, raising=False)
    monkeypatch.setattr(mylayers, "__all__", [*mylayers.__all__, "Bare"])
    with pytest.raises(TypeError, match=r"^mylayers\.Bare declares no ex"):
        cli_cases()


@pytest.mark.slow
def test_functional_model_with_ops_is_cast_and_checked():
    """`x + h` and `keras.ops` calls are graph ops, not layers: casting the
    model to float64 must not give them a dtype. Slow (about 3 s): a
    model at order 2 in three modes."""
    inputs = keras.Input((4,))
    hidden = mylayers.Linear(4, activation="tanh")(inputs)
    outputs = keras.ops.tanh(mylayers.Linear(3)(inputs + hidden))
    model = keras.Model(inputs, outputs)
    x = np.random.default_rng(0).normal(size=(2, 4)).astype("float32")
    report = mylayers.gradcheck(model, x, order=2)
    assert report.ok
    checked = {row.tensor for row in report.rows}
    assert {"inputs", *(v.path for v in model.trainable_variables)} <= checked


class _ForgotBatchSum(keras.layers.Layer):
    """y = x * gamma, with the numpy slip of not summing dgamma over the
    batch: a (batch, d) gradient for a (d,) weight."""

    def build(self, input_shape):
        self.gamma = self.add_weight(shape=(input_shape[-1],))

    def call(self, x):
        @tf.custom_gradient
        def scale(x, gamma):
            return x * gamma, lambda dy: (dy * gamma, dy * x)

        return scale(x, self.gamma.value)


@pytest.mark.parametrize("jacobian", ["full", "projection"])
def test_wrong_shape_gradient_is_named(jacobian):
    x = np.random.default_rng(0).normal(size=(3, 5)).astype("float32")
    layer = _ForgotBatchSum()
    with pytest.raises(mylayers.GradcheckError) as caught:
        mylayers.gradcheck(layer, x, order=2, jacobian=jacobian)
    message = str(caught.value)
    assert (
        f"FAIL: gradient of shape (3, 5), expected (5,) (that of "
        f"{layer.name}/gamma)" in message
    )
    assert "skipped (a first-order gradient has the wrong shape)" in message
    # "__forgot_batch_sum" is no valid root name scope in tf.function;
    # the check must not leave Keras's name scope open behind it.
    probe = keras.layers.Dense(1, name="probe")
    probe.build((None, 1))
    assert probe.kernel.path == "probe/kernel"


@pytest.mark.parametrize(
    "name",
    sorted(
        f"mylayers.gradcheck.{info.name}"
        for info in pkgutil.iter_modules(
            importlib.import_module("mylayers.gradcheck").__path__
        )
    ),
)
def test_submodule_docstring_examples(name):
    """tests/docstrings_test.py walks `mylayers` one level deep; this runs
    the `>>>` examples of the gradcheck subpackage's own modules."""
    result = doctest.testmod(
        importlib.import_module(name),
        extraglobs={"tf": tf},
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
    )
    assert result.failed == 0


class _EagerOnlyScale(keras.layers.Layer):
    """Reads a tensor's value in Python: runs eagerly, cannot be traced."""

    def call(self, x):
        batch = int(tf.shape(x)[0].numpy())
        return x * (2.0 / batch)


def test_untraceable_layer_is_checked_eagerly_and_named():
    with pytest.raises(mylayers.GradcheckError) as caught:
        mylayers.gradcheck(_EagerOnlyScale(), X, modes=["eager", "function"])
    rows = {row.mode: row for row in caught.value.report.rows}
    assert rows["eager"].label == "ok"
    assert rows["function"].label.startswith(
        "ERROR: tf.function cannot trace it (AttributeError"
    )
    assert "the eager rows still hold" in rows["function"].label


class _Scale(keras.layers.Layer):
    """The guide's style: a weight made in `__init__` without `name=`."""

    def __init__(self):
        # Not "__scale", from the class's name: Keras's symbolic build
        # would fail on it and leave its name scope open.
        super().__init__(name="scale")
        self.s = self.add_weight(shape=(2,), initializer="ones")

    def call(self, x):
        return x * self.s


class _Glu(keras.layers.Layer):
    """Weights without `name=` (one in a list), one named, and a nested
    layer whose weight this layer holds too."""

    def __init__(self):
        super().__init__(name="glu")
        self.inner = _Scale()
        self.alias = self.inner.s

    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1], 2))
        self.biases = [self.add_weight(shape=(2,)) for _ in range(2)]
        self.gate = self.add_weight(shape=(2,), name="gate")

    def call(self, x):
        h = keras.ops.tanh(x @ self.w + self.biases[0])
        return self.inner(h * self.gate + self.biases[1])


def test_weights_are_named_by_the_attributes_that_hold_them():
    layer = _Glu()
    report = mylayers.gradcheck(layer, X, modes=["eager"])
    assert {r.tensor for r in report.rows} == {
        "inputs",
        "glu/w",
        "glu/biases[0]",
        "glu/biases[1]",
        "glu/gate",  # Named: its own name.
        "scale/s",  # By the layer that made it, not glu/alias.
    }


def test_upstream_keras_puts_a_call_errors_cause_in_bold():
    """The one match on Keras's words in `mylayers` (`messages.one_line`):
    Keras wraps an error raised in `call()` in a preamble and puts its
    cause in terminal bold. If a release changes that, this canary fails
    and the report's error rows would show the preamble instead."""

    class Raises(keras.layers.Layer):
        def call(self, x):
            raise ValueError("the real cause")

    with pytest.raises(ValueError) as error:
        Raises()(np.ones((1, 2), "float32"))
    assert "\x1b[1mthe real cause\x1b[0m" in str(error.value)
    assert one_line(error.value) == "ValueError: the real cause"
