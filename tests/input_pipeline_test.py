"""Tests for the bundled digits builder and the input pipeline."""

import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from run_helpers import tiny_config

import template_trainer
from configs import cifar10, fashion_mnist, mnist
from template_trainer.data import catalog, pipeline


def _create(tmp_path, **overrides):
    kwargs = dict(
        dataset="digits",
        data_dir=str(tmp_path),
        download=False,
        val_fraction=0.1,
        batch_size=32,
        eval_batch_size=100,
        shuffle_buffer=10_000,
        seed=0,
    )
    kwargs.update(overrides)
    return pipeline.create_datasets(**kwargs)


def _labels(dataset):
    return np.concatenate([b[1].numpy() for b in dataset])


def _images(dataset):
    return np.concatenate([b[0].numpy() for b in dataset])


@pytest.fixture(scope="session")
def digits(tmp_path_factory):
    return _create(tmp_path_factory.mktemp("data"))


def test_digits_builds_offline_into_three_splits(digits):
    assert digits.info == pipeline.DatasetInfo(
        (8, 8, 1),
        10,
        1302,
        140,
        355,
        "train",
        label_names=tuple(str(d) for d in range(10)),
    )
    images, labels = next(iter(digits.train))
    assert images.shape == (32, 8, 8, 1) and images.dtype == tf.float32
    assert 0.0 <= images.numpy().min() and images.numpy().max() <= 1.0
    # The documented test split: every fifth example of each class.
    assert np.bincount(_labels(digits.test)).tolist() == [
        35, 36, 35, 36, 36, 36, 36, 35, 34, 36
    ]  # fmt: skip


def test_data_dir_prepared_before_the_datasets_moved_still_loads(tmp_path):
    """The bundled builders moved into `template_trainer.data`; a data
    directory prepared before then names the old module in its
    `dataset_info.json`, and is read as it is, not prepared again."""
    first = _create(tmp_path)
    (info_file,) = tmp_path.glob("digits/*/dataset_info.json")
    info = info_file.read_text()
    assert '"template_trainer.data.digits.builder"' in info
    info_file.write_text(
        info.replace(
            "template_trainer.data.digits.builder", "digits_dataset.builder"
        )
    )
    stored = {
        p: p.stat().st_mtime_ns for p in info_file.parent.glob("*.tfrecord*")
    }
    assert stored
    again = _create(tmp_path)
    assert {p: p.stat().st_mtime_ns for p in stored} == stored
    np.testing.assert_array_equal(_labels(again.test), _labels(first.test))


def test_validation_is_a_stratified_slice_the_training_never_sees(digits):
    # A tenth of each class's 142-146 training examples.
    assert np.bincount(_labels(digits.val)).tolist() == [14] * 10
    val = {x.tobytes() for x in _images(digits.val)}
    train = {
        x.tobytes()
        for batch in digits.train.take(41 * 3)  # three passes
        for x in batch[0].numpy()
    }
    test = {x.tobytes() for x in _images(digits.test)}
    assert len(train) > 1200
    assert not val & train
    assert not val & test


def test_validation_mask_is_deterministic_and_per_class():
    labels = np.array([0, 1] * 50 + [2] * 7)
    mask = pipeline.validation_mask(labels, 0.2)
    np.testing.assert_array_equal(mask, pipeline.validation_mask(labels, 0.2))
    assert [int(mask[labels == c].sum()) for c in (0, 1, 2)] == [10, 10, 1]
    # Evenly spread: each class's 5th, 10th, ... example.
    assert np.flatnonzero(mask[labels == 0]).tolist() == list(range(4, 50, 5))


def test_val_fraction_sizes_the_slice(tmp_path):
    data = _create(tmp_path, val_fraction=0.25)
    # A quarter of each class's 142-146 training examples, rounded down.
    counts = np.bincount(_labels(data.val))
    assert counts.min() == 35 and counts.max() == 36
    assert (data.info.num_train, data.info.num_val) == (1442 - 357, 357)


@pytest.mark.slow
def test_train_stream_is_a_function_of_the_seed(tmp_path):
    """Slow: 150 augmented batches from three
    pipelines; the resume tests see the same property end to end."""
    first = [
        b[1].numpy() for b in _create(tmp_path, max_shift=1).train.take(50)
    ]
    again = [
        b[1].numpy() for b in _create(tmp_path, max_shift=1).train.take(50)
    ]
    other = [b[1].numpy() for b in _create(tmp_path, seed=1).train.take(50)]
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def _numpy_shift(image, dy, dx):
    """Output pixel (r, c) is input pixel (r + dy, c + dx), or 0 outside."""
    height, width = image.shape[:2]
    out = np.zeros_like(image)
    for r in range(height):
        for c in range(width):
            if 0 <= r + dy < height and 0 <= c + dx < width:
                out[r, c] = image[r + dy, c + dx]
    return out


@pytest.mark.parametrize("max_shift", [1, 2])
def test_shift_images_matches_a_numpy_reference(max_shift):
    rng = np.random.default_rng(0)
    size = 2 * max_shift + 1
    images = rng.uniform(size=(size * size, 6, 5, 2)).astype("float32")
    choice = np.arange(size * size, dtype="int32")  # every shift once
    shifted = pipeline.shift_images(
        tf.constant(images), tf.constant(choice), max_shift
    ).numpy()
    for k in range(size * size):
        dy, dx = k // size - max_shift, k % size - max_shift
        np.testing.assert_array_equal(
            shifted[k], _numpy_shift(images[k], dy, dx)
        )


def test_training_images_are_shifted_copies_of_the_originals(tmp_path):
    """Each image the pipeline yields is one of the (2m+1)^2 numpy shifts of
    the image it came from."""
    plain = _create(tmp_path, shuffle_buffer=1)
    shifted = _create(tmp_path, shuffle_buffer=1, max_shift=1)
    originals = next(iter(plain.train))[0].numpy()
    moved = next(iter(shifted.train))[0].numpy()
    assert not np.array_equal(originals, moved)
    for original, image in zip(originals, moved):
        candidates = [
            _numpy_shift(original, dy, dx)
            for dy in (-1, 0, 1)
            for dx in (-1, 0, 1)
        ]
        assert any(np.array_equal(image, c) for c in candidates)


def test_overfit_batches_repeats_the_same_batches(tmp_path):
    data = _create(tmp_path, overfit_batches=2)
    batches = [b[1].numpy() for b in data.train.take(6)]
    np.testing.assert_array_equal(batches[0], batches[2])
    np.testing.assert_array_equal(batches[1], batches[5])
    assert [b[1].numpy().tolist() for b in data.val] == [
        b.tolist() for b in batches[:2]
    ]
    assert data.info.num_train == 64


def test_training_data_has_no_autotuning_model(digits, tmp_path):
    """The training iterator lives as long as its run, and TensorFlow 2.21
    takes up to a minute to free one with tf.data's autotuning model
    (`pipeline._for_training`): every kind of training stream is without
    it. Evaluation iterators live for one evaluation and keep it."""
    overfit = _create(tmp_path, overfit_batches=2)
    for data in (digits, overfit):
        assert data.train.options().autotune.enabled is False
    assert digits.val.options().autotune.enabled is not False


def test_missing_catalog_dataset_says_how_to_prepare(tmp_path):
    with pytest.raises(pipeline.DatasetUnavailableError) as error:
        _create(tmp_path, dataset="mnist")
    message = str(error.value)
    assert "dataset 'mnist'" in message
    assert os.path.join(str(tmp_path), "mnist") in message
    assert "tfds build mnist --data_dir=DIR" in message
    assert "--config.data_dir=DIR" in message


def test_unreachable_download_fails_fast(tmp_path, monkeypatch):
    monkeypatch.setattr(catalog, "_reachable", lambda urls: False)
    with pytest.raises(pipeline.DatasetUnavailableError, match="unreachable"):
        _create(tmp_path, dataset="cifar10", download=True)


@pytest.mark.parametrize(
    "config_module",
    [
        # Each a training run of its own (about 3 s), so slow; the three
        # share configs/catalog.py.
        pytest.param(mnist, marks=pytest.mark.slow),
        pytest.param(fashion_mnist, marks=pytest.mark.slow),
        pytest.param(cifar10, marks=pytest.mark.slow),
    ],
)
def test_catalog_configs_train_on_mock_data(
    tmp_path, monkeypatch, config_module
):
    config = config_module.get_config()
    config.data_dir = str(tmp_path / "data")
    config.fast_dev_run = 3
    config.deterministic = False  # process-wide: keep it out of other tests
    config.eval_batch_size = 8
    config.model.hidden_units = (16,)
    # mock_data replaces the download, but not our reachability check.
    monkeypatch.setattr(catalog, "_reachable", lambda urls: True)
    with tfds.testing.mock_data(num_examples=config.batch_size * 4):
        metrics = template_trainer.train_and_evaluate(
            config, str(tmp_path / "run")
        )
    assert metrics["step"] == 3
    assert np.isfinite(metrics["loss"]) and np.isfinite(metrics["val_loss"])
    assert np.isfinite(metrics["test_loss"])
    # fast_dev_run writes nothing.
    assert not (tmp_path / "run").exists()


def test_tiny_config_helper_is_valid():
    template_trainer.config_checks.validate(tiny_config())
