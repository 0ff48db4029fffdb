"""How close is close enough, in each precision: `gradcheck`'s step and
tolerances, scaled to the dtype the target computes in, and the comparison
of computed gradients with finite differences."""

import dataclasses

import numpy as np

from mylayers.gradcheck.report import Status

# Rounding in the two evaluations of a central difference, a few units in
# the last place each through the target's ops, divided by the step: the
# noise floor under which a finite difference says nothing.
NOISE_ULPS = 16


@dataclasses.dataclass(frozen=True)
class Tolerance:
    """Finite-difference step and tolerances for one precision.

    An entry fails when `|actual - expected| > max(floor, noise) + rtol *
    |expected|`. `floor` is `atol` when given, else `scale_atol` times the
    largest `|expected|` of the tensor compared, so that the check means
    the same for gradients of any size; `noise` is the rounding error the
    finite difference itself can carry (`NOISE_ULPS` units of `dtype` in
    the outputs, over the step).

    Attributes:
        dtype: The float dtype the target computes in.
        eps: Step, relative to `max(1, rms)` of the perturbed tensor.
        atol: Absolute tolerance, or None.
        scale_atol: The floor relative to the largest entry, without atol.
        rtol: Relative tolerance.
    """

    dtype: str
    eps: float
    atol: float | None
    scale_atol: float
    rtol: float

    def floor(self, expected):
        """The absolute tolerance for comparisons with `expected`."""
        if self.atol is not None:
            return self.atol
        finite = np.abs(np.asarray(expected, np.float64))
        finite = finite[np.isfinite(finite)]
        return self.scale_atol * float(finite.max(initial=0.0))

    def describe(self):
        atol = (
            f"atol {self.atol:.0e}"
            if self.atol is not None
            else f"atol {self.scale_atol:.0e} x max|expected|"
        )
        return (
            f"step {self.eps:.2g} x max(1, rms), {atol}, rtol "
            f"{self.rtol:.0e}, plus the rounding noise of each difference"
        )


# The step balances truncation (~ eps^2) against rounding (~ unit / eps):
# about the cube root of machine epsilon, as a power of two so that steps
# are exact for inputs of magnitude one. float64 keeps the checker's
# historical step and rtol; rtol for float32 is jax.test_util's gradient
# tolerance. (eps, scale_atol, rtol):
_DEFAULTS = {
    "float64": (1e-6, 1e-6, 1e-5),
    "float32": (2.0**-8, 1e-5, 2e-3),
    "float16": (2.0**-4, 1e-3, 5e-2),
    "bfloat16": (2.0**-3, 1e-2, 1e-1),
}

PRECISIONS = tuple(_DEFAULTS)


def tolerance(dtype, eps=None, atol=None, rtol=None):
    """The `Tolerance` for `dtype`, with any of its values overridden."""
    if dtype not in _DEFAULTS:
        raise ValueError(
            f"gradcheck checks in one of {PRECISIONS}. Received: "
            f"dtype={dtype!r}"
        )
    d_eps, d_scale_atol, d_rtol = _DEFAULTS[dtype]
    return Tolerance(
        dtype,
        d_eps if eps is None else eps,
        atol,
        d_scale_atol,
        d_rtol if rtol is None else rtol,
    )


def machine_epsilon(dtype):
    """Machine epsilon of a float dtype name, bfloat16 included."""
    if dtype == "bfloat16":
        return 2.0**-7
    return float(np.finfo(np.dtype(dtype)).eps)


def compare(row, actual, expected, rtol, where, rescues=()):
    """Fills `row` with how far `actual` is from `expected`; returns the
    boolean array of failing entries.

    `expected` and each of `rescues` are `(value, atol)` pairs of arrays
    (or scalars) shaped like `actual`; an entry passes when it is within
    `atol + rtol * |value|` of `expected`, or else of a rescue, given as
    `(label, (value, atol))`: the one-sided differences at a kink, where
    the central difference straddles two slopes, or a finer difference
    where the step was too coarse. Rescued entries are counted in the
    status under their label. Entries whose expected value is not finite
    (the target overflowed at a perturbed point) are left out and counted.
    """
    actual = np.asarray(actual, np.float64).ravel()
    value, atol = expected
    value = np.asarray(value, np.float64).ravel()
    checkable = np.isfinite(value)
    error = np.where(checkable, np.abs(actual - value), 0.0)

    def excess(candidate):
        value, bound = candidate
        value = np.asarray(value, np.float64).ravel()
        bound = np.asarray(bound, np.float64)
        bound = bound.ravel() if bound.ndim else bound
        with np.errstate(invalid="ignore"):
            return np.abs(actual - value) - (bound + rtol * np.abs(value))

    primary = excess(expected)
    passes = primary <= 0
    notes = []
    for label, candidate in rescues:
        rescued = (excess(candidate) <= 0) & ~passes
        passes |= rescued
        if rescued.any():
            notes.append(f"{int(rescued.sum())} {label}")
    failing = checkable & ~(passes & np.isfinite(actual))
    # The worst entry: the failing one furthest out of tolerance, or, when
    # all pass, the one furthest from its expected value.
    if failing.any():
        score = np.where(failing, np.nan_to_num(primary, nan=np.inf), -np.inf)
    else:
        score = error
    worst = int(np.argmax(score)) if actual.size else 0
    row.max_abs = float(error.max(initial=0.0))
    row.max_rel = float(
        (error / np.maximum(np.abs(value), _floor(atol))).max(initial=0.0)
    )
    if actual.size:
        row.worst_index = where(worst)
        row.actual = float(actual[worst])
        row.expected = float(value[worst])
    if not checkable.all():
        notes.append(f"{int((~checkable).sum())} not finite in FD, unchecked")
    row.status = Status.FAIL if failing.any() else Status.OK
    row.detail = "; ".join(notes)
    return failing


def _floor(atol):
    """A positive floor for relative errors, from an absolute tolerance."""
    return np.maximum(np.asarray(atol, np.float64).ravel(), 1e-300)
