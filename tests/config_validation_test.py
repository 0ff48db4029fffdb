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
    ("--config.batch_size=abc", "--config.batch_size=abc"),
    (
        "--config.learning_rate=0",
        "config.learning_rate=0.0 is invalid: expected a number > 0",
    ),
    ("--config.learning_rate=-1", "config.learning_rate=-1.0 is invalid"),
    ("--config.no_such_field=1", "unknown config field 'no_such_field'"),
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
    ("--config.max_shift=-1", "config.max_shift=-1 is invalid"),
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
    assert "no_such_config.py" in result.stderr.splitlines()[-1]


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
