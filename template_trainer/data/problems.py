"""The errors of the data code: each one line, exit code 2."""

from template_trainer import errors


class DataError(errors.RunError):
    """A source of the user's own cannot be read or split: a missing or
    empty file, a non-numeric feature, a class too small to split, ...
    Raised before anything is written."""


class DatasetUnavailableError(errors.RunError):
    """A catalog dataset is not prepared and cannot be downloaded here."""
