"""Mutants of the data sources of one's own (`template_trainer/data/`):
splits, cache, drift, normalization, label names, errors."""

from tests.mutation.mutant import Mutant

DATA_TESTS = ("tests/data_sources_test.py",)

MUTANTS = [
    Mutant(
        name="holdout-ignores-seed",
        feature="own sources' validation and test are drawn by the seed",
        file="template_trainer/data/splits.py",
        old="rng = np.random.default_rng([seed, label])",
        new="rng = np.random.default_rng([0, label])",
        tests=DATA_TESTS,
    ),
    Mutant(
        name="holdout-test-twice-validation",
        feature="a source without a test split gives up as much to test "
        "as to validation",
        file="template_trainer/data/pipeline.py",
        old='        fractions["test"] = val_fraction',
        new='        fractions["test"] = 2 * val_fraction',
        tests=DATA_TESTS,
    ),
    Mutant(
        name="cache-key-ignores-content",
        feature="the cache is keyed by the source's content",
        file="template_trainer/data/store.py",
        old="                digest.update(chunk)",
        new="                pass",
        tests=DATA_TESTS,
    ),
    Mutant(
        name="no-drift-check",
        feature="resuming on changed data is refused as drift",
        file="template_trainer/workdir.py",
        old='if saved.get("dataset") == dataset and old != new:',
        new="if False:",
        tests=DATA_TESTS,
    ),
    Mutant(
        name="no-normalization-passed",
        feature="the trainer gives the MLP the training split's statistics",
        file="template_trainer/setup.py",
        old="    kwargs.update(_data_arguments(architecture, info))\n",
        new="",
        tests=DATA_TESTS,
    ),
    Mutant(
        name="mlp-normalization-not-saved",
        feature="MLPClassifier's normalization survives .keras saving",
        file="models/mlp.py",
        old='            "normalization": self.normalization,\n',
        new="",
        tests=DATA_TESTS,
    ),
    Mutant(
        name="labels-sorted-as-text",
        feature="integer labels sort as numbers",
        file="template_trainer/data/tabular.py",
        old="names = sorted(set(labels), key=int)",
        new="names = sorted(set(labels))",
        tests=DATA_TESTS,
    ),
    Mutant(
        name="class-too-small-allowed",
        feature="a class too small to split is one line, not an empty class",
        file="template_trainer/data/splits.py",
        old="if sum(counts) >= len(where):",
        new="if False:",
        tests=DATA_TESTS,
    ),
    Mutant(
        name="mixed-image-sizes-allowed",
        feature="images of mixed sizes need config.image_size",
        file="template_trainer/data/image_folder.py",
        old="elif image.shape != first[1]:",
        new="elif False:",
        tests=DATA_TESTS,
    ),
    Mutant(
        name="image-size-ignored",
        feature="config.image_size resizes an image folder",
        file="template_trainer/data/image_folder.py",
        old="    if image_size:\n        image = tf.image.resize(",
        new="    if False:\n        image = tf.image.resize(",
        tests=DATA_TESTS,
    ),
    Mutant(
        name="tabular-max-shift-allowed",
        feature="feature rows refuse max_shift",
        file="template_trainer/config_checks.py",
        old='    if info.kind == "tabular":\n        if max_shift:',
        new='    if info.kind == "tabular":\n        if False:',
        tests=DATA_TESTS,
    ),
    Mutant(
        name="text-vocabulary-not-kept",
        feature="a text:PATH run keeps its vocabulary for sampling",
        file="template_trainer/data/pipeline.py",
        old="        vocabulary=characters,\n",
        new="",
        tests=DATA_TESTS,
    ),
    Mutant(
        name="training-data-autotuned",
        feature="training streams go without tf.data's autotuning model, "
        "whose thread TF 2.21 frees only at its next round (up to 60 s)",
        file="template_trainer/data/pipeline.py",
        old="    options.autotune.enabled = False\n",
        new="",
        tests=(
            "tests/input_pipeline_test.py",
            "tests/text_pipeline_test.py",
        ),
    ),
    Mutant(
        name="bundled-data-file-not-installed",
        feature="the bundled datasets' files travel in the wheel",
        file="pyproject.toml",
        old='"template_trainer.data.digits" = ["digits.csv.gz", "README.md"]',
        new='"template_trainer.data.digits" = ["README.md"]',
        tests=("tests/packaging_test.py",),
    ),
    Mutant(
        name="trainer-subpackages-not-installed",
        feature="the trainer package is installed with its subpackages, "
        "the bundled datasets among them",
        file="pyproject.toml",
        old='  "template_trainer*",',
        new='  "template_trainer",',
        tests=("tests/packaging_test.py",),
    ),
]
