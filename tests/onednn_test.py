"""oneDNN's kernels are what users get unless they chose: the commands and
`import mylayers` / `models` set `TF_ENABLE_ONEDNN_OPTS=1` before
TensorFlow loads, and leave a user's own value alone."""

import importlib
import os
import subprocess
import sys

import pytest

import mylayers._onednn

VARIABLE = "TF_ENABLE_ONEDNN_OPTS"


def _reload_without_tensorflow(monkeypatch):
    monkeypatch.delitem(sys.modules, "tensorflow")
    importlib.reload(mylayers._onednn)


def test_import_switches_onednn_on(monkeypatch):
    monkeypatch.delenv(VARIABLE, raising=False)
    _reload_without_tensorflow(monkeypatch)
    assert os.environ[VARIABLE] == "1"


def test_import_keeps_the_users_choice(monkeypatch):
    monkeypatch.setenv(VARIABLE, "0")
    _reload_without_tensorflow(monkeypatch)
    assert os.environ[VARIABLE] == "0"


def test_import_after_tensorflow_changes_nothing(monkeypatch):
    import tensorflow  # noqa: F401  Loaded: too late to choose.

    monkeypatch.delenv(VARIABLE, raising=False)
    importlib.reload(mylayers._onednn)
    assert VARIABLE not in os.environ


@pytest.mark.slow  # Loads TensorFlow in a fresh process (~5 s).
def test_import_models_switches_onednn_on():
    # `models` loads TensorFlow (through `models.sampling`) at once.
    env = {k: v for k, v in os.environ.items() if k != VARIABLE}
    script = f"import os, models; print(os.environ.get('{VARIABLE}'))"
    result = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.stdout.strip() == "1", result.stderr


# The commands set it at import, before absl and TensorFlow: a fresh
# process is the point (importing them loads no TensorFlow, ~0.3 s each).
@pytest.mark.parametrize("command", ["train", "template_trainer.sample"])
@pytest.mark.parametrize("user, expected", [(None, "1"), ("0", "0")])
def test_commands_switch_onednn_on(command, user, expected):
    env = {k: v for k, v in os.environ.items() if k != VARIABLE}
    if user is not None:
        env[VARIABLE] = user
    script = f"import os, {command}; print(os.environ['{VARIABLE}'])"
    result = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.stdout.strip() == expected, result.stderr
