"""Argument checks shared by the layers: one wording for one mistake."""


def positive_int(layer, argument, value):
    """Raises `ValueError` unless `value` is an int >= 1 (bools excluded)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(
            f"{type(layer).__name__} expected a positive integer for "
            f"`{argument}`. Received: {argument}={value!r}"
        )
    return value
