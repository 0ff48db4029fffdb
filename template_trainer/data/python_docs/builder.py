"""TFDS builder for the Python documentation text in the repository."""

import gzip
import hashlib
import os

import numpy as np
import tensorflow_datasets as tfds

_CORPUS = os.path.join(os.path.dirname(__file__), "python_docs.txt.gz")
_SHA256 = "bffabe382488e40a5f2bbc468954f7aff4bd9237f3b7b18695757ab1ef49fb90"
# The corpus is cut into blocks of this many characters, and blocks are
# dealt to splits in turn: of every 20, 18 go to train, then one to
# validation and one to test. Whole blocks keep each split's text
# contiguous, so no window of one split overlaps another's.
BLOCK_LENGTH = 2048
_CYCLE = 20

# Id 0 pads; ids 1.. are these characters (the corpus is folded to ASCII).
PAD_ID = 0
VOCABULARY = "\n" + "".join(chr(c) for c in range(32, 127))
VOCABULARY_SIZE = len(VOCABULARY) + 1  # with padding

_CITATION = """\
@manual{python311docs,
  title = {The Python Language Reference, Tutorial, HOWTOs and FAQs,
           version 3.11},
  author = {{Python Software Foundation}},
  year = {2023},
  url = {https://docs.python.org/3.11/}
}"""


def encode(text):
    """The ids of `text`'s characters, int32.

    Raises:
        ValueError: `text` holds a character outside `VOCABULARY`.
    """
    ids = np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32)
    table = np.zeros(256, np.int32)
    for i, char in enumerate(VOCABULARY):
        table[ord(char)] = i + 1
    encoded = table[ids]
    if len(ids) != len(text) or not encoded.all():
        unknown = sorted({c for c in text if c not in VOCABULARY})
        raise ValueError(
            f"characters outside the vocabulary (printable ASCII and "
            f"newline): {''.join(unknown)!r}."
        )
    return encoded


def decode(ids):
    """The text of `ids`; padding ids are dropped."""
    return "".join(VOCABULARY[i - 1] for i in np.asarray(ids).ravel() if i)


def read_corpus(path=_CORPUS):
    """The corpus, a str.

    Raises:
        ValueError: the file is not the bundled corpus.
    """
    with open(path, "rb") as f:
        raw = f.read()
    digest = hashlib.sha256(raw).hexdigest()
    if digest != _SHA256:
        raise ValueError(
            f"{path} is not the bundled corpus: expected sha256 {_SHA256}, "
            f"received {digest}."
        )
    return gzip.decompress(raw).decode("ascii")


def split_of_block(index):
    """ "train", "validation" or "test": where block `index` goes."""
    position = index % _CYCLE
    if position == _CYCLE - 2:
        return "validation"
    if position == _CYCLE - 1:
        return "test"
    return "train"


class PythonDocs(tfds.core.GeneratorBasedBuilder):
    """1.46 M characters of the Python 3.11 documentation, bundled, offline."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Tutorial, HOWTOs, FAQ and language reference."}

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                "The Python 3.11 tutorial, HOWTOs, FAQ and language "
                "reference as plain ASCII text, in blocks of "
                f"{BLOCK_LENGTH} characters (the last one shorter), "
                "numbered in corpus order. PSF License Agreement."
            ),
            features=tfds.features.FeaturesDict(
                {
                    "index": np.int32,  # the block's place in the corpus
                    "text": tfds.features.Text(),
                }
            ),
            homepage="https://docs.python.org/3.11/",
            citation=_CITATION,
            license="PSF License Agreement for Python 3.11",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # The data ships with the package: nothing to download.
        text = read_corpus()
        blocks = [
            text[start : start + BLOCK_LENGTH]
            for start in range(0, len(text), BLOCK_LENGTH)
        ]
        return {
            split: self._generate_examples(blocks, split)
            for split in ("train", "validation", "test")
        }

    def _generate_examples(self, blocks, split):
        for index, block in enumerate(blocks):
            if split_of_block(index) == split:
                yield index, {"index": index, "text": block}
