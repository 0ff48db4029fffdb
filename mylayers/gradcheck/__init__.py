"""Checks the gradients of layers, models and functions.

`gradcheck(target, inputs)` compares the gradients TensorFlow computes for
`target` (its custom gradients included) with central finite differences, in
float64, in eager mode, in `tf.function` and under XLA. Layers whose
backward pass is meant to differ from the derivative of their forward pass
(straight-through estimators, gradient reversal, clipping) declare a
`reference_backward(inputs, upstream)` method, and their input gradients are
compared with it instead.

Run `python -m mylayers.gradcheck` to check every layer in `mylayers`.
"""

import dataclasses

import keras
import numpy as np
import tensorflow as tf

from mylayers.gradcheck.numerics import Checker
from mylayers.gradcheck.report import GradcheckError, GradcheckReport, Row

MODES = ("eager", "function", "jit")


def _layers_of(target):
    """`target` and every layer nested in it."""
    # Keras has no public recursive listing; its own jit check uses this.
    return [target, *target._flatten_layers(include_self=False)]


def _cast_layer(layer, dtype, inputs):
    """A copy of `layer` (or of a Functional model) computing in `dtype`."""

    def clone(inner):
        config = inner.get_config()
        # Ops in a Functional graph (`x + h`, `keras.ops.tanh(h)`) are not
        # layers: they take no dtype, and follow their inputs'.
        if isinstance(inner, keras.layers.Layer):
            config = {**config, "dtype": dtype}
        return type(inner).from_config(config)

    if not layer.built:
        layer(*[tf.cast(x, layer.compute_dtype) for x in inputs])
    if isinstance(layer, keras.Model):
        try:
            # Without new inputs the copy would cast its inputs to float32.
            copy = keras.models.clone_model(
                layer,
                input_tensors=tf.nest.map_structure(
                    lambda t: keras.Input(batch_shape=t.shape, dtype=dtype),
                    layer.input,
                ),
                clone_function=clone,
            )
        except ValueError as error:
            raise ValueError(
                "gradcheck can only cast Functional and Sequential models to "
                f"{dtype}; build this one in {dtype} and pass dtype=None. "
                f"Received: target={layer.name}"
            ) from error
    else:
        copy = clone(layer)
        copy(*inputs)
    copy.set_weights([np.asarray(w, dtype) for w in layer.get_weights()])
    return copy


@dataclasses.dataclass
class _Target:
    """`target` as a pure function of its inputs and trainable weights."""

    name: str
    fn: object  # fn(inputs, weights) -> output tensor
    weights: list
    weight_names: list
    reference: object
    supports_jit: bool
    differentiable_twice: bool


def _as_target(target, inputs, dtype, reference):
    if not isinstance(target, keras.layers.Layer):
        name = getattr(target, "__name__", type(target).__name__)
        return _Target(
            name, lambda xs, ws: target(*xs), [], [], reference, True, True
        )
    layer = _cast_layer(target, dtype, inputs) if dtype else target
    non_trainable = [v.value for v in layer.non_trainable_variables]

    def fn(xs, ws):
        return layer.stateless_call(list(ws), non_trainable, *xs)[0]

    layers = _layers_of(layer)
    return _Target(
        name=target.name,
        fn=fn,
        weights=[tf.identity(v.value) for v in layer.trainable_variables],
        # The caller's variable names, not the float64 copy's.
        weight_names=[v.path for v in target.trainable_variables],
        reference=reference or getattr(layer, "reference_backward", None),
        supports_jit=all(inner.supports_jit for inner in layers),
        differentiable_twice=all(
            getattr(inner, "differentiable_twice", True) for inner in layers
        ),
    )


def gradcheck(
    target,
    inputs,
    *,
    order=1,
    jacobian="full",
    modes=MODES,
    dtype="float64",
    reference=None,
    eps=1e-6,
    atol=1e-6,
    rtol=1e-5,
    num_projections=2,
    seed=0,
):
    """Checks `target`'s gradients w.r.t. its inputs and trainable weights.

    The loss is `L = sum(v * target(inputs))` for a random upstream `v`.

    - Order 1: the gradient w.r.t. every input and trainable weight is
      compared with central finite differences `(f(p + e) - f(p - e)) / 2e`,
      as the full Jacobian (`jacobian="full"`) or as `v^T J u` for random
      `u` (`jacobian="projection"`, for large layers). A `None`
      (disconnected) gradient fails, reported under the variable's name.
    - Inputs of a target with a reference backward (a `reference` argument
      or a `reference_backward(inputs, upstream)` method, as on
      `GradientReversal`) are compared with it instead, for every basis
      upstream (full) and for random upstreams.
    - Order 2 (`order=2`, which also checks order 1): the Hessian of `L`,
      by nested tapes (reverse-over-reverse) and by
      `tf.autodiff.ForwardAccumulator` (forward-over-reverse), against
      finite differences of the first-order gradient. Skipped for targets
      with a layer whose `differentiable_twice` is False.
    - Every check runs in each of `modes`: "eager", "function"
      (`tf.function`) and "jit" (`jit_compile=True`; skipped for targets
      with a layer whose `supports_jit` is False).

    Args:
        target: A `keras.layers.Layer`, a Functional or Sequential
            `keras.Model`, or a function of tensors.
        inputs: A tensor (or array), or a list of them: the target's
            positional inputs.
        order: 1 or 2.
        jacobian: "full" or "projection".
        modes: Execution modes to check, a subset of `MODES`.
        dtype: The dtype to check in: layers and models are copied to it,
            inputs cast. `None` checks the target as it is.
        reference: `reference(inputs, upstream) -> gradient(s)`, the
            intended gradient w.r.t. the inputs; overrides the target's
            `reference_backward`.
        eps: Finite-difference step.
        atol: Absolute tolerance.
        rtol: Relative tolerance; an entry fails when
            `|actual - expected| > atol + rtol * |expected|`.
        num_projections: Random directions per tensor in projection mode,
            and random upstreams for a reference backward.
        seed: Seed of the random upstreams and directions.

    Returns:
        A `GradcheckReport` whose rows hold, per tensor, mode and check, the
        maximum absolute and relative errors and the worst index.

    Raises:
        GradcheckError: When any check fails; its message is the table.
        ValueError: For invalid arguments.

    Example:

    >>> report = gradcheck(lambda x: tf.sin(x), tf.constant([0.5, 1.0]))
    >>> report.ok, [row.mode for row in report.rows]
    (True, ['eager', 'function', 'jit'])
    """
    if order not in (1, 2):
        raise ValueError(f"Expected order 1 or 2. Received: order={order!r}")
    if jacobian not in ("full", "projection"):
        raise ValueError(
            'Expected jacobian="full" or "projection". '
            f"Received: jacobian={jacobian!r}"
        )
    if not set(modes) <= set(MODES) or not modes:
        raise ValueError(
            f"Expected modes to be a subset of {MODES}. Received: "
            f"modes={modes!r}"
        )
    if not isinstance(inputs, (list, tuple)):
        inputs = [inputs]
    inputs = [tf.convert_to_tensor(x) for x in inputs]
    if dtype:
        inputs = [tf.cast(x, dtype) for x in inputs]
    t = _as_target(target, inputs, dtype, reference)
    checker = Checker(t, inputs, eps, atol, rtol, num_projections, seed)
    rows = []
    for mode in modes:
        if mode == "jit" and not t.supports_jit:
            rows.append(
                Row(
                    t.name,
                    "*",
                    mode,
                    "all",
                    status="skipped (supports_jit=False)",
                )
            )
            continue
        first = checker.first_order(mode, jacobian)
        rows += first
        if order != 2:
            continue
        if any("gradient of shape" in row.status for row in first):
            skipped = "a first-order gradient has the wrong shape"
        elif not t.differentiable_twice:
            skipped = "differentiable_twice=False"
        else:
            rows += checker.second_order(mode, jacobian)
            continue
        rows.append(
            Row(t.name, "*", mode, "order 2", status=f"skipped ({skipped})")
        )
    report = GradcheckReport(rows)
    if not report.ok:
        raise GradcheckError(report)
    return report
