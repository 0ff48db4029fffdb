"""`train.py` as a user runs it: one subprocess test per behaviour of the
command line (exit codes, one-line errors, what a log file receives).

What the trainer decides is tested in-process elsewhere; here the process
boundary is the point.
"""

import os
import pty
import subprocess
import sys

import pytest
from run_helpers import REPO, run, train_command


def _errors(result):
    return [s for s in result.stderr.splitlines() if s.startswith("error:")]


def _assert_one_line_error(result, code, expected):
    assert result.returncode == code, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    [error] = _errors(result)
    assert expected in error


@pytest.mark.slow
def test_a_run_logs_plain_lines_and_ends_with_done(tmp_path):
    """Stdout is a pipe here, as in a job log: no ANSI escapes, no
    carriage-return redraws, one line per epoch."""
    result = run(tmp_path, "--config.num_epochs=2", "--config.model.dropout=0")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "\x1b" not in result.stdout and "\r" not in result.stdout
    lines = result.stdout.splitlines()
    assert lines.count("Epoch 1/2") == 1
    assert any(line.startswith("41/41 - ") for line in lines)
    [done] = [line for line in lines if line.startswith("Done: ")]
    assert "step=82," in done
    for name in ("val_accuracy=", "test_accuracy=", "best_test_accuracy="):
        assert name in done
    assert done.endswith(f"; model: {tmp_path / 'model.keras'}")
    assert "85,002 parameters. Data: 1,302 train, 140 validation, 355 test" in (
        result.stdout
    )
    # TensorFlow's C++ start-up notes (no GPU here) are gone; a finished
    # run leaves no lock.
    for noise in ("cuInit", "cuda drivers", "absl::InitializeLog", "oneDNN"):
        assert noise not in result.stderr
    assert not (tmp_path / "lock").exists()


@pytest.mark.slow
def test_a_terminal_gets_the_redrawn_progress_bar(tmp_path):
    """Only a real pseudo-terminal shows that the bar stays for people."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        train_command(tmp_path, "--config.num_epochs=1"),
        stdout=terminal,
        stderr=subprocess.DEVNULL,
    )
    os.close(terminal)
    output = b""
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # the terminal closed: the trainer is done
            break
        if not chunk:
            break
        output += chunk
    assert process.wait(timeout=120) == 0
    os.close(controller)
    assert b"\r" in output and b"\x1b[" in output
    assert b"Done: " in output


def test_config_error_is_one_line_and_exit_2(tmp_path):
    result = run(tmp_path / "w", "--config.batch_size=0")
    _assert_one_line_error(
        result, 2, "config.batch_size=0 is invalid: expected an integer >= 1"
    )
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize(
    "override, expected",
    [
        (
            "--config.batch_size=abc",
            "--config.batch_size=abc: expected an integer",
        ),
        ("--config.no_such_field=1", "unknown config field 'no_such_field'"),
        (
            "--config.learnin_rate=1e-3",
            "unknown config field 'learnin_rate' (in "
            '--config.learnin_rate=1e-3). Did you mean "learning_rate"',
        ),
        ("--config.model.no_such=1", "unknown config field 'no_such'"),
        (
            "--config.deterministic=yes",
            "error: --config.deterministic=yes: expected True or False.",
        ),
        (
            "--config.learning_rate=fast",
            "error: --config.learning_rate=fast: expected a number.",
        ),
    ],
)
def test_bad_flag_is_one_line_and_exit_2(tmp_path, override, expected):
    _assert_one_line_error(run(tmp_path / "w", override), 2, expected)


def test_stray_argument_is_one_line_and_exit_2(tmp_path):
    command = train_command(tmp_path, "extra")
    result = subprocess.run(command, capture_output=True, text=True)
    _assert_one_line_error(result, 2, "unexpected arguments ['extra']")


def test_missing_config_file(tmp_path):
    result = run(tmp_path, config="no_such_config.py")
    _assert_one_line_error(result, 2, "no_such_config.py does not exist")


CONFIG_FILES = [
    ("config.json", '{"seed": null}', "is not a Python file"),
    ("broken.py", "def get_config(:\n", "broken.py, line 1: SyntaxError"),
    ("no_function.py", "X = 1\n", "defines no get_config()"),
    (
        "raises.py",
        "def get_config():\n    return null\n",
        "raises.py, line 2: NameError: name 'null' is not defined",
    ),
    (
        "wrong_type.py",
        "import ml_collections\n\n\ndef get_config():\n"
        "    config = ml_collections.ConfigDict({'seed': 0})\n"
        "    config.seed = 'zero'\n    return config\n",
        "wrong_type.py, line 6: TypeError: Could not override field 'seed'",
    ),
]


@pytest.mark.parametrize(
    "name, text, expected", CONFIG_FILES, ids=[c[0] for c in CONFIG_FILES]
)
def test_unusable_config_file_is_one_line_error(tmp_path, name, text, expected):
    path = tmp_path / name
    path.write_text(text)
    _assert_one_line_error(run(tmp_path / "w", config=str(path)), 2, expected)


def test_config_is_checked_before_tensorflow_is_imported():
    """What train.py runs before the import: a fresh process shows that it
    loads no TensorFlow, Keras or numpy."""
    script = (
        "import sys\n"
        "from template_trainer import config_checks\n"
        "from configs import default\n"
        "config_checks.validate(default.get_config())\n"
        "print(sorted(m for m in ('tensorflow', 'keras', 'numpy') "
        "if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
