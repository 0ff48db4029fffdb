"""`python -m template_trainer.sample`, the sampler's command line.

Its parser and `main` run in this process (what `app.run` would call),
so every error case costs milliseconds. Two subprocesses (~4 s each, the
TensorFlow import) show what only the command as a user runs it shows:
the same text in another process for the same seed, the speed on stderr,
and that `app.run` is given the parser of one-line errors.
"""

import re
import subprocess
import sys

import keras
import pytest
from run_helpers import REPO, same_threads_env, tiny_lm_config

import models
from template_trainer import sample
from template_trainer import workdir as workdir_guard
from template_trainer.data import python_docs


def _save_run(workdir, config, model_seeds=()):
    """A workdir as a run leaves it: its config.json and, for each of
    `model_seeds`' names, a tiny LM of that seed."""
    workdir.mkdir(exist_ok=True)
    workdir_guard.save_config(str(workdir), config.to_json())
    for name, seed in dict(model_seeds).items():
        keras.utils.set_random_seed(seed)
        model = models.TransformerLM(
            (64,), 97, num_layers=1, num_heads=2, width=16, hidden_units=32
        )
        model.save(workdir / name)
    return workdir


@pytest.fixture(scope="session")
def lm_workdir(tmp_path_factory):
    """A finished tiny-LM run's workdir, its final and best models of
    different weights (so the text shows which one was read). Untrained:
    the sampler does not depend on what the weights learned, and a run of
    its own would cost ~10 s (`lm_test.py` samples a trained one)."""
    return _save_run(
        tmp_path_factory.mktemp("lm"),
        tiny_lm_config(),
        {"model.keras": 0, "best_model.keras": 1},
    )


@pytest.fixture(autouse=True)
def _flags_unparsed():
    yield
    sample.FLAGS.unparse_flags()


def _sample(capsys, *args):
    """The command in this process: `(exit code, stdout, stderr)`."""
    sample.FLAGS.unparse_flags()  # Unpassed flags take their defaults.
    try:
        code = sample.main(sample._parse_flags(["sample", *args]))
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


ARGS = ["--prompt=The list", "--length=30", "--seed=3"]


def test_prints_the_prompt_and_its_continuation(lm_workdir, capsys):
    code, out, err = _sample(capsys, f"--workdir={lm_workdir}", *ARGS)
    assert code == 0, err
    assert out.startswith("The list") and out.endswith("\n")
    text = out[len("The list") : -1]
    assert len(text) == 30
    python_docs.encode(text)  # in the vocabulary: raises if not
    assert f"30 characters from {lm_workdir}/best_model.keras in " in err

    _, again, _ = _sample(capsys, f"--workdir={lm_workdir}", *ARGS)
    assert again == out
    _, other_seed, _ = _sample(
        capsys, f"--workdir={lm_workdir}", *ARGS, "--seed=4"
    )
    assert other_seed != out
    _, final, err = _sample(
        capsys, f"--workdir={lm_workdir}", *ARGS, "--model=final"
    )
    assert f"from {lm_workdir}/model.keras in " in err
    assert final != out  # other weights


@pytest.mark.slow
def test_command_line_prints_the_same_text_as_in_process(lm_workdir, capsys):
    """Same workdir, prompt and seed, same text, in any process; the speed
    is said on stderr, apart from the text."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "template_trainer.sample",
            f"--workdir={lm_workdir}",
            *ARGS,
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        env=same_threads_env(),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    _, in_process, _ = _sample(capsys, f"--workdir={lm_workdir}", *ARGS)
    assert result.stdout == in_process
    assert re.search(
        rf"^30 characters from {re.escape(str(lm_workdir))}/best_model\.keras"
        r" in \d+\.\d\d s \(\d+ characters/s",
        result.stderr,
        re.MULTILINE,
    ), result.stderr[-3000:]


@pytest.mark.slow
def test_command_line_error_is_one_line_and_exit_2(tmp_path):
    """absl's own parser would print two lines and exit 1; the command's
    parser is what `app.run` is given, which only a process shows."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "template_trainer.sample",
            f"--workdir={tmp_path}",
            "--length=abc",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    errors = [s for s in result.stderr.splitlines() if s.startswith("error:")]
    assert errors == ["error: flag --length=abc: expected an integer."]


ERRORS = [
    ("--prompt=", "--prompt is empty; expected at least one character"),
    (
        "--prompt=na\u00efve\tcaf\u00e9",
        "--prompt holds characters outside the vocabulary (printable ASCII "
        "and newline): '\\t\u00e9\u00ef'.",
    ),
    ("--length=0", "--length=0 is invalid: expected a positive number"),
    ("--length=abc", "flag --length=abc: expected an integer."),
    ("--temperature=-0.5", "--temperature=-0.5 is invalid: expected 0"),
    ("--temperature=warm", "flag --temperature=warm: expected a number."),
    ("--top_k=-1", "--top_k=-1 is invalid: expected 0 (all) to 97."),
    ("--top_k=98", "--top_k=98 is invalid: expected 0 (all) to 97."),
    ("--model=last", "flag --model=last: value should be one of <best|final>"),
    ("stray", "unexpected arguments ['stray']; expected only flags"),
]


def _assert_one_line_error(code, out, err, expected):
    assert code == 2
    assert out == ""
    assert err.splitlines() == [err.splitlines()[0]]
    assert err.startswith("error: ")
    assert expected in err


@pytest.mark.parametrize("arg, expected", ERRORS, ids=[e[0] for e in ERRORS])
def test_bad_flag_is_one_line_error(lm_workdir, capsys, arg, expected):
    code, out, err = _sample(capsys, f"--workdir={lm_workdir}", arg)
    _assert_one_line_error(code, out, err, expected)


def test_missing_workdir_flag(capsys):
    _assert_one_line_error(
        *_sample(capsys), "--workdir must have a value other than None"
    )


def test_workdir_of_no_run(tmp_path, capsys):
    _assert_one_line_error(
        *_sample(capsys, f"--workdir={tmp_path}"),
        f"{tmp_path} holds no trained run (no config.json); train one first",
    )


def test_workdir_of_an_image_model(tmp_path, capsys):
    _save_run(tmp_path, tiny_lm_config(dataset="digits"))
    _assert_one_line_error(
        *_sample(capsys, f"--workdir={tmp_path}"),
        "holds a model of the 'digits' dataset, not a language model",
    )


@pytest.mark.parametrize("which", ["best", "final"])
def test_unfinished_run(tmp_path, capsys, which):
    """A run killed before its end has checkpoints but no exported model."""
    _save_run(tmp_path, tiny_lm_config())
    code, out, err = _sample(
        capsys, f"--workdir={tmp_path}", f"--model={which}"
    )
    name = "best_model.keras" if which == "best" else "model.keras"
    _assert_one_line_error(
        code, out, err, f"{tmp_path} has no {name}: the run has not finished"
    )
    assert ("or use --model=best" in err) == (which == "final")
