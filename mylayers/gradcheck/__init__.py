"""Checks the gradients of layers, models and functions.

`gradcheck(target, inputs)` compares the gradients TensorFlow computes for
`target` (its custom gradients included) with central finite differences, in
float64, in eager mode, in `tf.function` and under XLA. Any layer can be
checked, written as the Keras guides write them: it is run in float64
without being copied (`target.py`), or, where it cannot run there, in its
own dtype with a step and tolerances scaled to it (`numerics.py`); the
report (`report.py`) says which, and why. Layers whose backward pass is
meant to differ from the derivative of their forward pass
(straight-through estimators, gradient reversal, clipping) declare a
`reference_backward(inputs, upstream)` method, and their input gradients are
compared with it instead.

Run `python -m mylayers.gradcheck` to check every layer in `mylayers`,
or `python -m mylayers.gradcheck my_module:MyLayer --input-shape 4,8` to
check your own (`--help` says more).
"""

import keras
import numpy as np
import tensorflow as tf

from mylayers.gradcheck import messages
from mylayers.gradcheck.cli import Sample
from mylayers.gradcheck.numerics import Checker
from mylayers.gradcheck.report import (
    GradcheckError,
    GradcheckReport,
    Row,
    Status,
)
from mylayers.gradcheck.target import (
    CallError,
    as_function_target,
    as_layer_target,
)
from mylayers.gradcheck.tolerance import machine_epsilon, tolerance

__all__ = [
    "MODES",
    "CallError",
    "GradcheckError",
    "GradcheckReport",
    "Row",
    "Sample",
    "Status",
    "gradcheck",
]

MODES = ("eager", "function", "jit")

# What a target that runs eagerly can still raise in a mode (tracing, XLA
# compilation, a missing second derivative): reported in a row, while any
# other exception, a bug, propagates.
MODE_ERRORS = (tf.errors.OpError, NotImplementedError, TypeError, ValueError)


def gradcheck(
    target,
    inputs,
    *,
    order=1,
    jacobian="full",
    modes=MODES,
    dtype="float64",
    training=False,
    mask=None,
    call_kwargs=None,
    reference=None,
    eps=None,
    atol=None,
    rtol=None,
    num_projections=2,
    seed=0,
):
    """Checks `target`'s gradients w.r.t. its inputs and trainable weights.

    The loss is `L = sum(v * y)` for a random upstream `v`, where `y` is
    every float output of `target(inputs)` (nested or dict outputs are
    flattened) followed by every loss the call added (`add_loss`, weight
    regularizers), named `losses[i]`.

    - Precision: a layer or model computes in `dtype` (float64) for the
      check, without being copied or reconstructed, so any layer works,
      written with or without `**kwargs` and `get_config`; the layer is
      left as it was. Where it cannot run in `dtype` (a constant made in
      float32 inside `call`), it is checked in its own compute dtype, with
      the step and tolerances of that dtype, and the report's `precision`
      line says why and what one change would allow float64.
    - Order 1: the gradient w.r.t. every float input and trainable weight
      is compared with central finite differences, as the full Jacobian
      (`jacobian="full"`) or as `v^T J u` for random `u`
      (`jacobian="projection"`, for large layers). A `None`
      (disconnected) gradient fails, reported under the variable's name.
      Integer inputs (token ids) have no gradient: they are held fixed and
      reported as skipped, and the weights are still checked.
    - State: each evaluation starts from the layer's non-trainable state
      and random seed state as they were, so a running mean updated in
      `call` or a dropout mask (from `keras.random` with a
      `SeedGenerator`) is the same in every finite difference. A target
      whose outputs still differ between two calls at the same point is
      reported as skipped, with the reason.
    - Inputs of a target with a reference backward (a `reference` argument
      or a `reference_backward(inputs, upstream)` method, as on
      `GradientReversal`) are compared with it instead, for every basis
      upstream (full) and for random upstreams.
    - Order 2 (`order=2`, which also checks order 1): the Hessian of `L`,
      by nested tapes (reverse-over-reverse) and by
      `tf.autodiff.ForwardAccumulator` (forward-over-reverse), against
      finite differences of the first-order gradient: with `jacobian=
      "full"`, the first entry by entry and the second along one random
      direction per tensor; with "projection", both along
      `num_projections` directions. Skipped for targets with a layer
      whose `differentiable_twice` is False.
    - Every check runs in each of `modes`: "eager", "function"
      (`tf.function`) and "jit" (`jit_compile=True`; skipped for targets
      with a layer whose `supports_jit` is False, or that XLA cannot
      compile). A target that `tf.function` cannot trace (a `.numpy()`
      in `call`) is checked eagerly, and its "function" row is an ERROR.

    Args:
        target: A `keras.layers.Layer` or `keras.Model` (Functional,
            Sequential or subclassed), or a function of tensors.
        inputs: The target's positional inputs: a tensor, array or dict
            (one argument), or a list or tuple of them (one per argument;
            wrap a list that is one argument in another list).
        order: 1 or 2.
        jacobian: "full" or "projection".
        modes: Execution modes to check, a subset of `MODES`.
        dtype: The dtype to check in ("float64", "float32", "float16" or
            "bfloat16"); `None` checks the target as it is.
        training: Passed to a layer's call: False checks the deterministic
            path; True the training path, with its random numbers fixed.
            None passes nothing.
        mask: Passed to the call as `mask=`, held fixed.
        call_kwargs: Other keyword arguments for the call, held fixed.
        reference: `reference(inputs, upstream) -> gradient(s)`, the
            intended gradient w.r.t. the inputs; overrides the target's
            `reference_backward`.
        eps: Finite-difference step, relative to `max(1, rms)` of each
            tensor; by default about the cube root of the precision's
            machine epsilon (1e-6 in float64).
        atol: Absolute tolerance; by default the precision's (1e-6 in
            float64), raised where the finite difference itself carries
            more rounding noise than that.
        rtol: Relative tolerance (1e-5 in float64, 2e-3 in float32); an
            entry fails when `|actual - expected| > atol + rtol *
            |expected|`.
        num_projections: Random directions per tensor in projection mode,
            and random upstreams for a reference backward.
        seed: Seed of the random upstreams and directions.

    Returns:
        A `GradcheckReport` whose rows hold, per tensor, mode and check, the
        maximum absolute and relative errors, the worst index and the
        actual and expected values there; its `precision` line says which
        dtype was used and why, its `notes` what was held fixed.

    Raises:
        GradcheckError: When any check fails; its message names the worst
            entry with its actual and expected values, then the report.
        CallError: (a `ValueError`) when the target cannot be built or
            called on `inputs`; one line says what to change.
        ValueError: For invalid arguments.

    Example:

    >>> report = gradcheck(lambda x: tf.sin(x), tf.constant([0.5, 1.0]))
    >>> report.ok, [row.mode for row in report.rows]
    (True, ['eager', 'function', 'jit'])
    >>> report.precision
    'float64, inputs cast to it. Step 1e-06 x max(1, rms), ...'
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
    if dtype is not None:
        tolerance(dtype)  # Validates it.
    if isinstance(target, keras.layers.Layer):
        t = as_layer_target(
            target, inputs, dtype, reference, training, mask, call_kwargs
        )
    else:
        kwargs = dict(call_kwargs or {})
        if mask is not None:
            kwargs["mask"] = mask
        t = as_function_target(target, inputs, dtype, reference, kwargs)
    tol = tolerance(t.dtype, eps, atol, rtol)
    with t.view():
        rows, notes = _check(
            t, tol, order, jacobian, modes, num_projections, seed
        )
    report = GradcheckReport(
        rows,
        precision=messages.precision_line(t.precision, t.dtype, tol),
        notes=t.notes + notes,
    )
    if not report.ok:
        raise GradcheckError(report)
    return report


def _check(t, tol, order, jacobian, modes, num_projections, seed):
    """The rows of every check in every mode, and notes."""
    rows = [
        Row(
            t.name,
            name,
            "*",
            "order 1",
            t.dtype,
            status=Status.SKIPPED,
            detail=why,
        )
        for name, why in t.skipped
    ]
    notes = []
    if not t.sources:
        return rows, notes
    reason = _nonfinite_reason(t) or _random_reason(t)
    if reason:
        rows.append(
            Row(
                t.name,
                "*",
                "*",
                "all",
                t.dtype,
                status=Status.SKIPPED,
                detail=reason,
            )
        )
        return rows, notes
    if _has_batch_of_one(t):
        notes.append(messages.BATCH_OF_ONE)
    checker = Checker(t, tol, num_projections, seed)
    for mode in modes:
        if mode != "eager" and checker.untraceable:
            rows.append(_untraceable_row(t, mode, checker.untraceable))
            continue
        if mode == "jit" and not t.supports_jit:
            rows.append(
                Row(
                    t.name,
                    "*",
                    mode,
                    "all",
                    t.dtype,
                    status=Status.SKIPPED,
                    detail=messages.NO_JIT,
                )
            )
            continue
        try:
            first = checker.first_order(mode, jacobian)
        except MODE_ERRORS as error:
            rows.append(_mode_error(t, mode, "all", error))
            continue
        rows += first
        if order != 2:
            continue
        if mode in checker.wrong_shape_modes:
            skipped = messages.WRONG_SHAPE_FIRST
        elif not t.differentiable_twice:
            skipped = messages.NOT_TWICE
        else:
            try:
                rows += checker.second_order(mode, jacobian)
            except MODE_ERRORS as error:
                rows.append(_mode_error(t, mode, "order 2", error))
            continue
        rows.append(
            Row(
                t.name,
                "*",
                mode,
                "order 2",
                t.dtype,
                status=Status.SKIPPED,
                detail=skipped,
            )
        )
    return rows, notes


def _untraceable_row(t, mode, error):
    """A row for a mode that `tf.function` cannot trace the target in."""
    is_error, detail = messages.untraceable(mode, error)
    status = Status.ERROR if is_error else Status.SKIPPED
    return Row(t.name, "*", mode, "all", t.dtype, status=status, detail=detail)


def _mode_error(t, mode, check, error):
    """A row for a mode the target could not run in."""
    is_error, detail = messages.mode_error(mode, check, error)
    status = Status.ERROR if is_error else Status.SKIPPED
    return Row(t.name, "*", mode, check, t.dtype, status=status, detail=detail)


def _nonfinite_reason(t):
    """Why the target cannot be checked, if its outputs at `inputs` are not
    all finite (an overflow): there is no gradient to compare there."""
    y = np.asarray(t.fn(t.sources), np.float64)
    if np.isfinite(y).all():
        return None
    first = int(np.flatnonzero(~np.isfinite(y))[0])
    return messages.non_finite(t.output_name(first), y[first], t.dtype)


def _random_reason(t):
    """Why the target cannot be checked by finite differences, if its
    outputs differ between two calls at the same point."""
    first = np.asarray(t.fn(t.sources), np.float64)
    second = np.asarray(t.fn(t.sources), np.float64)
    unit = 1e3 * machine_epsilon(t.dtype)
    finite = np.abs(first[np.isfinite(first)])
    scale = float(finite.mean()) if finite.size else 0.0
    if np.allclose(first, second, unit, unit * scale, equal_nan=True):
        return None
    return messages.RANDOM_CALLS


def _has_batch_of_one(t):
    """Whether there are weights and every input is a batch of one."""
    inputs = t.sources[: t.n_in]
    has_weights = len(t.sources) > t.n_in
    return (
        bool(inputs)
        and has_weights
        and all((x.shape.rank or 0) >= 2 and x.shape[0] == 1 for x in inputs)
    )
