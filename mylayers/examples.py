"""The examples each layer declares: small instances and inputs that
`python -m mylayers.gradcheck` checks and the tests build on.

A layer declares them in a classmethod, next to its code:

    @classmethod
    def examples(cls, **kwargs):
        return [Example(cls(3, **kwargs), (2, 4))]

`kwargs` are base-layer arguments (`name`, `dtype`) for the layer, so a
test can make the same example under a mixed-precision policy. Adding a
layer to the package is then its file and a line in `mylayers/__init__.py`:
`all_examples()` finds it through `__all__`.
"""

from typing import NamedTuple

import keras
import numpy as np


class Example(NamedTuple):
    """A layer and what to call it on.

    Attributes:
        layer: The layer.
        inputs: An input shape, batch first, filled with random floats by
            `inputs_of`, or the inputs as they are (integer token ids).
        mask: A Keras padding mask passed to the call, or None.
        order: The highest derivative gradcheck checks: 1 or 2.

    Example:

    >>> import mylayers
    >>> example = mylayers.Linear.examples()[0]
    >>> type(example.layer).__name__, example.inputs, example.order
    ('Linear', (2, 4), 2)
    >>> inputs_of(example).shape
    (2, 4)
    """

    layer: keras.layers.Layer
    inputs: object
    mask: object = None
    order: int = 2


def inputs_of(example, seed=0):
    """`example.inputs`, a shape filled with random floats away from 0 (the
    kinks of quantizers and clipping sit there), or as they are."""
    if not isinstance(example.inputs, tuple):
        return example.inputs
    rng = np.random.default_rng(seed)
    shape = example.inputs
    return rng.uniform(0.1, 0.9, shape) * rng.choice([-1, 1], shape)


def public_layers():
    """The `keras.layers.Layer` classes in `mylayers.__all__`."""
    import mylayers  # Here: the layers import this module.

    return [
        getattr(mylayers, name)
        for name in mylayers.__all__
        if isinstance(getattr(mylayers, name), type)
        and issubclass(getattr(mylayers, name), keras.layers.Layer)
    ]


def all_examples(**kwargs):
    """Every public layer's examples, in `__all__`'s order; `kwargs` go to
    each layer's constructor."""
    found = []
    for cls in public_layers():
        if "examples" not in vars(cls):
            raise TypeError(
                f"mylayers.{cls.__name__} declares no examples: give it a "
                "classmethod examples(cls, **kwargs) returning "
                "[mylayers.Example(layer, input_shape)], as Linear does"
            )
        found += cls.examples(**kwargs)
    return found


# Left padding in the first row, right padding in the second, for examples
# of sequences of 3: the first query of the first row has no key to look at.
PADDING = np.array([[False, True, True], [True, True, False]])
