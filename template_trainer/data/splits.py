"""The validation and test splits a source without them gives up.

A catalog dataset without a validation split gives up `validation_mask`'s
evenly spread slice of its training split. A source of the user's own
gives up, from its training split, `val_fraction` of each class to
validation and, when it has no test split either, as much again to test
(`holdout_masks`, drawn by the seed); a text gives up whole contiguous
blocks (`text_blocks`).
"""

import numpy as np

from template_trainer.data.problems import DataError

# A text is cut into blocks of this many characters (fewer for a short
# text: `text_blocks`), the unit its splits are made of.
BLOCK_LENGTH = 2048
_BLOCKS_IN_SHORT_TEXT = 20


def validation_mask(labels, fraction):
    """True for the examples of `labels` that form the validation slice.

    Stratified and deterministic: within each class, in the split's order,
    the example of rank r is taken when floor((r + 1) * fraction) exceeds
    floor(r * fraction), so every class gives up the same fraction of its
    examples (to within one), spread evenly through the file.
    """
    labels = np.asarray(labels)
    rank_in_class = np.zeros(len(labels), dtype=np.int64)
    for label in np.unique(labels):
        where = np.flatnonzero(labels == label)
        rank_in_class[where] = np.arange(len(where))
    return np.floor((rank_in_class + 1) * fraction) > np.floor(
        rank_in_class * fraction
    )


def holdout_masks(labels, fractions, seed, label_names, source):
    """`{split: mask}`: the examples of `labels` each split takes.

    Stratified: of each class's n examples, split s takes
    max(1, round(n * fractions[s])), drawn by `seed` (and the class), so
    the same seed takes the same examples; the rest stay in training.

    Args:
        labels: Class ids of the training split, in order.
        fractions: `{split: fraction}`, e.g. `{"validation": 0.1}`.
        seed: The run's seed.
        label_names: The names of the class ids, for messages.
        source: What is split, for messages (`csv:moons.csv`).

    Raises:
        DataError: a class has too few examples to give one to each split
            and keep one for training.
    """
    labels = np.asarray(labels)
    masks = {split: np.zeros(len(labels), bool) for split in fractions}
    for label in range(len(label_names)):
        where = np.flatnonzero(labels == label)
        counts = [max(1, round(len(where) * f)) for f in fractions.values()]
        if sum(counts) >= len(where):
            raise DataError(
                f"{source}: class {label_names[label]!r} has "
                f"{len(where)} example(s), too few to split: it must give "
                f"{' and '.join(map(str, counts))} to "
                f"{' and '.join(fractions)} and keep one for training; "
                "add examples of it (every class needs at least one "
                "for each split)."
            )
        rng = np.random.default_rng([seed, label])
        where = where[rng.permutation(len(where))]
        start = 0
        for split, count in zip(fractions, counts, strict=True):
            masks[split][where[start : start + count]] = True
            start += count
    return masks


def text_blocks(length, context_length, fraction, seed, source):
    """`(block_length, {split: sorted block indices})` for a text of
    `length` characters.

    Blocks are `BLOCK_LENGTH` characters, or for a text shorter than
    `_BLOCKS_IN_SHORT_TEXT` such blocks a twentieth of it, and never
    shorter than one window (`context_length` + 1). Validation and test
    each take `fraction` of the whole blocks (at least one), drawn by
    `seed`; training keeps the rest, the last, partial block included.

    Raises:
        DataError: the text is too short to give each split one window.
    """
    window = context_length + 1
    block = min(BLOCK_LENGTH, max(window, length // _BLOCKS_IN_SHORT_TEXT))
    whole = length // block
    take = max(1, round(whole * fraction))
    if whole < 2 * take + 1:
        raise DataError(
            f"{source} holds {length} characters, shorter than one window "
            f"for each of train, validation and test: expected at least "
            f"{3 * window} (3 x (config.context_length + 1)); use a longer "
            "text or a smaller config.context_length."
        )
    order = np.random.default_rng(seed).permutation(whole)
    held = {"validation": order[:take], "test": order[take : 2 * take]}
    train = np.setdiff1d(np.arange(-(-length // block)), order[: 2 * take])
    return block, {
        "train": train,
        **{split: np.sort(blocks) for split, blocks in held.items()},
    }
