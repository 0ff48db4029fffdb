"""The bundled `digits` dataset as a TFDS builder.

Importing this package registers the builder, so `tfds.load("digits")` works.
"""

from digits_dataset.builder import Digits

__all__ = ["Digits"]
