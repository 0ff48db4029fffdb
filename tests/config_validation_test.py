"""Bad configs end before any work with one line, exit code 2."""

import pytest
from run_helpers import run

import config_validation
from configs import default

BAD = [
    (
        "--config.batch_size=0",
        "config.batch_size=0 is invalid: expected an integer >= 1",
    ),
    (
        "--config.batch_size=abc",
        "--config.batch_size=abc: expected an integer",
    ),
    (
        "--config.learning_rate=0",
        "config.learning_rate=0.0 is invalid: expected a number > 0",
    ),
    ("--config.learning_rate=-1", "config.learning_rate=-1.0 is invalid"),
    ("--config.no_such_field=1", "unknown config field 'no_such_field'"),
    (
        "--config.learnin_rate=1e-3",
        "unknown config field 'learnin_rate' (in --config.learnin_rate=1e-3)."
        ' Did you mean "learning_rate"',
    ),
    ("--config.model.no_such=1", "unknown config field 'no_such'"),
    (
        "--config.dataset=imagenet",
        "config.dataset='imagenet' is invalid: expected one of cifar10, "
        "digits, fashion_mnist, mnist",
    ),
    (
        "--config.model.name=transformer",
        "config.model.name='transformer' is invalid: expected one of",
    ),
    (
        "--config.optimizer=lion",
        "config.optimizer='lion' is invalid: expected one of adam, adamw, sgd",
    ),
    ("--config.schedule=linear", "config.schedule='linear' is invalid"),
    (
        "--config.model.dropout=1.5",
        "config.model.dropout=1.5 is invalid: "
        "expected a number >= 0.0 and < 1.0",
    ),
    ("--config.num_epochs=0", "config.num_epochs=0 is invalid"),
    ("--config.momentum=2.0", "config.momentum=2.0 is invalid"),
    (
        "--config.model.hidden_units=(64, 0)",
        "config.model.hidden_units=(64, 0) is invalid",
    ),
    (
        "--config.distribution=horovod",
        "config.distribution='horovod' is invalid",
    ),
    (
        "--config.boundaries=(500, 100)",
        "config.boundaries=(500, 100) is invalid",
    ),
    ("--config.best_metric=loss", "config.best_metric='loss' is invalid"),
    (
        "--config.best_metric=eval_acc",
        "config.best_metric='eval_acc' is invalid: expected one of "
        "eval_accuracy, eval_loss",
    ),
    ("--config.max_shift=-1", "config.max_shift=-1 is invalid"),
    (
        "--config.max_shift=100",
        "config.max_shift=100 is invalid: expected at most 3 for 8x8 images",
    ),
    ("--config.seed=-1", "config.seed=-1 is invalid"),
    (
        "--config.seed=99999999999",
        "config.seed=99999999999 is invalid: expected an integer from 0",
    ),
    ("--config.learning_rate=inf", "config.learning_rate=inf is invalid"),
    ("--config.data_dir=", "config.data_dir='' is invalid"),
    (
        "--config.model.activation=relux",
        "config.model is invalid: Could not interpret activation function "
        "identifier: relux (building 'mlp' for (8, 8, 1) inputs; raised at ",
    ),
]


@pytest.mark.parametrize("override, expected", BAD, ids=[b[0] for b in BAD])
def test_bad_config_is_one_line_error(tmp_path, override, expected):
    result = run(tmp_path / "w", override)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    errors = [
        line for line in result.stderr.splitlines() if line.startswith("error:")
    ]
    assert len(errors) == 1, result.stderr
    assert expected in errors[0]
    assert not (tmp_path / "w" / "checkpoints").exists()


def test_missing_config_file(tmp_path):
    result = run(tmp_path, config="no_such_config.py")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "no_such_config.py does not exist" in result.stderr.splitlines()[-1]


CONFIG_FILES = [
    ("config.json", '{"seed": null}', "is not a Python file"),
    ("broken.py", "def get_config(:\n", "could not be loaded (SyntaxError"),
    ("no_function.py", "X = 1\n", "defines no get_config()"),
    (
        "raises.py",
        "def get_config():\n    return null\n",
        "could not be loaded (NameError",
    ),
]


@pytest.mark.parametrize(
    "name, text, expected", CONFIG_FILES, ids=[c[0] for c in CONFIG_FILES]
)
def test_unusable_config_file_is_one_line_error(tmp_path, name, text, expected):
    path = tmp_path / name
    path.write_text(text)
    result = run(tmp_path / "w", config=str(path))
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    [error] = [
        line for line in result.stderr.splitlines() if line.startswith("error:")
    ]
    assert expected in error


def test_unusable_workdir_is_one_line_error(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    for workdir, expected in (
        (a_file, "cannot be used (File exists"),
        (a_file / "run", "cannot be used (Not a directory"),
        ("", "--workdir is empty"),
    ):
        result = run(workdir, "--config.num_epochs=1")
        assert result.returncode == 2, result.stderr[-2000:]
        assert "Traceback" not in result.stderr
        [error] = [
            line
            for line in result.stderr.splitlines()
            if line.startswith("error:")
        ]
        assert expected in error
    assert not (tmp_path / "checkpoints").exists()


def test_data_dir_that_is_a_file_is_one_line_error(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    result = run(tmp_path / "w", f"--config.data_dir={a_file}")
    assert result.returncode == 2
    assert f"config.data_dir='{a_file}' is invalid" in result.stderr


def test_default_config_is_valid():
    config_validation.validate(default.get_config())


@pytest.mark.parametrize(
    "field, value",
    [
        ("eval_every_epochs", 0),
        ("checkpoint_every_steps", -5),
        ("cpu_devices", -1),
    ],
)
def test_validate_rejects_in_process(field, value):
    config = default.get_config()
    config[field] = value
    with pytest.raises(config_validation.ConfigError, match=f"config.{field}="):
        config_validation.validate(config)


def test_architecture_without_dropout_validates():
    """`model.dropout` is the built-in architectures' field, not a required
    one: a user's architecture may have none."""
    config = default.get_config()
    del config.model["dropout"]
    config_validation.validate(config)
