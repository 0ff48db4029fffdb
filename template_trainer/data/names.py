"""The datasets `config.dataset` may name, checked without TensorFlow.

A name is a bundled or TFDS catalog dataset (`digits`, `mnist`, ...) or a
source of the user's own: `csv:PATH`, `imagefolder:DIR` or `text:PATH`,
the path relative to the current directory or absolute.
"""

import dataclasses
import os

# Image datasets, with the largest pixel value of each, used to scale
# pixels to [0, 1]; an image folder's pixels are 8-bit.
PIXEL_MAX = {
    "digits": 16.0,
    "mnist": 255.0,
    "fashion_mnist": 255.0,
    "cifar10": 255.0,
}
IMAGE_FOLDER_PIXEL_MAX = 255.0
TEXT_DATASETS = ("python_docs",)
DATASETS = (*PIXEL_MAX, *TEXT_DATASETS)
# Bundled with the repository: built offline.
OFFLINE = ("digits", "python_docs")
# Sources of one's own: `kind:path`, the path a file or a directory.
SOURCE_KINDS = {"csv": "file", "imagefolder": "directory", "text": "file"}


@dataclasses.dataclass(frozen=True)
class Source:
    """A source of the user's own: `kind` of `SOURCE_KINDS`, `path`
    absolute."""

    kind: str
    path: str


def source(dataset):
    """The `Source` that `dataset` names, or None for a catalog name."""
    if not isinstance(dataset, str) or ":" not in dataset:
        return None
    kind, path = dataset.split(":", 1)
    if kind not in SOURCE_KINDS:
        return None
    return Source(kind, os.path.abspath(os.path.expanduser(path)))


def is_text(dataset):
    """Whether `dataset` is read as text, for a character LM."""
    own = source(dataset)
    return own.kind == "text" if own else dataset in TEXT_DATASETS


def problem(dataset):
    """What is wrong with `dataset` as `config.dataset`, in words that end
    `config.dataset=... is invalid: `; None if nothing is."""
    expected = (
        f"expected one of {', '.join(sorted(DATASETS))}, or a source of "
        "your own: csv:FILE, imagefolder:DIR or text:FILE"
    )
    if not isinstance(dataset, str):
        return expected
    own = source(dataset)
    if own is None:
        return None if dataset in DATASETS else expected
    shown = dataset.split(":", 1)[1]
    if not shown:
        return f"expected a path after '{own.kind}:'"
    want = SOURCE_KINDS[own.kind]
    exists = os.path.isdir if want == "directory" else os.path.isfile
    if not exists(own.path):
        found = "no such path"
        if os.path.exists(own.path):
            found = "a directory" if want == "file" else "a file"
        return f"{own.path} is {found}; expected a {want}"
    return None
