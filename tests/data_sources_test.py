"""Sources of one's own: `csv:PATH`, `imagefolder:DIR`, `text:PATH`.

Each trains through `train_and_evaluate` on tiny data written here; the
pipeline's splits, cache and errors are checked on `create_datasets`
alone, which costs no model.
"""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from run_helpers import tiny_config, tiny_lm_config

import models
import template_trainer
from template_trainer import config_checks, sample
from template_trainer import workdir as workdir_guard
from template_trainer.data import pipeline, splits
from template_trainer.data.problems import DataError

COLORS = ("red", "green", "blue")


def write_csv(path, rows_per_class=30, seed=0, extra=""):
    """Three classes of 2-D points around far-apart centres, on a scale
    (thousands) an MLP without feature scaling trains badly on."""
    rng = np.random.default_rng(seed)
    lines = ["x,label,y"]
    for i, color in enumerate(COLORS):
        for _ in range(rows_per_class):
            x, y = rng.normal([1000 + 30 * i, 5000 - 30 * i], 3)
            lines.append(f"{x:.3f},{color},{y:.3f}")
    path.write_text("\n".join(lines) + "\n" + extra)
    return path


def _create(dataset, data_dir, **kwargs):
    args = dict(
        dataset=dataset,
        data_dir=str(data_dir),
        download=False,
        val_fraction=0.1,
        batch_size=8,
        eval_batch_size=64,
        shuffle_buffer=100,
        seed=0,
    )
    return pipeline.create_datasets(**{**args, **kwargs})


def _rows(dataset):
    return {
        (tuple(x.tolist()), int(y))
        for xs, ys in dataset
        for x, y in zip(xs.numpy(), ys.numpy(), strict=True)
    }


def _csv_config(tmp_path, csv, **overrides):
    settings = dict(
        dataset=f"csv:{csv}",
        data_dir=str(tmp_path / "tfds"),
        max_shift=0,
        batch_size=16,
        learning_rate=3e-2,
        num_epochs=8,
    )
    return tiny_config(**{**settings, **overrides})


@pytest.fixture(scope="module")
def csv_run(tmp_path_factory):
    """A training run of its own (about 3 s): the tests that use it are
    slow; the fast lane reads CSVs without training."""
    tmp_path = tmp_path_factory.mktemp("csv")
    csv = write_csv(tmp_path / "points.csv")
    workdir = tmp_path / "run"
    metrics = template_trainer.train_and_evaluate(
        _csv_config(tmp_path, csv), str(workdir)
    )
    return csv, workdir, metrics


@pytest.mark.slow
def test_csv_trains_and_keeps_its_label_names(csv_run):
    _, workdir, metrics = csv_run
    assert metrics["val_accuracy"] >= 0.95
    assert metrics["test_accuracy"] >= 0.95
    with open(workdir / "data.json") as f:
        record = json.load(f)
    assert record["label_names"] == sorted(COLORS)
    assert len(record["content_key"]) == 64


@pytest.mark.slow
def test_model_keras_predicts_on_raw_rows(csv_run):
    csv, workdir, _ = csv_run
    model = keras.models.load_model(workdir / "model.keras")
    names = json.loads((workdir / "data.json").read_text())["label_names"]
    # The model file keeps them too, for use away from its run.
    assert list(model.label_names) == names
    lines = csv.read_text().split()[1:]
    rows = np.array([[float(x), float(y)] for x, _, y in map(str.split, [
        line.replace(",", " ") for line in lines
    ])], np.float32)  # fmt: skip
    labels = [line.split(",")[1] for line in lines]
    predicted = np.argmax(model.predict(rows, verbose=0), axis=1)
    accuracy = np.mean([names[p] == t for p, t in zip(predicted, labels)])
    assert accuracy >= 0.95
    # The scaling is the training split's, inside the model.
    layer = model.get_layer("normalization")
    train = rows  # 80% of these; the mean is within a few units of all's
    np.testing.assert_allclose(
        np.ravel(layer.mean), train.mean(axis=0), rtol=1e-3
    )


@pytest.mark.slow
def test_resuming_on_an_edited_file_is_refused_as_drift(csv_run, tmp_path):
    csv, workdir, _ = csv_run
    original = csv.read_text()
    config = _csv_config(csv.parent, csv, num_epochs=9)
    try:
        write_csv(csv, seed=1)
        with pytest.raises(workdir_guard.DataDriftError) as error:
            template_trainer.train_and_evaluate(config, str(workdir))
    finally:
        csv.write_text(original)
    _assert_one_line(error.value, "has changed since")
    # The same content is no drift.
    record = json.loads((workdir / "data.json").read_text())
    dataset = record.pop("dataset")
    workdir_guard.keep_data(str(workdir), dataset, record, True)


def test_splits_are_stratified_disjoint_and_fixed_by_the_seed(tmp_path):
    csv = write_csv(tmp_path / "points.csv", rows_per_class=20)
    data = _create(f"csv:{csv}", tmp_path / "tfds")
    train, val, test = (
        _rows(data.train.take(200)),
        _rows(data.val),
        _rows(data.test),
    )
    assert data.info.input_shape == (2,) and data.info.kind == "tabular"
    assert data.info.label_names == tuple(sorted(COLORS))
    # 10% of each class of 20 to validation, as many to test.
    for held in (val, test):
        assert sorted(label for _, label in held) == [0, 0, 1, 1, 2, 2]
    assert len(train) == 48 == data.info.num_train
    assert not (train & val or train & test or val & test)
    again = _create(f"csv:{csv}", tmp_path / "tfds")
    assert _rows(again.val) == val
    other = _create(f"csv:{csv}", tmp_path / "tfds", seed=1)
    assert _rows(other.val) != val


def _cached(data_dir, kind="csv"):
    root = data_dir / f"{kind}_source"
    if not root.exists():
        return []
    return sorted(n for n in os.listdir(root) if n.startswith("sha256_"))


def test_cache_is_keyed_by_content(tmp_path):
    csv = write_csv(tmp_path / "points.csv", rows_per_class=10)
    data_dir = tmp_path / "tfds"
    first = _create(f"csv:{csv}", data_dir)
    entries = _cached(data_dir)
    assert len(entries) == 1
    info = data_dir / "csv_source" / entries[0] / "1.0.0" / "dataset_info.json"
    written = info.stat().st_mtime_ns
    _create(f"csv:{csv}", data_dir)  # same content: the same cache
    assert _cached(data_dir) == entries
    assert info.stat().st_mtime_ns == written
    write_csv(csv, rows_per_class=20)
    second = _create(f"csv:{csv}", data_dir)
    assert len(_cached(data_dir)) == 2
    assert first.info.num_train == 24 and second.info.num_train == 48
    assert first.info.content_key != second.info.content_key


def test_integer_labels_sort_as_numbers(tmp_path):
    csv = tmp_path / "n.csv"
    rows = [f"{i},{label}" for i, label in enumerate([10, 2, 2, 10] * 4)]
    csv.write_text("f,label\n" + "\n".join(rows))
    data = _create(f"csv:{csv}", tmp_path / "tfds", val_fraction=0.2)
    assert data.info.label_names == ("2", "10")


def test_label_column_is_the_configs(tmp_path):
    csv = tmp_path / "c.csv"
    csv.write_text(
        "a,b,kind\n" + "\n".join(f"{i},1,{i % 2}" for i in range(20))
    )
    data = _create(f"csv:{csv}", tmp_path / "tfds", label_column="kind")
    assert data.info.input_shape == (2,) and data.info.num_classes == 2


def _png(path, value, size=(8, 8), channels=1):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.full((*size, channels), value, np.uint8)
    path.write_bytes(tf.io.encode_png(image).numpy())


def write_folder(root, per_class=10, layout=("",), sizes=None):
    """Dark images for `dark`, bright for `light`, under each of
    `layout`'s split folders ("" for none)."""
    for split in layout:
        for label, base in (("dark", 20), ("light", 230)):
            for i in range(per_class):
                size = sizes[i % len(sizes)] if sizes else (8, 8)
                _png(root / split / label / f"{i}.png", base + i, size)
    return root


@pytest.mark.slow
def test_image_folder_trains(tmp_path):
    """Slow: a training run of its own."""
    folder = write_folder(tmp_path / "images", per_class=20)
    config = tiny_config(
        dataset=f"imagefolder:{folder}",
        data_dir=str(tmp_path / "tfds"),
        batch_size=8,
        learning_rate=3e-2,
    )
    metrics = template_trainer.train_and_evaluate(config, str(tmp_path / "w"))
    assert metrics["val_accuracy"] == 1.0 and metrics["test_accuracy"] == 1.0
    record = json.loads((tmp_path / "w" / "data.json").read_text())
    assert record["label_names"] == ["dark", "light"]


def test_image_folder_with_splits_keeps_its_own(tmp_path):
    folder = write_folder(tmp_path / "images", layout=("train", "test"))
    data = _create(f"imagefolder:{folder}", tmp_path / "tfds")
    assert data.info.input_shape == (8, 8, 1)
    assert data.info.num_test == 20  # its own test split, whole
    assert (data.info.num_train, data.info.num_val) == (18, 2)
    assert data.info.val_source == "train"
    images = np.concatenate([x.numpy() for x, _ in data.test])
    assert images.max() <= 1.0 and images.max() > 0.9  # scaled by 255


def test_image_size_resizes(tmp_path):
    folder = write_folder(tmp_path / "images", sizes=[(8, 8), (12, 10)])
    data = _create(f"imagefolder:{folder}", tmp_path / "tfds", image_size=6)
    assert data.info.input_shape == (6, 6, 1)


@pytest.mark.slow
def test_text_file_trains_and_samples(tmp_path, capsys):
    """Slow (about 6 s): a training run of its own, then the sampler."""
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta"]
    rng = np.random.default_rng(0)
    text = " ".join(rng.choice(words, 1500)) + " é\n"
    path = tmp_path / "words.txt"
    path.write_text(text, encoding="utf-8")
    config = tiny_lm_config(
        dataset=f"text:{path}",
        data_dir=str(tmp_path / "tfds"),
        context_length=16,
        batch_size=32,
        steps_per_loop=10,
    )
    workdir = tmp_path / "lm"
    metrics = template_trainer.train_and_evaluate(config, str(workdir))
    capsys.readouterr()
    assert metrics["val_bpc"] < np.log2(len(set(text)))  # beats uniform
    vocabulary = sample._vocabulary(str(workdir))
    assert vocabulary.VOCABULARY == "".join(sorted(set(text)))
    model = keras.models.load_model(workdir / "model.keras")
    assert model.vocabulary == vocabulary.VOCABULARY
    sample.FLAGS.unparse_flags()
    try:
        code = sample.main(
            sample._parse_flags(
                ["sample", f"--workdir={workdir}", "--prompt=al", "--length=20"]
            )
        )
    finally:
        sample.FLAGS.unparse_flags()
    out = capsys.readouterr().out
    assert code == 0 and out.startswith("al") and len(out) == 23
    assert set(out[:-1]) <= set(text)


def test_text_splits_are_whole_blocks_fixed_by_the_seed(tmp_path):
    text = "".join(chr(ord("a") + i % 26) for i in range(5000))
    block, chosen = splits.text_blocks(len(text), 64, 0.1, 0, "t")
    assert block == 250  # a twentieth of a text under 20 x 2048
    assert len(chosen["validation"]) == len(chosen["test"]) == 2
    every = np.concatenate(list(chosen.values()))
    assert sorted(every.tolist()) == list(range(20))
    assert splits.text_blocks(len(text), 64, 0.1, 0, "t")[1][
        "test"
    ].tolist() == (chosen["test"].tolist())
    other = splits.text_blocks(len(text), 64, 0.1, 1, "t")[1]
    assert other["validation"].tolist() != chosen["validation"].tolist()


BAD_DATA = {
    "empty": ("csv", "", "is empty"),
    "non-numeric": ("csv", "x,label\n1,a\nb,a\n", "holds 'b'"),
    "no label column": ("csv", "x,y\n1,2\n", "no column 'label'"),
    "class too small": (
        "csv",
        "x,label\n" + "".join(f"{i},a\n" for i in range(20)) + "1,b\n2,b\n",
        "class 'b' has 2 example(s)",
    ),
    "text not utf-8": ("text", b"caf\xe9 au lait", "not UTF-8"),
    "text too short": ("text", "a short text", "shorter than one window"),
}


@pytest.mark.parametrize("case", BAD_DATA)
def test_bad_data_is_one_line_and_writes_nothing(tmp_path, case):
    kind, content, expected = BAD_DATA[case]
    path = tmp_path / f"data.{kind}"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    data_dir = tmp_path / "tfds"
    with pytest.raises(DataError) as error:
        _create(f"{kind}:{path}", data_dir)
    _assert_one_line(error.value, expected)
    assert not any(name.endswith("_source") for name in _listing(data_dir)), (
        "a cache was written"
    )


def _listing(data_dir):
    return os.listdir(data_dir) if data_dir.exists() else []


def _assert_one_line(error, expected):
    message = str(error)
    assert error.exit_code == 2
    assert "\n" not in message and expected in message, message


def test_bad_images_are_one_line(tmp_path):
    mixed = write_folder(tmp_path / "mixed", sizes=[(8, 8), (9, 8)])
    with pytest.raises(DataError) as error:
        _create(f"imagefolder:{mixed}", tmp_path / "tfds")
    _assert_one_line(error.value, "--config.image_size")
    broken = write_folder(tmp_path / "broken")
    (broken / "dark" / "3.png").write_bytes(b"not an image")
    with pytest.raises(DataError) as error:
        _create(f"imagefolder:{broken}", tmp_path / "tfds")
    _assert_one_line(error.value, "3.png is not a readable PNG or JPEG")
    assert "imagefolder_source" not in _listing(tmp_path / "tfds")


def test_bad_data_through_the_trainer_leaves_no_workdir(tmp_path):
    csv = tmp_path / "bad.csv"
    csv.write_text("x,label\n1,a\nNaN,b\n")
    workdir = tmp_path / "run"
    with pytest.raises(template_trainer.RunError) as error:
        template_trainer.train_and_evaluate(
            _csv_config(tmp_path, csv), str(workdir)
        )
    _assert_one_line(error.value, "expected a finite number")
    assert not workdir.exists()


@pytest.mark.parametrize(
    "dataset, expected",
    [
        ("csv:nowhere.csv", "no such path; expected a file"),
        ("imagefolder:", "expected a path after 'imagefolder:'"),
        ("texts:a.txt", "csv:FILE, imagefolder:DIR or text:FILE"),
    ],
)
def test_dataset_spec_is_checked_with_the_config(dataset, expected):
    with pytest.raises(config_checks.ConfigError) as error:
        config_checks.validate(tiny_config(dataset=dataset))
    _assert_one_line(error.value, expected)


def test_feature_rows_refuse_image_shifts(tmp_path):
    info = pipeline.DatasetInfo((2,), 3, 48, 6, 6, "train", kind="tabular")
    with pytest.raises(config_checks.ConfigError) as error:
        config_checks.check_fits(16, 1, info, 1, "val_accuracy")
    _assert_one_line(error.value, "expected 0 for a dataset of feature rows")
    config_checks.check_fits(16, 0, info, 1, "val_accuracy")


def test_mlp_normalization_survives_saving(tmp_path):
    model = models.MLPClassifier(
        (2,), 3, hidden_units=(4,), normalization=((10.0, 20.0), (4.0, 9.0))
    )
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    x = np.array([[10.0, 20.0], [12.0, 23.0]], np.float32)
    np.testing.assert_allclose(loaded(x), model(x), rtol=1e-6)
    scaled = loaded.get_layer("normalization")(x)
    np.testing.assert_allclose(scaled, [[0, 0], [1, 1]], atol=1e-6)
