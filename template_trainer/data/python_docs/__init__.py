"""The bundled `python_docs` text corpus as a TFDS builder.

Importing this package registers the builder, so `tfds.load("python_docs")`
works, and gives the character vocabulary (`encode`, `decode`).
"""

from template_trainer.data.python_docs.builder import (
    PAD_ID,
    VOCABULARY,
    VOCABULARY_SIZE,
    PythonDocs,
    decode,
    encode,
)

__all__ = [
    "PAD_ID",
    "VOCABULARY",
    "VOCABULARY_SIZE",
    "PythonDocs",
    "decode",
    "encode",
]
