"""Bad configs are refused before any work, each with one line.

In-process: `config_checks.validate` and `train_and_evaluate`. What only
the command line does (flag parsing, exit codes) is in `cli_test.py`.
"""

import pytest
from run_helpers import tiny_config

import template_trainer
from configs import default
from template_trainer import config_checks, schema, workdir

BAD = [
    (
        "batch_size",
        0,
        "config.batch_size=0 is invalid: expected an integer >= 1",
    ),
    ("batch_size", True, "config.batch_size=True is invalid"),
    (
        "learning_rate",
        0.0,
        "config.learning_rate=0.0 is invalid: expected a number > 0",
    ),
    ("learning_rate", -1.0, "config.learning_rate=-1.0 is invalid"),
    ("learning_rate", float("inf"), "config.learning_rate=inf is invalid"),
    (
        "dataset",
        "imagenet",
        "config.dataset='imagenet' is invalid: expected one of cifar10, "
        "digits, fashion_mnist, mnist",
    ),
    (
        "model.name",
        "transformer",
        "config.model.name='transformer' is invalid: expected one of",
    ),
    (
        "optimizer",
        "lion",
        "config.optimizer='lion' is invalid: expected one of adam, adamw, sgd",
    ),
    ("schedule", "linear", "config.schedule='linear' is invalid"),
    (
        "model.dropout",
        1.5,
        "config.model.dropout=1.5 is invalid: expected a number >= 0.0 "
        "and < 1.0",
    ),
    ("num_epochs", 0, "config.num_epochs=0 is invalid"),
    ("momentum", 2.0, "config.momentum=2.0 is invalid"),
    (
        "model.hidden_units",
        (64, 0),
        "config.model.hidden_units=(64, 0) is invalid",
    ),
    ("distribution", "horovod", "config.distribution='horovod' is invalid"),
    ("boundaries", (500, 100), "config.boundaries=(500, 100) is invalid"),
    ("best_metric", "loss", "config.best_metric='loss' is invalid"),
    (
        "best_metric",
        "eval_accuracy",
        "config.best_metric='eval_accuracy' is invalid: expected one of "
        "val_accuracy, val_bpc, val_loss",
    ),
    (
        "best_metric",
        "test_accuracy",
        "config.best_metric='test_accuracy' is invalid",
    ),
    (
        "val_fraction",
        0.0,
        "config.val_fraction=0.0 is invalid: expected a number > 0.0 and < 1.0",
    ),
    ("val_fraction", 1.0, "config.val_fraction=1.0 is invalid"),
    ("max_shift", -1, "config.max_shift=-1 is invalid"),
    ("seed", -1, "config.seed=-1 is invalid"),
    (
        "seed",
        99999999999,
        "config.seed=99999999999 is invalid: expected an integer from 0 to",
    ),
    ("data_dir", "", "config.data_dir='' is invalid"),
    ("val_every_epochs", 0, "config.val_every_epochs=0 is invalid"),
    (
        "checkpoint_every_steps",
        -5,
        "config.checkpoint_every_steps=-5 is invalid",
    ),
    ("cpu_devices", -1, "config.cpu_devices=-1 is invalid"),
    (
        "nesterov",
        "yes",
        "config.nesterov='yes' is invalid: expected True or False",
    ),
]


def _set(config, field, value):
    *parents, name = field.split(".")
    for parent in parents:
        config = config[parent]
    with config.ignore_type():
        config[name] = value


@pytest.mark.parametrize(
    "field, value, expected", BAD, ids=[f"{b[0]}={b[1]!r}" for b in BAD]
)
def test_bad_value_is_one_line_config_error(field, value, expected):
    config = default.get_config()
    _set(config, field, value)
    with pytest.raises(config_checks.ConfigError) as error:
        config_checks.validate(config)
    message = str(error.value)
    assert expected in message
    assert "\n" not in message
    assert error.value.exit_code == 2


def test_default_config_is_valid():
    config_checks.validate(default.get_config())


def test_architecture_without_dropout_validates():
    """`model.dropout` is the built-in architectures' field, not a required
    one: a user's architecture may have none."""
    config = default.get_config()
    del config.model["dropout"]
    config_checks.validate(config)


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (
            {"max_shift": 100},
            "config.max_shift=100 is invalid: expected at most 3 for 8x8 "
            "images",
        ),
        (
            {"best_metric": "val_bpc"},
            "config.best_metric='val_bpc' is invalid: bits per character are "
            "for text datasets",
        ),
        (
            {"dataset": "python_docs"},  # tiny_config's max_shift is 1
            "config.max_shift=1 is invalid: expected 0 for a text dataset",
        ),
        (
            {"activation": "relux"},
            "config.model is invalid: Could not interpret activation "
            "function identifier: relux (building 'mlp' for (8, 8, 1) "
            "inputs; raised at ",
        ),
    ],
)
def test_what_depends_on_the_data_is_refused_before_training(
    tmp_path, overrides, expected
):
    config = tiny_config()
    if "activation" in overrides:
        config.model.activation = overrides.pop("activation")
    config.update(overrides)
    with pytest.raises(config_checks.ConfigError) as error:
        template_trainer.train_and_evaluate(config, str(tmp_path / "w"))
    assert expected in str(error.value)
    assert not (tmp_path / "w" / "checkpoints").exists()


def test_data_dir_that_is_a_file_is_refused(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    config = default.get_config()
    config.data_dir = str(a_file)
    with pytest.raises(config_checks.ConfigError, match="config.data_dir="):
        config_checks.validate(config)


@pytest.mark.parametrize(
    "path, expected",
    [
        ("a_file", "cannot be used (File exists"),
        ("a_file/run", "cannot be used (Not a directory"),
        ("", "--workdir is empty"),
    ],
)
def test_unusable_workdir_is_one_line_error(tmp_path, path, expected):
    (tmp_path / "a_file").write_text("")
    target = str(tmp_path / path) if path else ""
    with pytest.raises(workdir.WorkdirError) as error:
        template_trainer.train_and_evaluate(tiny_config(), target)
    assert expected in str(error.value)
    assert not (tmp_path / "checkpoints").exists()


def test_names_kept_without_tensorflow_are_those_the_modules_use():
    import models
    from mylayers import checks
    from template_trainer import distribution, optimizers

    assert sorted(schema.ARCHITECTURES) == sorted(models.ARCHITECTURES)
    assert schema.OPTIMIZERS == optimizers.OPTIMIZERS
    assert schema.SCHEDULES == optimizers.SCHEDULES
    assert schema.STRATEGIES == distribution.STRATEGIES
    values = [0, 1, -1, 2.5, True, None, "1", float("inf"), float("nan")]
    for value in values:
        for bound in (None, 0, 1):
            assert schema.is_int(value, bound) == checks.is_int(value, bound)
            assert schema.is_number(value, bound) == (
                checks.is_number(value, bound)
            )


@pytest.mark.parametrize(
    "name, valid",
    [
        ("my_models:MyModel", True),
        ("package.module:factory", True),
        ("my_models:Outer.Inner", True),
        ("my_models", False),
        ("my_models:", False),
        ("my models:X", False),
        ("my_models:MyModel()", False),
    ],
)
def test_model_name_may_be_an_import_path(name, valid):
    config = default.get_config()
    config.model.name = name
    if valid:
        config_checks.validate(config)
        return
    with pytest.raises(config_checks.ConfigError) as error:
        config_checks.validate(config)
    assert "or an architecture of your own as 'package.module:Attribute'" in (
        str(error.value)
    )
