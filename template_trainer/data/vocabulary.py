"""The characters of a text source, as the ids a language model reads.

Imports no TensorFlow: `template_trainer.sample` encodes its prompt with
it before loading the model.
"""

import numpy as np

PAD_ID = 0


class Vocabulary:
    """Id 0 pads; ids 1.. are `characters`, in their order.

    The interface of the bundled `template_trainer.data.python_docs`:
    `VOCABULARY`, `VOCABULARY_SIZE`, `encode`, `decode`.
    """

    def __init__(self, characters):
        self.VOCABULARY = characters
        self.VOCABULARY_SIZE = len(characters) + 1  # with padding
        codes = np.array([ord(c) for c in characters], np.int64)
        self._order = np.argsort(codes)
        self._sorted = codes[self._order]

    @classmethod
    def of_text(cls, text):
        """The vocabulary of `text`'s characters, sorted."""
        return cls("".join(sorted(set(text))))

    def encode(self, text):
        """The ids of `text`'s characters, int32.

        Raises:
            ValueError: `text` holds a character outside the vocabulary.
        """
        codes = np.frombuffer(text.encode("utf-32-le"), np.uint32)
        where = np.searchsorted(self._sorted, codes)
        where = np.minimum(where, max(len(self._sorted) - 1, 0))
        known = self._sorted[where] == codes if len(self._sorted) else codes < 0
        if not known.all():
            unknown = sorted(set(np.array(list(text))[~known]))
            raise ValueError(
                "characters outside the vocabulary of the text the model "
                f"was trained on: {''.join(unknown)!r}."
            )
        return (self._order[where] + 1).astype(np.int32)

    def decode(self, ids):
        """The text of `ids`; padding ids are dropped."""
        chars = self.VOCABULARY
        return "".join(chars[i - 1] for i in np.asarray(ids).ravel() if i)
