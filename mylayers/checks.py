"""Value checks for constructor and config arguments, one wording each.

The predicates (`is_int`, `is_number`) are shared by the layers, by
`CustomModel.compile` and by the trainer's config checks; the `require_*`
helpers raise the layers' `ValueError`, which names the argument and what
was received, as Keras's own layers do.
"""

import math


def is_int(value, minimum=None, maximum=None):
    """Whether `value` is an int (a bool is not) within the bounds."""
    if not isinstance(value, int) or isinstance(value, bool):
        return False
    return (minimum is None or value >= minimum) and (
        maximum is None or value <= maximum
    )


def is_number(value, minimum=None, maximum=None, strict=False):
    """Whether `value` is a finite int or float (not a bool) within the
    bounds; `strict` excludes the bounds themselves."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    if not math.isfinite(value):
        return False
    if strict:
        return (minimum is None or value > minimum) and (
            maximum is None or value < maximum
        )
    return (minimum is None or value >= minimum) and (
        maximum is None or value <= maximum
    )


def require(ok, owner, argument, value, expected):
    """Raises `ValueError` naming `argument` unless `ok`; returns `value`.

    Args:
        ok: The outcome of the check.
        owner: Who received the argument: a layer (its class is named) or
            a string such as "CustomModel.compile".
        argument: The argument's name.
        value: What was received.
        expected: What is allowed, e.g. "a positive integer".
    """
    if not ok:
        if not isinstance(owner, str):
            owner = type(owner).__name__
        raise ValueError(
            f"{owner} expected {expected} for `{argument}`. "
            f"Received: {argument}={value!r}"
        )
    return value


def positive_int(owner, argument, value):
    """Returns `value` if it is an int >= 1; raises `ValueError` if not."""
    return require(
        is_int(value, 1), owner, argument, value, "a positive integer"
    )


def positive_ints(owner, argument, values):
    """Returns `values` if each is an int >= 1; raises `ValueError` if not."""
    ok = isinstance(values, (tuple, list)) and all(is_int(v, 1) for v in values)
    return require(ok, owner, argument, values, "positive integers")


def dropout_rate(owner, value):
    """Returns `value` if it is a number in [0, 1); raises `ValueError`."""
    ok = is_number(value, 0) and value < 1
    return require(ok, owner, "dropout", value, "a number in [0, 1)")


def known_last_axis(layer, input_shape, axis="last input axis"):
    """Returns `input_shape[-1]`; raises `ValueError` if it is unknown.

    Layers size their weights from it in `build`.
    """
    size = input_shape[-1]
    if size is None:
        raise ValueError(
            f"{type(layer).__name__} '{layer.name}' needs a known {axis}. "
            f"Received: input_shape={input_shape}"
        )
    return size
