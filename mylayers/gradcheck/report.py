"""The report of `mylayers.gradcheck`: one row per tensor, mode and check."""

import dataclasses


@dataclasses.dataclass
class Row:
    """One line of the report: how far one gradient is from its reference."""

    target: str
    tensor: str
    mode: str
    check: str
    max_abs: float = float("nan")
    max_rel: float = float("nan")
    worst_index: str = ""
    status: str = "ok"


class GradcheckReport:
    """The figures of a gradient check, one `Row` per tensor, mode and check.

    Attributes:
        rows: The `Row`s, in the order they were checked.
    """

    _HEADER = (
        "target",
        "tensor",
        "mode",
        "check",
        "max abs err",
        "max rel err",
        "worst index",
        "status",
    )

    def __init__(self, rows):
        self.rows = list(rows)

    @property
    def ok(self):
        """Whether no row failed (skipped rows do not fail)."""
        return all(not row.status.startswith("FAIL") for row in self.rows)

    def table(self):
        """The rows as an aligned text table."""
        lines = [self._HEADER] + [
            (
                r.target,
                r.tensor,
                r.mode,
                r.check,
                f"{r.max_abs:.2e}",
                f"{r.max_rel:.2e}",
                r.worst_index,
                r.status,
            )
            for r in self.rows
        ]
        widths = [max(len(line[i]) for line in lines) for i in range(8)]
        return "\n".join(
            "  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip()
            for line in lines
        )

    def __str__(self):
        return self.table()


class GradcheckError(AssertionError):
    """A gradient check failed; the message is the report's table.

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
    ...     print(error.report.rows[0].status)
    FAIL
    """

    def __init__(self, report):
        super().__init__(f"gradient check failed:\n{report.table()}")
        self.report = report
