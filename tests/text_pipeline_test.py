"""The input pipeline of text datasets: `python_docs` cut into windows.

What a language model trains and is scored on: windows whose targets are
the next characters, validation and test text that is exactly its split's
and never the training split's, and training batches that depend only on
the seed and the batch number, so a checkpointed iterator resumes them.
"""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from run_helpers import corpus_splits

from template_trainer.data import pipeline
from template_trainer.data import text as text_source
from template_trainer.data.python_docs import builder as python_docs


def _create(context_length=64, batch_size=8, seed=0, **overrides):
    kwargs = dict(
        dataset="python_docs",
        data_dir=None,  # conftest's TFDS_DATA_DIR
        download=False,
        val_fraction=0.1,
        batch_size=batch_size,
        eval_batch_size=100,
        shuffle_buffer=10_000,
        seed=seed,
        context_length=context_length,
    )
    kwargs.update(overrides)
    return pipeline.create_datasets(**kwargs)


def _pairs(dataset):
    """All `(ids, targets)` of `dataset`, batches concatenated."""
    batches = list(dataset.as_numpy_iterator())
    return tuple(np.concatenate([b[i] for b in batches]) for i in (0, 1))


def _batches(dataset, n):
    return [(ids.numpy(), targets.numpy()) for ids, targets in dataset.take(n)]


@pytest.fixture(scope="session")
def splits():
    return corpus_splits()


@pytest.fixture(scope="session")
def text():
    return _create()


def test_info_of_python_docs_at_context_128(splits):
    info = _create(context_length=128).info
    # configs/lm.py's comment: 323 steps of 32 windows an epoch.
    assert info == pipeline.DatasetInfo(
        input_shape=(128,),
        num_classes=97,
        num_train=10_312,
        num_val=559,
        num_test=559,
        val_source="validation",
        kind="text",
    )
    # Windows of 128 characters plus the next one, each character once.
    for name, split in (
        ("num_train", "train"),
        ("num_val", "validation"),
        ("num_test", "test"),
    ):
        assert getattr(info, name) == (len(splits[split]) - 1) // 128


def test_splits_are_disjoint_blocks_that_make_the_corpus(text):
    del text  # prepared the dataset
    builder = tfds.builder("python_docs")
    blocks = {}
    for split in ("train", "validation", "test"):
        examples = builder.as_dataset(split=split, shuffle_files=False)
        for example in tfds.as_numpy(examples):
            index = int(example["index"])
            assert index not in blocks, f"block {index} is in two splits"
            assert python_docs.split_of_block(index) == split
            blocks[index] = example["text"].decode()
    assert sorted(blocks) == list(range(len(blocks)))
    corpus = python_docs.read_corpus()
    assert "".join(blocks[i] for i in sorted(blocks)) == corpus


@pytest.mark.parametrize("split", ["val", "test"])
def test_evaluation_windows_are_the_split_text_in_order(text, splits, split):
    ids, targets = _pairs(getattr(text, split))
    count = getattr(text.info, f"num_{split}")
    assert ids.shape == targets.shape == (count, 64)
    assert ids.dtype == np.int32 and ids.min() >= 1 and ids.max() <= 96
    expected = splits["validation" if split == "val" else "test"]
    # Consecutive, non-overlapping windows: the text, less its tail.
    decoded = python_docs.decode(ids)
    assert decoded == expected[: len(decoded)]
    assert len(expected) - 64 <= len(decoded) < len(expected)
    # Each target is the next character: the same text, one later.
    next_text = expected[1 : len(ids) * 64 + 1]
    assert python_docs.decode(targets) == next_text


def test_training_windows_are_training_text_and_its_next_characters(
    text, splits
):
    for ids, targets in _batches(text.train, 2):
        assert ids.shape == targets.shape == (8, 64)
        np.testing.assert_array_equal(ids[:, 1:], targets[:, :-1])
        for row_ids, row_targets in zip(ids, targets):
            window = python_docs.decode(
                np.concatenate([row_ids, row_targets[-1:]])
            )
            assert window in splits["train"]
            assert window not in splits["validation"]


def test_training_windows_start_anywhere_up_to_the_last_full_one():
    """On a 10-id text, 8-id windows and their targets fit at two places
    only: both are drawn, and nothing past the end."""
    draw = text_source.random_windows(
        np.arange(1, 11, dtype=np.int32),
        context_length=8,
        batch_size=64,
        seed=tf.constant(0, tf.int64),
    )
    ids, targets = (t.numpy() for t in draw(tf.constant(0, tf.int64)))
    assert sorted({int(row[0]) for row in ids}) == [1, 2]
    np.testing.assert_array_equal(ids, ids[:, :1] + np.arange(8))
    np.testing.assert_array_equal(targets, ids + 1)


def test_training_batches_are_a_function_of_seed_and_position(text):
    first = _batches(text.train, 3)
    again = _batches(_create(seed=0).train, 3)
    other = _batches(_create(seed=1).train, 3)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    for a, b in zip(first, other, strict=True):
        assert not np.array_equal(a[0], b[0])
    # Position: each batch is drawn anew, not the first one again.
    assert not np.array_equal(first[0][0], first[1][0])


def test_restored_iterator_continues_with_the_same_batches(tmp_path):
    iterator = iter(_create().train)
    for _ in range(3):
        next(iterator)
    checkpoint = tf.train.Checkpoint(iterator=iterator)
    path = checkpoint.write(str(tmp_path / "iterator"))
    expected = [next(iterator)[0].numpy() for _ in range(2)]

    restored = iter(_create().train)
    tf.train.Checkpoint(iterator=restored).read(path).assert_consumed()
    for batch in expected:
        np.testing.assert_array_equal(next(restored)[0].numpy(), batch)


def test_training_windows_have_no_autotuning_model(text):
    """As `input_pipeline_test.py`'s for images: the text's training stream,
    counted windows, is freed at once when its run is dropped."""
    overfit = _create(overfit_batches=2)
    for data in (text, overfit):
        assert data.train.options().autotune.enabled is False


def test_overfit_batches_repeats_the_first_batches(text):
    data = _create(overfit_batches=2)
    assert data.info == dataclasses.replace(
        text.info, num_train=2 * 8, num_val=2 * 8
    )
    first_two = _batches(text.train, 2)
    cycle = _batches(data.train, 5)
    for got, index in zip(cycle, [0, 1, 0, 1, 0]):
        np.testing.assert_array_equal(got[0], first_two[index][0])
        np.testing.assert_array_equal(got[1], first_two[index][1])
    # Validation is those batches: what the model must drive to ~0 loss.
    val = _batches(data.val, 3)
    assert len(val) == 2
    for got, want in zip(val, first_two):
        np.testing.assert_array_equal(got[0], want[0])
