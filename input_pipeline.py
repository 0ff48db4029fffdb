"""Input pipeline: TFDS datasets as shuffled, batched `tf.data` pipelines."""

import dataclasses
import os

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


class DatasetUnavailableError(RuntimeError):
    """A catalog dataset is not prepared and cannot be downloaded here."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    input_shape: tuple
    num_classes: int
    num_train: int
    num_eval: int


def _prepare(name, data_dir):
    builder = tfds.builder(name, data_dir=data_dir)
    if name in OFFLINE:
        builder.download_and_prepare()
        return builder
    try:
        builder.download_and_prepare()
    except Exception as e:  # TFDS raises many unrelated types offline.
        where = os.path.join(builder.data_dir_root, name)
        raise DatasetUnavailableError(
            f"dataset '{name}' is not prepared under {where} and could not be "
            f"downloaded ({type(e).__name__}). Prepare it on a machine with "
            f"network access (`tfds build {name} --data_dir=DIR`), copy DIR "
            f"here and pass --config.data_dir=DIR."
        ) from e
    return builder


def _num_examples(builder, split, dataset):
    splits = builder.info.splits
    if split in splits and splits[split].num_examples:
        return splits[split].num_examples
    # tfds.testing.mock_data may leave `info.splits` empty.
    return int(dataset.cardinality())


def _random_shift(max_shift, seed):
    """Shifts each image by up to `max_shift` pixels on each axis.

    Stateless ops seeded by the example's position in the stream make the
    augmentation a function of (seed, position): the checkpointed iterator
    position alone decides it, so resumed runs see the same images.
    """

    def shift(index, example):
        image, label = example
        height, width, channels = image.shape
        padded = tf.pad(
            image, [[max_shift, max_shift], [max_shift, max_shift], [0, 0]]
        )
        cropped = tf.image.stateless_random_crop(
            padded, (height, width, channels), seed=tf.stack([seed, index])
        )
        return cropped, label

    return shift


def create_datasets(
    dataset,
    data_dir,
    batch_size,
    eval_batch_size,
    shuffle_buffer,
    seed,
    max_shift=0,
):
    """Returns `(train, eval, info)`.

    `train` repeats forever, reshuffled every pass with a fixed seed, each
    image shifted by up to `max_shift` pixels (0: no augmentation), in
    batches of exactly `batch_size` (a fixed shape, for XLA and for
    distribution). Its iterator can be checkpointed. `eval` is one pass over
    the test split.
    """
    builder = _prepare(dataset, data_dir)
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
    train = (
        train.cache()
        .shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        .repeat()
    )
    if max_shift:
        train = train.enumerate().map(
            _random_shift(max_shift, tf.constant(seed, tf.int64)),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    train = train.batch(batch_size, drop_remainder=True).prefetch(
        tf.data.AUTOTUNE
    )
    test = test.cache().batch(eval_batch_size).prefetch(tf.data.AUTOTUNE)
    return train, test, info
