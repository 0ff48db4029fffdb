"""Input pipeline: TFDS datasets as `tf.data` pipelines, in three splits.

`train` is what the model learns from, `val` what the trainer evaluates
during training and selects the best checkpoint on, and `test` what it
evaluates once, at the end. An image dataset without a validation split of
its own gives up a deterministic, stratified slice of its training split.
A text dataset is cut into windows of characters, each target the window
shifted by one.
"""

import contextlib
import dataclasses
import fcntl
import os
import random
import socket
import urllib.parse

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

# Importing the packages registers the bundled builders with TFDS.
import digits_dataset  # noqa: F401
import python_docs_dataset
from template_trainer import errors

# The datasets the trainer accepts, with the largest pixel value of each, used
# to scale pixels to [0, 1].
PIXEL_MAX = {
    "digits": 16.0,
    "mnist": 255.0,
    "fashion_mnist": 255.0,
    "cifar10": 255.0,
}
# Text datasets, each with the module of its vocabulary (`VOCABULARY_SIZE`,
# `encode`, `decode`; id 0 pads).
TEXT_DATASETS = {"python_docs": python_docs_dataset}
DATASETS = (*PIXEL_MAX, *TEXT_DATASETS)
OFFLINE = ("digits", "python_docs")
# Names TFDS datasets give their own validation split.
VALIDATION_SPLITS = ("validation", "val")
_AUGMENT_BATCHES = 16


class DatasetUnavailableError(errors.RunError):
    """A catalog dataset is not prepared and cannot be downloaded here."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    input_shape: tuple
    num_classes: int
    num_train: int
    num_val: int
    num_test: int
    # Where `val` comes from: the dataset's own split, or "train" (a slice).
    val_source: str
    # "image": (image, label) examples; "text": (ids, next ids) windows,
    # `input_shape` (context_length,), `num_classes` the vocabulary size,
    # `num_*` counted in windows.
    kind: str = "image"


@dataclasses.dataclass(frozen=True)
class Datasets:
    train: tf.data.Dataset  # batches of `batch_size`, forever
    val: tf.data.Dataset  # one pass
    test: tf.data.Dataset  # one pass
    info: DatasetInfo


def _reachable(urls, timeout=5.0):
    """Whether every host in `urls` accepts a TCP connection.

    Offline, TFDS retries each download for minutes before failing; this
    check fails in seconds instead.
    """
    for url in urls:
        parsed = urllib.parse.urlparse(url)
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        try:
            socket.create_connection((parsed.hostname, port), timeout).close()
        except OSError:
            return False
    return True


def _unavailable(name, builder, why):
    where = os.path.join(builder.data_dir_root, name)
    return DatasetUnavailableError(
        f"dataset '{name}' is not prepared under {where} and {why}. Prepare "
        f"it on a machine with network access (`tfds build {name} "
        f"--data_dir=DIR`), copy DIR here and pass --config.data_dir=DIR."
    )


@contextlib.contextmanager
def _preparing(builder, name):
    """Holds a lock while `name` is prepared: several trainers on one
    machine (the workers of a multi-worker run) that start on a dataset not
    yet prepared would otherwise write the same files at once, and fail.

    Leaves Python's `random` state as it was: TFDS draws from it (to name
    its temporary directory), and Keras seeds the model's initialisers
    from it, so a run that prepared its dataset started from other weights
    than the same command rerun on the prepared dataset (seen: the first
    run's final weights differed from every rerun's)."""
    root = builder.data_dir_root
    os.makedirs(root, exist_ok=True)
    state = random.getstate()
    try:
        with open(os.path.join(root, f".{name}.prepare.lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield
    finally:
        random.setstate(state)


def _prepare(name, data_dir, download):
    """Returns the TFDS builder of `name`, prepared.

    Raises:
        DatasetUnavailableError: `name` is not prepared under `data_dir`
            and cannot be downloaded.
    """
    builder = tfds.builder(name, data_dir=data_dir)
    if name in OFFLINE or builder.is_prepared():
        with _preparing(builder, name):
            builder.download_and_prepare()
        # Anew: if another trainer prepared it while this one waited, this
        # builder's info still describes an empty dataset.
        return tfds.builder(name, data_dir=data_dir)
    if not download:
        raise _unavailable(
            name, builder, "downloading is off (config.download)"
        )
    if not _reachable(builder.url_infos or {}):
        raise _unavailable(
            name, builder, "its download servers are unreachable"
        )
    try:
        with _preparing(builder, name):
            builder.download_and_prepare()
    except Exception as e:  # TFDS raises many unrelated types offline.
        raise _unavailable(
            name, builder, f"downloading it failed ({type(e).__name__})"
        ) from e
    return tfds.builder(name, data_dir=data_dir)


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


def _labels(builder, split):
    """The labels of `split`, in order, without decoding the images."""
    image_key, label_key = builder.info.supervised_keys
    dataset = builder.as_dataset(
        split=split,
        shuffle_files=False,
        decoders={image_key: tfds.decode.SkipDecoding()},
    )
    labels = dataset.map(lambda example: example[label_key]).batch(4096)
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


def _num_examples(builder, split, dataset):
    splits = builder.info.splits
    if split in splits and splits[split].num_examples:
        return splits[split].num_examples
    # tfds.testing.mock_data may leave `info.splits` empty.
    return int(dataset.reduce(0, lambda n, _: n + 1))


def _split(builder, val_fraction, load):
    """`(train, val, num_train, num_val, val_source)`, unbatched."""
    own = [s for s in VALIDATION_SPLITS if s in builder.info.splits]
    if own:
        train, val = load("train"), load(own[0])
        return (
            train,
            val,
            _num_examples(builder, "train", train),
            _num_examples(builder, own[0], val),
            own[0],
        )
    mask = validation_mask(_labels(builder, "train"), val_fraction)
    is_val = tf.constant(mask)

    def keep(want_val):
        return (
            load("train")
            .enumerate()
            .filter(lambda i, _: tf.equal(tf.gather(is_val, i), want_val))
            .map(lambda _, example: example)
        )

    num_val = int(mask.sum())
    return keep(False), keep(True), len(mask) - num_val, num_val, "train"


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
):
    """Returns the `Datasets` of a run: train, val and test.

    `train` repeats forever, reshuffled every pass with a fixed seed, each
    image shifted by up to `max_shift` pixels (0: no augmentation), in
    batches of exactly `batch_size` (a fixed shape, for XLA and for
    distribution). Its iterator can be checkpointed. `val` is the dataset's
    own validation split or, without one, the `val_fraction` of the
    training split that `validation_mask` picks (and `train` then leaves
    out); `val` and `test` are one pass each, in `eval_batch_size` batches.

    With `overfit_batches=N > 0`, `train` cycles over the same first N
    batches (no shuffling, no augmentation) and `val` is those N batches:
    a model that cannot drive that loss to ~0 has a bug.

    A text dataset (`TEXT_DATASETS`) gives `(ids, targets)` pairs of
    `context_length` character ids, `targets` the next character of each;
    see `_text_datasets`. `val_fraction`, `shuffle_buffer` and `max_shift`
    do not apply to it.
    """
    builder = _prepare(dataset, data_dir, download)
    if dataset in TEXT_DATASETS:
        return _text_datasets(
            builder,
            TEXT_DATASETS[dataset],
            context_length,
            batch_size,
            eval_batch_size,
            seed,
            overfit_batches,
        )
    pixel_max = PIXEL_MAX[dataset]

    def preprocess(image, label):
        return tf.cast(image, tf.float32) / pixel_max, label

    def load(split):
        ds = builder.as_dataset(
            split=split, as_supervised=True, shuffle_files=False
        )
        return ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)

    train, val, num_train, num_val, val_source = _split(
        builder, val_fraction, load
    )
    test = load("test")
    info = DatasetInfo(
        input_shape=tuple(builder.info.features["image"].shape),
        num_classes=builder.info.features["label"].num_classes,
        num_train=num_train,
        num_val=num_val,
        num_test=_num_examples(builder, "test", test),
        val_source=val_source,
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


def _text_stream(builder, vocabulary, split):
    """The character ids of `split`, its blocks joined in corpus order."""
    examples = tfds.as_numpy(
        builder.as_dataset(split=split, shuffle_files=False)
    )
    blocks = sorted((int(e["index"]), e["text"]) for e in examples)
    return vocabulary.encode(b"".join(text for _, text in blocks).decode())


def _windows(stream, context_length):
    """`(ids, targets)`: the non-overlapping windows of `stream`, each
    character but the first predicted once."""
    count = (len(stream) - 1) // context_length
    end = count * context_length
    ids = stream[:end].reshape(count, context_length)
    targets = stream[1 : end + 1].reshape(count, context_length)
    return ids, targets


def _random_windows(stream, context_length, batch_size, seed):
    """Maps a batch number to a batch of windows at random places.

    Stateless ops seeded by `(seed, batch number)`, as `_random_shift`:
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


def _text_datasets(
    builder,
    vocabulary,
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
    streams = {
        split: _text_stream(builder, vocabulary, split)
        for split in ("train", "validation", "test")
    }
    evaluation = {
        split: tf.data.Dataset.from_tensor_slices(
            _windows(stream, context_length)
        )
        for split, stream in streams.items()
    }
    info = DatasetInfo(
        input_shape=(context_length,),
        num_classes=vocabulary.VOCABULARY_SIZE,
        num_train=(len(streams["train"]) - 1) // context_length,
        num_val=(len(streams["validation"]) - 1) // context_length,
        num_test=(len(streams["test"]) - 1) // context_length,
        val_source="validation",
        kind="text",
    )
    train = tf.data.Dataset.counter().map(
        _random_windows(
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
