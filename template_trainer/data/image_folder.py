"""`imagefolder:DIR`: PNG and JPEG images in one folder per label.

TFDS's ImageFolder layout, `DIR/<split>/<label>/*` (splits `train`,
`validation` or `val`, `test`), or without splits `DIR/<label>/*`. Every
image must have the same height, width and channels, unless
`config.image_size` resizes them all to `image_size` x `image_size`.
Files of other kinds are ignored.
"""

import os

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from template_trainer.data import store
from template_trainer.data.problems import DataError

EXTENSIONS = (".png", ".jpg", ".jpeg")
SPLITS = ("train", "validation", "val", "test")


def _subdirectories(path):
    return sorted(
        e.name for e in os.scandir(path) if e.is_dir() and e.name[0] != "."
    )


def _images(path):
    return sorted(
        os.path.join(path, e.name)
        for e in os.scandir(path)
        if e.is_file() and e.name.lower().endswith(EXTENSIONS)
    )


def layout(root, source):
    """`{split: {label: [image paths]}}` of the folder at `root`.

    Raises:
        DataError: no images in either layout, or no `train` split.
    """
    folders = _subdirectories(root)
    if folders and set(folders) <= set(SPLITS):
        found = {
            split: {
                label: _images(os.path.join(root, split, label))
                for label in _subdirectories(os.path.join(root, split))
            }
            for split in folders
        }
        if "train" not in found:
            raise DataError(
                f"{source} has the splits {', '.join(folders)} but no "
                "train/; expected DIR/train/<label>/ images, with "
                "validation/ and test/ optional."
            )
    else:
        found = {
            "train": {
                label: _images(os.path.join(root, label)) for label in folders
            }
        }
    for split, labels in found.items():
        if not any(labels.values()):
            where = root if list(found) == ["train"] else f"{root}/{split}"
            raise DataError(
                f"{source}: {where} holds no PNG or JPEG images; expected "
                "them in DIR/<label>/ or DIR/<split>/<label>/."
            )
    return found


def content_key(found, root, image_size):
    files = [
        path
        for split in sorted(found)
        for label in sorted(found[split])
        for path in found[split][label]
    ]
    return store.content_key(files, root, "imagefolder", image_size)


def _decode(path, image_size, source):
    with open(path, "rb") as f:
        data = f.read()
    try:
        image = tf.io.decode_image(data, expand_animations=False)
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError):
        raise DataError(
            f"{source}: {path} is not a readable PNG or JPEG image; "
            "replace or remove it."
        ) from None
    if image_size:
        image = tf.image.resize(image, (image_size, image_size))
        image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
    return image.numpy()


def read(found, image_size, source):
    """`(split_examples, shape, label_names)`: the decoded images of each
    split as `(images uint8, labels int64)`.

    Raises:
        DataError: an image cannot be decoded, or the images' shapes differ
            and `image_size` is 0.
    """
    names = sorted({label for split in found.values() for label in split})
    first, arrays = None, {}
    for split, labels in found.items():
        images, ids = [], []
        for label, paths in labels.items():
            for path in paths:
                image = _decode(path, image_size, source)
                if first is None:
                    first = (path, image.shape)
                elif image.shape != first[1]:
                    raise DataError(
                        f"{source}: images of different shapes, "
                        f"{first[0]} is {_shape(first[1])} and {path} is "
                        f"{_shape(image.shape)}; resize them all with "
                        "--config.image_size=N (N x N pixels), or make "
                        "them alike."
                    )
                images.append(image)
                ids.append(names.index(label))
        arrays["validation" if split == "val" else split] = (
            np.stack(images),
            np.array(ids, np.int64),
        )
    return arrays, first[1], tuple(names)


def _shape(shape):
    return f"{shape[0]}x{shape[1]} pixels with {shape[2]} channel(s)"


def features_spec(shape, label_names):
    return tfds.features.FeaturesDict(
        {
            "image": tfds.features.Image(shape=shape),
            "label": tfds.features.ClassLabel(names=label_names),
        }
    )


def examples(images, labels):
    return [
        (i, {"image": image, "label": label})
        for i, (image, label) in enumerate(zip(images, labels, strict=True))
    ]
