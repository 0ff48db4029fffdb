"""Argument checks shared by the layers: one wording for one mistake."""


def positive_int(layer, argument, value):
    """Raises `ValueError` unless `value` is an int >= 1 (bools excluded)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(
            f"{type(layer).__name__} expected a positive integer for "
            f"`{argument}`. Received: {argument}={value!r}"
        )
    return value


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
