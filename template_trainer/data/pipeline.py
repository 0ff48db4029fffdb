"""Input pipeline: every dataset as `tf.data` pipelines, in three splits.

`train` is what the model learns from, `val` what the trainer evaluates
during training and selects the best checkpoint on, and `test` what it
evaluates once, at the end. A source without a validation (or test) split
gives one up from its training split (`splits`). A text dataset is cut
into windows of characters, each target the window shifted by one.
"""

import dataclasses
import os

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from template_trainer.data import (
    catalog,
    image_folder,
    names,
    python_docs,
    splits,
    store,
    tabular,
    text,
)
from template_trainer.data.problems import DataError, DatasetUnavailableError
from template_trainer.data.splits import validation_mask
from template_trainer.data.vocabulary import Vocabulary

__all__ = [
    "DataError",
    "DatasetInfo",
    "DatasetUnavailableError",
    "Datasets",
    "create_datasets",
    "shift_images",
    "validation_mask",
]

# Names TFDS datasets give their own validation split.
VALIDATION_SPLITS = ("validation", "val")
_AUGMENT_BATCHES = 16


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    input_shape: tuple
    num_classes: int
    num_train: int
    num_val: int
    num_test: int
    # Where `val` comes from: the dataset's own split, or "train" (a slice).
    val_source: str
    # "image": (image, label) examples; "tabular": (feature row, label);
    # "text": (ids, next ids) windows, `input_shape` (context_length,),
    # `num_classes` the vocabulary size, `num_*` counted in windows.
    kind: str = "image"
    # The class names, in class-id order (labelled datasets).
    label_names: tuple = ()
    # "tabular": `(mean, variance)` of each feature over the training
    # split, for the model's `keras.layers.Normalization`.
    normalization: tuple | None = None
    # A source of one's own: the hash of its content (`store`).
    content_key: str = ""
    # `text:PATH`: the characters of ids 1.. (id 0 pads).
    vocabulary: str = ""

    def record(self):
        """What the workdir keeps of the data (`data.json`): its content
        key, class names and vocabulary."""
        return {
            "content_key": self.content_key,
            "label_names": list(self.label_names),
            "vocabulary": self.vocabulary,
        }


@dataclasses.dataclass(frozen=True)
class Datasets:
    train: tf.data.Dataset  # batches of `batch_size`, forever
    val: tf.data.Dataset  # one pass
    test: tf.data.Dataset  # one pass
    info: DatasetInfo


# `_labels` by prepared dataset: a prepared TFDS directory is never
# rewritten (a source of one's own is stored under its content's hash), and
# reading the labels is most of the cost of building a run's data again in
# the same process (a notebook, the tests).
_LABELS = {}


def _labels(builder, split, input_key):
    """The labels of `split`, in order, without decoding the inputs (read
    once per prepared dataset and process; read-only)."""
    splits_ = builder.info.splits
    if split not in splits_ or not splits_[split].num_examples:
        # Not a prepared split (`tfds.testing.mock_data`): read each time.
        return _read_labels(builder, split, input_key)
    key = (
        os.path.realpath(builder.data_dir),
        split,
        splits_[split].num_examples,
        input_key,
    )
    if key not in _LABELS:
        labels = _read_labels(builder, split, input_key)
        labels.setflags(write=False)
        _LABELS[key] = labels
    return _LABELS[key]


def _read_labels(builder, split, input_key):
    decoders = None
    if isinstance(builder.info.features[input_key], tfds.features.Image):
        decoders = {input_key: tfds.decode.SkipDecoding()}
    dataset = builder.as_dataset(
        split=split, shuffle_files=False, decoders=decoders
    )
    labels = dataset.map(lambda example: example["label"]).batch(4096)
    return np.concatenate([b for b in tfds.as_numpy(labels)] or [[]])


def shift_images(images, choice, max_shift):
    """Shifts image i of `images` by shift number `choice[i]`.

    Shift k moves the image by (k // n - max_shift, k % n - max_shift)
    pixels (rows, columns), n = 2 * max_shift + 1, filling with zeros:
    output pixel (r, c) is input pixel (r + dy, c + dx), or 0 outside.
    Vectorised over the batch, in a handful of ops: each shift is one row
    of a constant table of indices into the flattened padded image, and one
    gather applies them all. (A per-image crop in `map` made the pipeline
    slower than the digits training step it feeds.)

    Args:
        images: `(batch, height, width, channels)` images.
        choice: `(batch,)` int32 shift numbers in [0, n * n).
        max_shift: The largest shift per axis, in pixels.
    """
    size = 2 * max_shift + 1
    height, width, channels = images.shape[1:]
    padded_width = width + 2 * max_shift
    # table[k] lists, for shift k, where each output value comes from in the
    # flattened padded image.
    rows, cols, chans = np.meshgrid(
        np.arange(height), np.arange(width), np.arange(channels), indexing="ij"
    )
    table = np.stack(
        [
            ((rows + dy) * padded_width + cols + dx) * channels + chans
            for dy in range(size)
            for dx in range(size)
        ]
    ).reshape(size * size, -1)
    padded = tf.pad(images, [[0, 0], [max_shift] * 2, [max_shift] * 2, [0, 0]])
    flat = tf.reshape(padded, [tf.shape(images)[0], -1])
    sources = tf.gather(tf.constant(table, tf.int32), choice)
    shifted = tf.gather(flat, sources, batch_dims=1)
    return tf.reshape(shifted, tf.shape(images))


def _random_shift(max_shift, seed):
    """`shift_images` with a random shift per image.

    Stateless ops seeded by the batch's position in the stream make the
    shifts a function of (seed, position): the checkpointed iterator
    position alone decides them, so a resumed run sees the same images.
    """
    size = 2 * max_shift + 1

    def shift(index, batch):
        images, labels = batch
        choice = tf.random.stateless_uniform(
            tf.shape(images)[:1],
            seed=tf.stack([seed, index]),
            maxval=size * size,
            dtype=tf.int32,
        )
        return shift_images(images, choice, max_shift), labels

    return shift


def _for_training(dataset):
    """`dataset` without tf.data's autotuning model.

    In TensorFlow 2.21 an iterator's destructor waits for the autotuner's
    thread, which sleeps until its next round (rounds grow to 60 s apart)
    instead of waking at once: freeing an iterator that has run for a
    minute or more blocks for up to a minute (seen: 32 and 37 s;
    `benchmarks/iterator_teardown_bench.py`). The training iterator lives
    as long as its run, and a notebook or test frees it when it drops the
    run. Without the model, a parallel map runs on one thread per core (at
    most 16) and prefetch buffers still size themselves; the default job
    trains as fast (benchmarks/RESULTS.md)."""
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)


def _evaluation(dataset, batch_size):
    options = tf.data.Options()
    # Several workers split an evaluation set by example: it may be a
    # single file.
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.DATA
    )
    return (
        dataset.cache()
        .batch(batch_size)
        .prefetch(tf.data.AUTOTUNE)
        .with_options(options)
    )


def _num_examples(builder, split, dataset):
    splits_ = builder.info.splits
    if split in splits_ and splits_[split].num_examples:
        return splits_[split].num_examples
    # tfds.testing.mock_data may leave `info.splits` empty.
    return int(dataset.reduce(0, lambda n, _: n + 1))


def _kept(dataset, mask, keep):
    """The examples of `dataset` where `mask` is `keep`."""
    mask = tf.constant(mask)
    return (
        dataset.enumerate()
        .filter(lambda i, _: tf.equal(tf.gather(mask, i), keep))
        .map(lambda _, example: example)
    )


def _own_split_masks(labels, own_splits, val_fraction, seed, names_, source):
    """`holdout_masks` for the splits `own_splits` lacks, or {}."""
    fractions = {}
    if not any(s in own_splits for s in VALIDATION_SPLITS):
        fractions["validation"] = val_fraction
    if "test" not in own_splits:
        # As much again: the rule of thumb of equal validation and test.
        fractions["test"] = val_fraction
    if not fractions:
        return {}
    return splits.holdout_masks(labels, fractions, seed, names_, source)


def _split(builder, load, input_key, val_fraction, seed, own):
    """`(train, val, test, num_train, num_val, num_test, val_source)`,
    unbatched: the dataset's own splits, and what its training split
    gives up for those it lacks (`own`: a source of the user's own, else
    a catalog dataset, which always has a test split)."""
    available = list(builder.info.splits)
    train = load("train")
    num_train = _num_examples(builder, "train", train)
    val_name = next((s for s in VALIDATION_SPLITS if s in available), None)
    if own:
        masks = _own_split_masks(
            _labels(builder, "train", input_key),
            available,
            val_fraction,
            seed,
            builder.info.features["label"].names,
            own,
        )
    elif val_name is None:
        masks = {
            "validation": validation_mask(
                _labels(builder, "train", input_key), val_fraction
            )
        }
    else:
        masks = {}
    parts, counts = {}, {}
    for split in ("validation", "test"):
        if split in masks:
            parts[split] = _kept(train, masks[split], True)
            counts[split] = int(masks[split].sum())
        else:
            name = val_name if split == "validation" else split
            parts[split] = load(name)
            counts[split] = _num_examples(builder, name, parts[split])
    if masks:
        held = np.logical_or.reduce(list(masks.values()))
        train = _kept(train, held, False)
        num_train -= int(held.sum())
    return (
        train,
        parts["validation"],
        parts["test"],
        num_train,
        counts["validation"],
        counts["test"],
        "train" if "validation" in masks else val_name,
    )


def _own_labeled(
    own, dataset, data_dir, label_column, image_size, val_fraction, seed
):
    """The cached TFDS builder of a CSV or image folder, converted first if
    it is not cached yet; every check of the data is made before anything
    is written."""
    if own.kind == "csv":
        key = tabular.content_key(own.path, label_column)
    else:
        found = image_folder.layout(own.path, dataset)
        key = image_folder.content_key(found, own.path, image_size)
    builder = store.cached(own.kind, key, data_dir)
    if builder is not None:
        return builder, key
    if own.kind == "csv":
        features, labels, label_names, _ = tabular.read(
            own.path, label_column, dataset
        )
        arrays = {"train": (features, labels)}
        spec = tabular.features_spec(features.shape[1], label_names)
        convert = tabular.examples
    else:
        arrays, shape, label_names = image_folder.read(
            found, image_size, dataset
        )
        spec = image_folder.features_spec(shape, label_names)
        convert = image_folder.examples
    _own_split_masks(
        arrays["train"][1],
        list(arrays),
        val_fraction,
        seed,
        label_names,
        dataset,
    )
    return (
        store.save(
            own.kind,
            key,
            data_dir,
            spec,
            {split: convert(*pair) for split, pair in arrays.items()},
            f"{dataset}, converted by template_trainer.data.",
        ),
        key,
    )


def _labeled(
    dataset, data_dir, download, val_fraction, seed, label_column, image_size
):
    """`(train, val, test, DatasetInfo)` of a labelled dataset, unbatched:
    (inputs, label) pairs, images scaled to [0, 1]."""
    own = names.source(dataset)
    key = ""
    if own is None:
        builder = catalog.prepare(dataset, data_dir, download)
        input_key = "image"
        scale = names.PIXEL_MAX[dataset]
    else:
        builder, key = _own_labeled(
            own, dataset, data_dir, label_column, image_size, val_fraction, seed
        )
        input_key = "features" if own.kind == "csv" else "image"
        scale = None if own.kind == "csv" else names.IMAGE_FOLDER_PIXEL_MAX

    def load(split):
        ds = builder.as_dataset(split=split, shuffle_files=False)

        def pair(example):
            inputs = tf.cast(example[input_key], tf.float32)
            if scale is not None:
                inputs = inputs / scale
            return inputs, example["label"]

        return ds.map(pair, num_parallel_calls=tf.data.AUTOTUNE)

    train, val, test, num_train, num_val, num_test, val_source = _split(
        builder, load, input_key, val_fraction, seed, own and dataset
    )
    normalization = None
    if own is not None and own.kind == "csv":
        rows = np.stack([x for x, _ in tfds.as_numpy(train)])
        normalization = (
            tuple(rows.mean(axis=0).tolist()),
            tuple(rows.var(axis=0).tolist()),
        )
    info = DatasetInfo(
        input_shape=tuple(builder.info.features[input_key].shape),
        num_classes=builder.info.features["label"].num_classes,
        num_train=num_train,
        num_val=num_val,
        num_test=num_test,
        val_source=val_source,
        kind="tabular" if normalization else "image",
        label_names=tuple(builder.info.features["label"].names),
        normalization=normalization,
        content_key=key,
    )
    return train, val, test, info


def create_datasets(
    dataset,
    data_dir,
    download,
    val_fraction,
    batch_size,
    eval_batch_size,
    shuffle_buffer,
    seed,
    max_shift=0,
    overfit_batches=0,
    context_length=128,
    label_column="label",
    image_size=0,
):
    """Returns the `Datasets` of a run: train, val and test.

    `dataset` is a catalog name (`names.DATASETS`) or a source of one's
    own (`csv:PATH`, `imagefolder:DIR`, `text:PATH`), converted once and
    cached under `data_dir` (`store`).

    `train` repeats forever, reshuffled every pass with a fixed seed, each
    image shifted by up to `max_shift` pixels (0: no augmentation), in
    batches of exactly `batch_size` (a fixed shape, for XLA and for
    distribution). Its iterator can be checkpointed. `val` is the dataset's
    own validation split or, without one, the `val_fraction` of the
    training split that `validation_mask` picks (and `train` then leaves
    out); a source of one's own gives up `splits.holdout_masks`' instead,
    for test too if it has no test split. `val` and `test` are one pass
    each, in `eval_batch_size` batches.

    With `overfit_batches=N > 0`, `train` cycles over the same first N
    batches (no shuffling, no augmentation) and `val` is those N batches:
    a model that cannot drive that loss to ~0 has a bug.

    A text dataset (`names.is_text`) gives `(ids, targets)` pairs of
    `context_length` character ids, `targets` the next character of each;
    see `_text_datasets`. `shuffle_buffer` and `max_shift` do not apply to
    it, nor `val_fraction` to `python_docs`, which has its own splits.

    `label_column` names a CSV's label column; `image_size` > 0 resizes
    an image folder's images to that many pixels square.

    Raises:
        DataError: a source of one's own cannot be read or split.
        DatasetUnavailableError: a catalog dataset cannot be had here.
    """
    if names.is_text(dataset):
        data = _text_datasets(
            dataset,
            data_dir,
            val_fraction,
            context_length,
            batch_size,
            eval_batch_size,
            seed,
            overfit_batches,
        )
    else:
        data = _labeled_datasets(
            dataset,
            data_dir,
            download,
            val_fraction,
            batch_size,
            eval_batch_size,
            shuffle_buffer,
            seed,
            max_shift,
            overfit_batches,
            label_column,
            image_size,
        )
    return dataclasses.replace(data, train=_for_training(data.train))


def _labeled_datasets(
    dataset,
    data_dir,
    download,
    val_fraction,
    batch_size,
    eval_batch_size,
    shuffle_buffer,
    seed,
    max_shift,
    overfit_batches,
    label_column,
    image_size,
):
    """`create_datasets` for a labelled dataset (images or feature rows)."""
    train, val, test, info = _labeled(
        dataset,
        data_dir,
        download,
        val_fraction,
        seed,
        label_column,
        image_size,
    )
    test = _evaluation(test, eval_batch_size)
    if overfit_batches:
        fixed = train.batch(batch_size, drop_remainder=True).take(
            overfit_batches
        )
        fixed = fixed.cache()
        info = dataclasses.replace(
            info,
            num_train=overfit_batches * batch_size,
            num_val=overfit_batches * batch_size,
        )
        return Datasets(
            fixed.repeat().prefetch(tf.data.AUTOTUNE), fixed, test, info
        )
    train = (
        train.cache()
        .shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        .repeat()
    )
    if max_shift:
        # Augmenting _AUGMENT_BATCHES batches per call spreads tf.data's fixed
        # cost per element (~90 us here) over them; `rebatch` then splits
        # them without copying examples one by one.
        train = (
            train.batch(batch_size * _AUGMENT_BATCHES, drop_remainder=True)
            .enumerate()
            .map(
                _random_shift(max_shift, tf.constant(seed, tf.int64)),
                num_parallel_calls=tf.data.AUTOTUNE,
            )
            .rebatch(batch_size, drop_remainder=True)
        )
    else:
        train = train.batch(batch_size, drop_remainder=True)
    train = train.prefetch(tf.data.AUTOTUNE)
    return Datasets(train, _evaluation(val, eval_batch_size), test, info)


def _text_streams(dataset, data_dir, val_fraction, context_length, seed):
    """`({split: ids}, vocabulary size, content key, vocabulary)`."""
    own = names.source(dataset)
    if own is None:
        builder = catalog.prepare(dataset, data_dir, download=False)
        streams = {
            split: python_docs.encode(text.stored_text(builder, split))
            for split in ("train", "validation", "test")
        }
        return streams, python_docs.VOCABULARY_SIZE, "", ""
    key = text.content_key(own.path)
    builder = store.cached("text", key, data_dir)
    if builder is None:
        content = text.read(own.path, dataset)
        # Checked before anything is written.
        text.split_text(content, context_length, val_fraction, seed, dataset)
        builder = store.save(
            "text",
            key,
            data_dir,
            text.features_spec(),
            {"train": text.examples(content)},
            f"{dataset}, converted by template_trainer.data.",
        )
    content = text.stored_text(builder)
    parts = text.split_text(
        content, context_length, val_fraction, seed, dataset
    )
    vocabulary = Vocabulary.of_text(content)
    streams = {split: vocabulary.encode(part) for split, part in parts.items()}
    return streams, vocabulary.VOCABULARY_SIZE, key, vocabulary.VOCABULARY


def _text_datasets(
    dataset,
    data_dir,
    val_fraction,
    context_length,
    batch_size,
    eval_batch_size,
    seed,
    overfit_batches,
):
    """`Datasets` of a text dataset, in windows of `context_length`.

    `train`'s windows start at random characters (nanoGPT's sampling), so
    every epoch sees the text cut differently; an "epoch" is as many
    steps as it takes to draw as many windows as `val` and `test` hold
    for the training split: each split's text cut into consecutive,
    non-overlapping windows, each character predicted once.
    """
    streams, vocabulary_size, key, characters = _text_streams(
        dataset, data_dir, val_fraction, context_length, seed
    )
    evaluation = {
        split: tf.data.Dataset.from_tensor_slices(
            text.windows(stream, context_length)
        )
        for split, stream in streams.items()
    }
    info = DatasetInfo(
        input_shape=(context_length,),
        num_classes=vocabulary_size,
        num_train=(len(streams["train"]) - 1) // context_length,
        num_val=(len(streams["validation"]) - 1) // context_length,
        num_test=(len(streams["test"]) - 1) // context_length,
        val_source="validation",
        kind="text",
        content_key=key,
        vocabulary=characters,
    )
    train = tf.data.Dataset.counter().map(
        text.random_windows(
            streams["train"],
            context_length,
            batch_size,
            tf.constant(seed, tf.int64),
        )
    )
    test = _evaluation(evaluation["test"], eval_batch_size)
    if overfit_batches:
        fixed = train.take(overfit_batches).cache()
        info = dataclasses.replace(
            info,
            num_train=overfit_batches * batch_size,
            num_val=overfit_batches * batch_size,
        )
        return Datasets(
            fixed.repeat().prefetch(tf.data.AUTOTUNE), fixed, test, info
        )
    return Datasets(
        train.prefetch(tf.data.AUTOTUNE),
        _evaluation(evaluation["validation"], eval_batch_size),
        test,
        info,
    )
