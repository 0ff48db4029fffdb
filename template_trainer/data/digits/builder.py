"""TFDS builder for the 8x8 handwritten digits shipped with the repository."""

import gzip
import hashlib
import os

import numpy as np
import tensorflow_datasets as tfds

_CSV = os.path.join(os.path.dirname(__file__), "digits.csv.gz")
_SHA256 = "09f66e6debdee2cd2b5ae59e0d6abbb73fc2b0e0185d2e1957e9ebb51e23aa22"
# Every fifth example of each class, in file order, goes to the test split.
_TEST_EVERY = 5

_CITATION = """\
@misc{alpaydin1998digits,
  author = {Alpaydin, E. and Kaynak, C.},
  title = {Optical Recognition of Handwritten Digits},
  year = {1998},
  howpublished = {UCI Machine Learning Repository},
  doi = {10.24432/C50P49}
}"""


def read_csv(path=_CSV):
    """Returns `(images, labels)`: uint8 `(N, 8, 8, 1)` and int64 `(N,)`.

    Raises:
      ValueError: if the file's checksum or layout is not the expected one.
    """
    with open(path, "rb") as f:
        raw = f.read()
    digest = hashlib.sha256(raw).hexdigest()
    if digest != _SHA256:
        raise ValueError(
            f"{path} is not the bundled digits file: expected sha256 "
            f"{_SHA256}, received {digest}."
        )
    rows = np.loadtxt(
        gzip.decompress(raw).decode().splitlines(),
        delimiter=",",
        dtype=np.int64,
    )
    if rows.ndim != 2 or rows.shape[1] != 65:
        raise ValueError(
            f"{path} must have 65 columns per line. "
            f"Received shape {rows.shape}."
        )
    images = rows[:, :64].reshape(-1, 8, 8, 1).astype(np.uint8)
    return images, rows[:, 64]


def test_mask(labels):
    """True for the test examples: each class's 5th, 10th, ... in file order.

    Stratified, so every class has a fifth of its examples in the test split
    (the file is not in random order: taking every fifth line instead gives
    21 test examples of one class and 52 of another).
    """
    rank_in_class = np.zeros(len(labels), dtype=np.int64)
    for label in np.unique(labels):
        where = np.flatnonzero(labels == label)
        rank_in_class[where] = np.arange(len(where))
    return rank_in_class % _TEST_EVERY == _TEST_EVERY - 1


class Digits(tfds.core.GeneratorBasedBuilder):
    """1,797 handwritten 8x8 digits (pixels 0..16), bundled and offline."""

    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {
        "1.0.0": "First release: every fifth line is a test example.",
        "1.1.0": "Stratified split: every fifth example of each class.",
    }

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                "8x8 handwritten digits, integer pixels 0..16 (UCI Optical "
                "Recognition of Handwritten Digits, test set). CC BY 4.0."
            ),
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(8, 8, 1)),
                    "label": tfds.features.ClassLabel(num_classes=10),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://doi.org/10.24432/C50P49",
            citation=_CITATION,
            license="CC BY 4.0",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # The data ships with the package: nothing to download.
        images, labels = read_csv()
        is_test = test_mask(labels)
        return {
            "train": self._generate_examples(images, labels, ~is_test),
            "test": self._generate_examples(images, labels, is_test),
        }

    def _generate_examples(self, images, labels, mask):
        for index in np.flatnonzero(mask):
            yield (
                int(index),
                {"image": images[index], "label": int(labels[index])},
            )
