"""The bundled `digits` dataset as a TFDS builder.

Importing this package registers the builder, so `tfds.load("digits")` works.
"""

from template_trainer.data.digits.builder import Digits

__all__ = ["Digits"]
