"""What `train.py` and `python -m template_trainer.sample` share: the
process's settings, flags parsed with one-line errors, the config checked
before TensorFlow starts, and a run's end in one line.

absl's own parser prints two lines and exits 1 for a bad flag, and a
traceback for an unknown config field or a config file that raises; here
each is one line and exit 2. Where absl and ml_collections say what went
wrong only in words, the words are read in `upstream.py`.
"""

import os
import sys
import traceback
import warnings

from absl import flags

from template_trainer import upstream


def set_process_defaults():
    """What the commands set before anything imports TensorFlow, unless the
    user set it: Keras's TensorFlow backend, TensorFlow's C++ notes and
    warnings hidden (its start-up lines, which this does not reach, are
    filtered by `startup`), and oneDNN's kernels (why: mylayers/_onednn.py).
    """
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")


def fail(message):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def parse_flags(flag_values, argv):
    """`flag_values(argv)`, with absl's errors in one line, exit 2: a
    number flag that does not parse says what was expected."""
    try:
        return flag_values(argv)
    except flags.Error as e:
        message, expected = upstream.without_python_parse_error(
            upstream.one_line(e)
        )
        fail(f"{message}: expected {expected}." if expected else message)


def _config_path(argv):
    """The value of `--config` in `argv`, or None."""
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def _check_config_file(path):
    """Fails in one line if `path` cannot be a config file at all."""
    if not os.path.isfile(path):
        fail(
            f"config file {path} does not exist; expected a Python config "
            "file such as configs/default.py."
        )
    if not path.endswith(".py"):
        fail(
            f"--config {path} is not a Python file; expected a config file "
            "such as configs/default.py (a workdir's config.json is a "
            "record of its run, not a config file)."
        )


def parse_config_flags(flag_values, argv):
    """`parse_flags` for a command with a `--config` file: a missing or
    broken file, an unknown field and a value that does not parse are each
    one line, exit 2."""
    path = _config_path(argv)
    if path is not None:
        _check_config_file(path)
    try:
        return flag_values(argv)
    except flags.Error as e:
        if upstream.is_config_file_failure(e):
            fail(_config_file_error(path, e))
        fail(_flag_error(flag_values, e))
    except (AttributeError, KeyError) as e:
        if upstream.lacks_get_config(e):
            fail(
                f"config file {path} defines no get_config(); expected one "
                "that returns an ml_collections.ConfigDict, as "
                "configs/default.py does."
            )
        unknown = upstream.unknown_config_field(e)
        if unknown is None:
            fail(_config_file_error(path, e))
        name, hint = unknown
        overrides = [a for a in argv[1:] if a.startswith("--config.")]
        hint = f" {hint}" if hint else ""
        fail(
            f"unknown config field '{name}' (in "
            f"{' '.join(overrides)}).{hint} The fields are those of the "
            "config file's get_config()."
        )
    except Exception as e:  # noqa: BLE001 - anything the config file raises
        fail(_config_file_error(path, e))


def _config_file_error(path, error):
    """`config file PATH, line N: Type: message`, from the innermost error
    raised in the config file (ml_collections re-raises a `TypeError` or
    `ValueError` as a new one holding the traceback's text; the original
    is its context)."""
    chain, cause = [], error
    while cause is not None and cause not in chain:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    target = os.path.realpath(path)
    for cause in reversed(chain):
        frames = traceback.extract_tb(cause.__traceback__)
        lines = [
            f.lineno for f in frames if os.path.realpath(f.filename) == target
        ]
        if lines or isinstance(cause, SyntaxError):
            line = cause.lineno if isinstance(cause, SyntaxError) else lines[-1]
            message = cause.msg if isinstance(cause, SyntaxError) else cause
            return (
                f"config file {path}, line {line}: {type(cause).__name__}: "
                f"{upstream.one_line(message)}"
            )
    return (
        f"config file {path} could not be loaded ({type(error).__name__}: "
        f"{upstream.one_line(error)}); expected a Python file whose "
        "get_config() returns an ml_collections.ConfigDict, as "
        "configs/default.py does."
    )


# What a `--config.FIELD=VALUE` must be, by the type of the field's value
# in the config file.
_EXPECTED = {
    bool: "expected True or False",
    int: "expected an integer",
    float: "expected a number",
    str: "expected a string",
    tuple: 'expected a tuple, such as "(256, 256)"',
    list: 'expected a list, such as "[256, 256]"',
}


def _flag_error(flag_values, error):
    """One line for a flag absl could not parse: `--config.FIELD=VALUE:
    expected ...` by the field's type, or absl's message, flattened."""
    override = upstream.bad_override(error)
    if override:
        flag, field = override
        try:
            value = flag_values["config"].value
            for part in field.split("."):
                value = value[part]
        except (KeyError, TypeError, AttributeError):
            value = None
        expected = _EXPECTED.get(type(value))
        if expected:
            return f"{flag}: {expected}."
    message = upstream.one_line(error)
    cause = error.__cause__ or error.__context__
    if cause is not None and len(cause.args) > 1:  # ('reason', 'value')
        detail = ": ".join(str(a) for a in cause.args)
        message = message.split(": ", 1)[0] + ": " + detail
    return message


def checked_config(flag_values):
    """The parsed `--config`, refused in one line if bad (or if a Slurm
    environment is half set), before TensorFlow is imported. Makes the
    config file's directory importable (for a `config.model.name` of one's
    own, `my_models:MyModel`, beside it)."""
    from template_trainer import cluster, config_checks

    config = flag_values.config
    try:
        config.keys()  # A config file that failed to load raises here.
    except OSError as e:
        fail(upstream.one_line(e))
    try:
        config_checks.validate(config)
    except config_checks.ConfigError as e:
        fail(str(e))
    try:
        # A half-set Slurm environment, before TensorFlow and its cluster.
        cluster.slurm_cluster(config.distribution)
    except cluster.ClusterError as e:
        fail(str(e))
    path = flag_values["config"].config_filename
    if path:
        directory = os.path.dirname(os.path.abspath(path))
        if directory not in sys.path:
            # After the script's own directory: the project's packages win.
            sys.path.insert(1, directory)
    return config


def import_quiet_tensorflow():
    """Imports TensorFlow without its C++ start-up notes, and keeps its
    INFO lines and tf.data's notes out of the progress bars."""
    from absl import logging

    from template_trainer import startup

    startup.import_tensorflow()
    # TensorFlow's INFO lines (saver, export) would drown the progress bars.
    logging.set_verbosity(logging.WARNING)
    # tf.data says this whenever a distributed dataset is iterated inside a
    # tf.function (each evaluation): nothing a user can act on.
    warnings.filterwarnings(
        "ignore",
        message="To make it possible to preserve tf.data options",
        category=UserWarning,
    )


def run(function):
    """`function()`'s result; a `RunError` it raises ends the process in
    one line with its exit code (2 for input to change, 1 for a failed
    run, 128 + N for signal N, the shell's convention), and Ctrl-C outside
    the training loop (start-up, export) with 130. Inside the loop, the
    trainer saves and stops by itself."""
    from template_trainer import errors

    try:
        return function()
    except errors.RunError as e:
        # Imported only now: it imports Keras, which `function` imports
        # once TensorFlow's start-up notes are filtered.
        from template_trainer import progress

        if progress.interactive():
            print(flush=True)  # End the progress bar's line.
        print(f"{e.label}{e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        print(flush=True)
        print(
            "interrupted by Ctrl-C outside the training loop; no checkpoint "
            "was changed. Rerun the same command to resume.",
            file=sys.stderr,
        )
        sys.exit(128 + 2)


def done_line(metrics, workdir):
    """`Done: step=..., loss=...; model: WORKDIR/model.keras`."""
    figures = ", ".join(
        f"{k}={v}" if isinstance(v, int) else f"{k}={v:.4g}"
        for k, v in metrics.items()
    )
    model = os.path.join(workdir, "model.keras")
    saved = f"; model: {model}" if os.path.exists(model) else ""
    return f"Done: {figures}{saved}"
