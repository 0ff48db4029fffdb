"""A source of the user's own, converted once and cached under `data_dir`.

The cache is a TFDS dataset written by
`tfds.dataset_builders.store_as_tfds_dataset`, at
`DATA_DIR/<kind>_source/sha256_<key>/1.0.0`, `key` the hash of the
source's content and of the settings its conversion reads: an edited file
is a new dataset, never a stale cache. TFDS writes it in a temporary
directory and moves it into place, so a failed conversion leaves nothing
half-written.
"""

import contextlib
import fcntl
import hashlib
import io
import os
import random

import tensorflow_datasets as tfds
from absl import logging

VERSION = "1.0.0"
# Part of every key: a change to how sources are converted makes new keys.
_FORMAT = b"template_trainer.data 1\0"


def content_key(files, root, *settings):
    """The sha256 of `files`' contents, their paths relative to `root`,
    and `settings` (their reprs), as hex."""
    digest = hashlib.sha256(_FORMAT)
    for setting in settings:
        digest.update(repr(setting).encode() + b"\0")
    for path in files:
        digest.update(os.path.relpath(path, root).encode() + b"\0")
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        digest.update(b"\0")
    return digest.hexdigest()


def data_root(data_dir):
    """Where TFDS keeps datasets: `data_dir`, or its default."""
    return os.path.expanduser(
        data_dir
        or os.environ.get("TFDS_DATA_DIR")
        or tfds.core.constants.DATA_DIR
    )


def _name(kind):
    return f"{kind}_source"


def _config(key):
    return f"sha256_{key[:32]}"


def cached(kind, key, data_dir):
    """The TFDS builder of the cached conversion, or None if there is
    none."""
    path = os.path.join(data_root(data_dir), _name(kind), _config(key), VERSION)
    if not os.path.isfile(os.path.join(path, "dataset_info.json")):
        return None
    return tfds.builder_from_directory(path)


@contextlib.contextmanager
def preparing(root, name):
    """Holds a lock while `name` is prepared under `root`: several trainers
    on one machine (the workers of a multi-worker run) that start on a
    dataset not yet prepared would otherwise write the same files at once,
    and fail.

    Leaves Python's `random` state as it was: TFDS draws from it (to name
    its temporary directory), and Keras seeds the model's initialisers
    from it, so a run that prepared its dataset started from other weights
    than the same command rerun on the prepared dataset (seen: the first
    run's final weights differed from every rerun's)."""
    os.makedirs(root, exist_ok=True)
    state = random.getstate()
    try:
        with open(os.path.join(root, f".{name}.prepare.lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield
    finally:
        random.setstate(state)


@contextlib.contextmanager
def quiet():
    """Keeps TFDS's own output off the terminal while it prepares a dataset
    offline: a "Downloading and preparing" line for data that nothing
    downloads, progress bars drawn with carriage returns (in logs too), and
    warnings about its configs that no user can act on. Its errors still
    raise; a real download (a catalog dataset) is not run under this, so
    its progress shows."""
    verbosity = logging.get_verbosity()
    logging.set_verbosity(logging.ERROR)
    tfds.disable_progress_bar()
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        tfds.enable_progress_bar()
        logging.set_verbosity(verbosity)


def save(kind, key, data_dir, features, split_examples, description):
    """Stores `split_examples` (`{split: [(key, example), ...]}`) as the
    cached conversion of `key`; returns its builder."""
    root = data_root(data_dir)
    with preparing(root, f"{_name(kind)}-{_config(key)}"):
        # Another trainer may have stored it while this one waited.
        builder = cached(kind, key, data_dir)
        if builder is None:
            with quiet():
                tfds.dataset_builders.store_as_tfds_dataset(
                    name=_name(kind),
                    config=_config(key),
                    version=VERSION,
                    features=features,
                    split_datasets=split_examples,
                    data_dir=root,
                    description=description,
                    disable_shuffling=True,
                )
            builder = cached(kind, key, data_dir)
    return builder
