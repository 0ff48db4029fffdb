"""Tests for the bundled digits builder and the input pipeline."""

import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

import input_pipeline
import trainer
from configs import cifar10, fashion_mnist, mnist


def _create(tmp_path, **overrides):
    kwargs = dict(
        dataset="digits",
        data_dir=str(tmp_path),
        download=False,
        batch_size=32,
        eval_batch_size=100,
        shuffle_buffer=10_000,
        seed=0,
    )
    kwargs.update(overrides)
    return input_pipeline.create_datasets(**kwargs)


def test_digits_builds_offline_with_fixed_split(tmp_path):
    train, test, info = _create(tmp_path)
    assert info == input_pipeline.DatasetInfo((8, 8, 1), 10, 1442, 355)
    images, labels = next(iter(train))
    assert images.shape == (32, 8, 8, 1) and images.dtype == tf.float32
    assert (
        0.0 <= float(tf.reduce_min(images))
        and float(tf.reduce_max(images)) <= 1.0
    )
    assert sum(int(b[1].shape[0]) for b in test) == 355
    # The documented split: every fifth example of each class is a test one.
    got = np.concatenate([b[1].numpy() for b in test])
    assert np.bincount(got).tolist() == [35, 36, 35, 36, 36, 36, 36, 35, 34, 36]


def test_train_stream_is_a_function_of_the_seed(tmp_path):
    first = [b[1].numpy() for b in _create(tmp_path, max_shift=1)[0].take(50)]
    again = [b[1].numpy() for b in _create(tmp_path, max_shift=1)[0].take(50)]
    other = [b[1].numpy() for b in _create(tmp_path, seed=1)[0].take(50)]
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_shift_augmentation_moves_pixels_but_keeps_mass(tmp_path):
    plain = next(iter(_create(tmp_path)[0]))[0].numpy()
    shifted = next(iter(_create(tmp_path, max_shift=1)[0]))[0].numpy()
    assert not np.array_equal(plain, shifted)
    assert plain.shape == shifted.shape


def test_overfit_batches_repeats_the_same_batches(tmp_path):
    train, test, info = _create(tmp_path, overfit_batches=2)
    batches = [b[1].numpy() for b in train.take(6)]
    np.testing.assert_array_equal(batches[0], batches[2])
    np.testing.assert_array_equal(batches[1], batches[5])
    assert [b[1].numpy().tolist() for b in test] == [
        b.tolist() for b in batches[:2]
    ]
    assert info.num_train == 64


def test_missing_catalog_dataset_says_how_to_prepare(tmp_path):
    with pytest.raises(input_pipeline.DatasetUnavailableError) as error:
        _create(tmp_path, dataset="mnist")
    message = str(error.value)
    assert "dataset 'mnist'" in message
    assert os.path.join(str(tmp_path), "mnist") in message
    assert "tfds build mnist --data_dir=DIR" in message
    assert "--config.data_dir=DIR" in message


def test_unreachable_download_fails_fast(tmp_path, monkeypatch):
    monkeypatch.setattr(input_pipeline, "_reachable", lambda urls: False)
    with pytest.raises(
        input_pipeline.DatasetUnavailableError, match="unreachable"
    ):
        _create(tmp_path, dataset="cifar10", download=True)


@pytest.mark.parametrize("config_module", [mnist, fashion_mnist, cifar10])
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
    monkeypatch.setattr(input_pipeline, "_reachable", lambda urls: True)
    with tfds.testing.mock_data(num_examples=config.batch_size * 3):
        metrics = trainer.train_and_evaluate(config, str(tmp_path / "run"))
    assert metrics["step"] == 3
    assert np.isfinite(metrics["loss"]) and np.isfinite(metrics["eval_loss"])
    # fast_dev_run writes nothing.
    assert not (tmp_path / "run").exists()
