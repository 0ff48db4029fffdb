"""The report of `mylayers.gradcheck`: one row per tensor, mode and check,
the precision it was checked in and why, and notes on what was held fixed
or skipped."""

import dataclasses
import enum


class Status(enum.Enum):
    """What one row of the report found."""

    OK = "ok"
    FAIL = "FAIL"  # The gradient differs from its reference.
    ERROR = "ERROR"  # The check could not run (a defect of the target).
    SKIPPED = "skipped"  # Not checked, and why is in the row's detail.


@dataclasses.dataclass
class Row:
    """One line of the report: how far one gradient is from its reference.

    `actual` and `expected` are the two values at `worst_index`: the
    gradient TensorFlow computed, and the finite difference (or reference
    backward) it was compared with. `status` is what the row found,
    `detail` why or what else was seen; `label` is both, as the table
    shows them.
    """

    target: str
    tensor: str
    mode: str
    check: str
    dtype: str = ""
    max_abs: float = float("nan")
    max_rel: float = float("nan")
    worst_index: str = ""
    actual: float = float("nan")
    expected: float = float("nan")
    status: Status = Status.OK
    detail: str = ""

    @property
    def failed(self):
        return self.status in (Status.FAIL, Status.ERROR)

    @property
    def label(self):
        """`ok`, `ok (notes)`, `FAIL: why`, `ERROR: why`, `skipped (why)`."""
        if not self.detail:
            return self.status.value
        if self.failed:
            return f"{self.status.value}: {self.detail}"
        return f"{self.status.value} ({self.detail})"


class GradcheckReport:
    """The figures of a gradient check, one `Row` per tensor, mode and check.

    Attributes:
        rows: The `Row`s, in the order they were checked.
        precision: One line: the dtype the check ran in, and why.
        notes: Lines on what was held fixed, skipped or restored.
    """

    _HEADER = (
        "target",
        "tensor",
        "mode",
        "check",
        "dtype",
        "max abs err",
        "max rel err",
        "worst index",
        "actual",
        "expected",
        "status",
    )

    def __init__(self, rows, precision="", notes=()):
        self.rows = list(rows)
        self.precision = precision
        self.notes = list(notes)

    @property
    def ok(self):
        """Whether no row failed (skipped rows do not fail)."""
        return not any(row.failed for row in self.rows)

    def worst(self):
        """The failed row with the largest relative error, or None."""
        failed = [row for row in self.rows if row.failed]
        return max(
            failed,
            key=lambda r: r.max_rel if r.max_rel == r.max_rel else 0.0,
            default=None,
        )

    def table(self):
        """The rows as an aligned text table."""
        lines = [self._HEADER] + [
            (
                r.target,
                r.tensor,
                r.mode,
                r.check,
                r.dtype,
                f"{r.max_abs:.2e}",
                f"{r.max_rel:.2e}",
                r.worst_index,
                f"{r.actual:.6g}",
                f"{r.expected:.6g}",
                r.label,
            )
            for r in self.rows
        ]
        widths = [max(len(line[i]) for line in lines) for i in range(11)]
        return "\n".join(
            "  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip()
            for line in lines
        )

    def __str__(self):
        lines = [self.table()]
        if self.precision:
            lines.append(f"precision: {self.precision}")
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)


class GradcheckError(AssertionError):
    """A gradient check failed; the message names the worst entry, with
    its actual and expected values, then the report.

    Example:

    >>> def wrong_square(x):
    ...     @tf.custom_gradient
    ...     def f(x):
    ...         return x**2, lambda dy: dy * x  # should be 2 x dy
    ...     return f(x)
    >>> from mylayers import gradcheck
    >>> try:
    ...     gradcheck(wrong_square, tf.constant([1.0, 2.0]), modes=["eager"])
    ... except GradcheckError as error:
    ...     worst = error.report.worst()
    ...     print(worst.label, worst.worst_index, worst.actual)
    ...     print(round(worst.expected, 6))
    FAIL y[1] / inputs[1] 2.0
    4.0
    """

    def __init__(self, report):
        worst = report.worst()
        headline = "gradient check failed"
        if worst is not None and worst.worst_index:
            headline += (
                f": worst at {worst.worst_index} ({worst.mode}, "
                f"{worst.check}): actual {worst.actual:.6g}, expected "
                f"{worst.expected:.6g}"
            )
        elif worst is not None:
            headline += f": {worst.tensor} ({worst.mode}): {worst.label}"
        super().__init__(f"{headline}\n{report}")
        self.report = report
