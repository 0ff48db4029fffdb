"""A count-based bigram baseline for the `python_docs` character LM.

  python benchmarks/bigram_baseline.py           # validation bpc, k chosen
  python benchmarks/bigram_baseline.py --test    # ... and test bpc, once
  python benchmarks/bigram_baseline.py --quick   # a coarse k grid (smoke)

What it measures: bits per character of `p(c_t | c_{t-1})` estimated by
counting character pairs in the train split, with add-k (Laplace for
k = 1) smoothing over the 96 characters of the vocabulary (ids 1..96; id
0, padding, never occurs in text and gets no mass). The splits are the
dataset's: the corpus cut into `BLOCK_LENGTH`-character blocks, block `i`
in `split_of_block(i)`, each split's blocks joined in block order (as the
TFDS builder yields them). A split's first character has no predecessor
and is not scored: bpc is over its `n - 1` transitions. Transitions that
cross from one block into the next block of the same split (which are not
adjacent in the corpus) are counted and scored like the others: 1 in 2048.

`k` is chosen on the validation split only (a log grid, then a golden
section search in log k); the test split is read only with `--test`, after
`k` is fixed. Also printed for scale: the unigram model (add-k, same k
search) and the uniform model, log2(96) = 6.585 bits.
"""

import argparse
import math
import time

import numpy as np

# Imports TensorFlow Datasets (and so TensorFlow: ~5 s) on the way.
from template_trainer.data.python_docs.builder import (
    BLOCK_LENGTH,
    VOCABULARY,
    encode,
    read_corpus,
    split_of_block,
)

CHARACTERS = len(VOCABULARY)  # 96: ids 1..96


def split_ids(text):
    """{split: ids (int64, 0-based characters)} in block order."""
    blocks = {"train": [], "validation": [], "test": []}
    for index, start in enumerate(range(0, len(text), BLOCK_LENGTH)):
        blocks[split_of_block(index)].append(text[start : start + BLOCK_LENGTH])
    return {
        split: encode("".join(parts)).astype(np.int64) - 1
        for split, parts in blocks.items()
    }


def pair_counts(ids):
    """(C, C) counts of (previous, next) pairs."""
    flat = np.bincount(ids[:-1] * CHARACTERS + ids[1:], minlength=CHARACTERS**2)
    return flat.reshape(CHARACTERS, CHARACTERS).astype(np.float64)


def bigram_bpc(train_pairs, eval_pairs, k):
    """Bits per character of the add-k bigram model on `eval_pairs`."""
    rows = train_pairs + k
    log_p = np.log2(rows) - np.log2(rows.sum(axis=1, keepdims=True))
    return -(eval_pairs * log_p).sum() / eval_pairs.sum()


def unigram_bpc(train_counts, eval_counts, k):
    p = (train_counts + k) / (train_counts.sum() + k * CHARACTERS)
    return -(eval_counts * np.log2(p)).sum() / eval_counts.sum()


def choose_k(score, quick):
    """The k in [1e-6, 10] that minimizes `score(k)` (validation bpc)."""
    grid = np.logspace(-6, 1, 15 if quick else 71)
    scores = [score(k) for k in grid]
    best = int(np.argmin(scores))
    if quick:
        return grid[best]
    # Golden section in log k between the grid neighbours of the best.
    lo = math.log(grid[max(best - 1, 0)])
    hi = math.log(grid[min(best + 1, len(grid) - 1)])
    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(40):
        a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        if score(math.exp(a)) < score(math.exp(b)):
            hi = b
        else:
            lo = a
    return math.exp((lo + hi) / 2)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--test", action="store_true", help="also report test bpc (once)"
    )
    parser.add_argument("--quick", action="store_true", help="coarse k grid")
    args = parser.parse_args()

    start = time.perf_counter()
    ids = split_ids(read_corpus())
    train, val = ids["train"], ids["validation"]
    train_pairs, val_pairs = pair_counts(train), pair_counts(val)
    k = choose_k(lambda k: bigram_bpc(train_pairs, val_pairs, k), args.quick)
    train_uni = np.bincount(train, minlength=CHARACTERS).astype(np.float64)
    val_uni = np.bincount(val, minlength=CHARACTERS).astype(np.float64)
    k_uni = choose_k(lambda k: unigram_bpc(train_uni, val_uni, k), args.quick)

    sizes = ", ".join(f"{name} {len(v):,}" for name, v in ids.items())
    print(f"characters: {sizes} (vocabulary {CHARACTERS} + padding)")
    print(
        f"unseen in train: {int((train_pairs == 0).sum())} of "
        f"{CHARACTERS**2} pairs; validation transitions whose pair train "
        f"never saw: {int(val_pairs[train_pairs == 0].sum())} of "
        f"{int(val_pairs.sum()):,}"
    )
    print(f"uniform:            {math.log2(CHARACTERS):.4f} bpc")
    unigram = unigram_bpc(train_uni, val_uni, k_uni)
    print(
        f"unigram, add-k:     validation {unigram:.4f} bpc (k = {k_uni:.3g},"
        " chosen on validation)"
    )
    for name, kk in (("Laplace (k = 1)", 1.0), ("add-k, chosen", k)):
        print(
            f"bigram, {name:18}validation "
            f"{bigram_bpc(train_pairs, val_pairs, kk):.4f} bpc (k = {kk:.4g})"
        )
    print(
        f"bigram, train split (k = {k:.4g}): "
        f"{bigram_bpc(train_pairs, train_pairs, k):.4f} bpc"
    )
    if args.test:
        test_pairs = pair_counts(ids["test"])
        print(
            f"bigram, add-k, TEST: {bigram_bpc(train_pairs, test_pairs, k):.4f}"
            f" bpc (k = {k:.4g} from validation)"
        )
    print(f"({time.perf_counter() - start:.2f} s)")


if __name__ == "__main__":
    main()
