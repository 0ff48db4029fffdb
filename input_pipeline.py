"""Input pipeline: TFDS datasets as shuffled, batched `tf.data` pipelines."""

import dataclasses
import os
import socket
import urllib.parse

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

# Importing the package registers the bundled `digits` builder with TFDS.
import digits_dataset  # noqa: F401

# The datasets the trainer accepts, with the largest pixel value of each, used
# to scale pixels to [0, 1].
PIXEL_MAX = {
    "digits": 16.0,
    "mnist": 255.0,
    "fashion_mnist": 255.0,
    "cifar10": 255.0,
}
OFFLINE = ("digits",)
_AUGMENT_BATCHES = 16


class DatasetUnavailableError(RuntimeError):
    """A catalog dataset is not prepared and cannot be downloaded here."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    input_shape: tuple
    num_classes: int
    num_train: int
    num_eval: int


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


def _prepare(name, data_dir, download):
    """Returns the TFDS builder of `name`, prepared.

    Raises:
        DatasetUnavailableError: `name` is not prepared under `data_dir`
            and cannot be downloaded.
    """
    builder = tfds.builder(name, data_dir=data_dir)
    if name in OFFLINE or builder.is_prepared():
        builder.download_and_prepare()
        return builder
    if not download:
        raise _unavailable(
            name, builder, "downloading is off (config.download)"
        )
    if not _reachable(builder.url_infos or {}):
        raise _unavailable(
            name, builder, "its download servers are unreachable"
        )
    try:
        builder.download_and_prepare()
    except Exception as e:  # TFDS raises many unrelated types offline.
        raise _unavailable(
            name, builder, f"downloading it failed ({type(e).__name__})"
        ) from e
    return builder


def _num_examples(builder, split, dataset):
    splits = builder.info.splits
    if split in splits and splits[split].num_examples:
        return splits[split].num_examples
    # tfds.testing.mock_data may leave `info.splits` empty.
    return int(dataset.cardinality())


def _random_shift(max_shift, seed):
    """Shifts each image of a batch by up to `max_shift` pixels per axis.

    Vectorised over the batch, in a handful of ops: each image's shift picks
    one row of a constant table of pixel indices into the padded image, and
    one gather applies them all. (A per-image crop in `map` made the pipeline
    slower than the digits training step it feeds.) Stateless ops seeded by
    the batch's position in the stream make the shifts a function of (seed,
    position): the checkpointed iterator position alone decides them, so a
    resumed run sees the same images.
    """
    size = 2 * max_shift + 1

    def shift(index, batch):
        images, labels = batch
        height, width, channels = images.shape[1:]
        padded_width = width + 2 * max_shift
        # table[k] lists, for shift k, where each output value comes from
        # in the flattened padded image.
        rows, cols, chans = np.meshgrid(
            np.arange(height),
            np.arange(width),
            np.arange(channels),
            indexing="ij",
        )
        table = np.stack(
            [
                ((rows + dy) * padded_width + cols + dx) * channels + chans
                for dy in range(size)
                for dx in range(size)
            ]
        ).reshape(size * size, -1)
        padded = tf.pad(
            images, [[0, 0], [max_shift] * 2, [max_shift] * 2, [0, 0]]
        )
        flat = tf.reshape(padded, [tf.shape(images)[0], -1])
        choice = tf.random.stateless_uniform(
            tf.shape(images)[:1],
            seed=tf.stack([seed, index]),
            maxval=size * size,
            dtype=tf.int32,
        )
        sources = tf.gather(tf.constant(table, tf.int32), choice)
        shifted = tf.gather(flat, sources, batch_dims=1)
        return tf.reshape(shifted, tf.shape(images)), labels

    return shift


def create_datasets(
    dataset,
    data_dir,
    download,
    batch_size,
    eval_batch_size,
    shuffle_buffer,
    seed,
    max_shift=0,
    overfit_batches=0,
):
    """Returns `(train, eval, info)`.

    `train` repeats forever, reshuffled every pass with a fixed seed, each
    image shifted by up to `max_shift` pixels (0: no augmentation), in
    batches of exactly `batch_size` (a fixed shape, for XLA and for
    distribution). Its iterator can be checkpointed. `eval` is one pass over
    the test split.

    With `overfit_batches=N > 0`, `train` cycles over the same first N
    batches (no shuffling, no augmentation) and `eval` is those N batches:
    a model that cannot drive that loss to ~0 has a bug.
    """
    builder = _prepare(dataset, data_dir, download)
    pixel_max = PIXEL_MAX[dataset]

    def preprocess(image, label):
        return tf.cast(image, tf.float32) / pixel_max, label

    def load(split):
        ds = builder.as_dataset(
            split=split, as_supervised=True, shuffle_files=False
        )
        return ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)

    train = load("train")
    test = load("test")
    info = DatasetInfo(
        input_shape=tuple(builder.info.features["image"].shape),
        num_classes=builder.info.features["label"].num_classes,
        num_train=_num_examples(builder, "train", train),
        num_eval=_num_examples(builder, "test", test),
    )
    if overfit_batches:
        fixed = train.batch(batch_size, drop_remainder=True).take(
            overfit_batches
        )
        fixed = fixed.cache()
        info = dataclasses.replace(
            info,
            num_train=overfit_batches * batch_size,
            num_eval=overfit_batches * batch_size,
        )
        return fixed.repeat().prefetch(tf.data.AUTOTUNE), fixed, info
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
    options = tf.data.Options()
    # Several workers split the test set by example: it is a single file.
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.DATA
    )
    test = (
        test.cache()
        .batch(eval_batch_size)
        .prefetch(tf.data.AUTOTUNE)
        .with_options(options)
    )
    return train, test, info
