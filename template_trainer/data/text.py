"""Text for a character LM: `python_docs` (bundled) and `text:PATH`.

A text is cut into windows of `context_length` character ids, each target
the window shifted by one. `text:PATH` is a UTF-8 file; its vocabulary is
its own characters (`vocabulary.Vocabulary.of_text`), and its splits are
whole contiguous blocks (`splits.text_blocks`).
"""

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from template_trainer.data import splits, store
from template_trainer.data.problems import DataError

# The cached text is stored in pieces of this many characters.
_PIECE = 2048


def content_key(path):
    return store.content_key([path], path, "text")


def read(path, source):
    """The text of the file at `path`.

    Raises:
        DataError: the file is missing, empty or not UTF-8.
    """
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise DataError(
            f"{source}: no such file; expected a text file."
        ) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{source} is not UTF-8 text (byte {e.start} of {len(raw)}); "
            "expected a UTF-8 text file (convert it, e.g. with iconv)."
        ) from None
    if not text:
        raise DataError(f"{source} is empty; expected a UTF-8 text file.")
    return text


def features_spec():
    return tfds.features.FeaturesDict(
        {"index": np.int32, "text": tfds.features.Text()}
    )


def examples(text):
    """The TFDS examples of `text`: its pieces, numbered in order."""
    return [
        (index, {"index": index, "text": text[start : start + _PIECE]})
        for index, start in enumerate(range(0, len(text), _PIECE))
    ]


def stored_text(builder, split="train"):
    """The text of `split`, its pieces joined in order."""
    examples = tfds.as_numpy(
        builder.as_dataset(split=split, shuffle_files=False)
    )
    pieces = sorted((int(e["index"]), e["text"]) for e in examples)
    return b"".join(piece for _, piece in pieces).decode("utf-8")


def split_text(text, context_length, fraction, seed, source):
    """`{split: text}`: `text` cut by `splits.text_blocks`."""
    block, chosen = splits.text_blocks(
        len(text), context_length, fraction, seed, source
    )
    return {
        split: "".join(text[i * block : (i + 1) * block] for i in indices)
        for split, indices in chosen.items()
    }


def windows(stream, context_length):
    """`(ids, targets)`: the non-overlapping windows of `stream`, each
    character but the first predicted once."""
    count = (len(stream) - 1) // context_length
    end = count * context_length
    ids = stream[:end].reshape(count, context_length)
    targets = stream[1 : end + 1].reshape(count, context_length)
    return ids, targets


def random_windows(stream, context_length, batch_size, seed):
    """Maps a batch number to a batch of windows at random places.

    Stateless ops seeded by `(seed, batch number)`, as the image shifts:
    the checkpointed position of the counter alone decides the batch, so
    a resumed run sees the same text. The iterator's state is that
    counter, not a shuffle buffer of windows.
    """
    stream = tf.constant(stream)
    offsets = tf.range(context_length + 1, dtype=tf.int64)
    last_start = len(stream) - context_length  # exclusive

    def batch(index):
        starts = tf.random.stateless_uniform(
            [batch_size],
            seed=tf.stack([seed, index]),
            maxval=last_start,
            dtype=tf.int64,
        )
        windows = tf.gather(stream, starts[:, None] + offsets)
        return windows[:, :-1], windows[:, 1:]

    return batch
