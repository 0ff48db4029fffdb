"""Trains a model from a config file.

  python train.py --config configs/default.py --workdir runs/default

Override config fields with `--config.FIELD=VALUE`. Rerunning the same
command on the same workdir resumes from its newest checkpoint.
"""

import os
import re
import sys
import traceback
import warnings

# Keras 3 picks its backend at import time; this project is TensorFlow's.
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# Hide TensorFlow's C++ notes and warnings; its start-up lines, which
# this does not reach, are filtered by `template_trainer.startup`.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# oneDNN's kernels unless the user chose (why: mylayers/_onednn.py).
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Path to a config file (configs/*.py).", lock_config=True
)
flags.DEFINE_string("workdir", None, "Directory for checkpoints and outputs.")
flags.DEFINE_bool(
    "allow_config_change",
    False,
    "Resume a workdir's run even though the config differs from the saved one.",
)
flags.mark_flags_as_required(["config", "workdir"])


def _fail(message):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


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
        _fail(
            f"config file {path} does not exist; expected a Python config "
            "file such as configs/default.py."
        )
    if not path.endswith(".py"):
        _fail(
            f"--config {path} is not a Python file; expected a config file "
            "such as configs/default.py (a workdir's config.json is a "
            "record of its run, not a config file)."
        )


def _parse_flags(argv):
    """absl's own parser prints two lines and exits 1 (or a traceback, for an
    unknown config field or a broken config file); this prints one line and
    exits 2."""
    path = _config_path(argv)
    if path is not None:
        _check_config_file(path)
    try:
        return FLAGS(argv)
    except flags.Error as e:
        if "Error whilst parsing config file" in str(e):
            _fail(_config_file_error(path, e))
        _fail(_flag_error(e))
    except (AttributeError, KeyError) as e:
        # ml_collections wraps a KeyError('name\nDid you mean ...') in an
        # AttributeError for a missing field.
        cause = e.args[0] if e.args else e
        while isinstance(cause, BaseException) and cause.args:
            cause = cause.args[0]
        text = str(cause)
        if "get_config" in text:
            _fail(
                f"config file {path} defines no get_config(); expected one "
                "that returns an ml_collections.ConfigDict, as "
                "configs/default.py does."
            )
        name, _, hint = text.partition("\n")
        name = name.strip().strip("'\"")
        overrides = [a for a in argv[1:] if a.startswith("--config.")]
        hint = f" {hint.strip()}" if hint.strip() else ""
        _fail(
            f"unknown config field '{name}' (in "
            f"{' '.join(overrides)}).{hint} The fields are those of the "
            "config file's get_config()."
        )
    except Exception as e:  # noqa: BLE001 - anything the config file raises
        _fail(_config_file_error(path, e))


def _one_line(text):
    return " ".join(str(text).split())


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
                f"{_one_line(message)}"
            )
    return (
        f"config file {path} could not be loaded ({type(error).__name__}: "
        f"{_one_line(error)}); expected a Python file whose get_config() "
        "returns an ml_collections.ConfigDict, as configs/default.py does."
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


def _flag_error(error):
    """One line for a flag absl could not parse: `--config.FIELD=VALUE:
    expected ...` by the field's type, or absl's message, flattened."""
    message = _one_line(error)
    override = re.match(r"flag (--config\.([\w.]+)=.*?): ", message)
    if override:
        try:
            value = FLAGS["config"].value
            for part in override.group(2).split("."):
                value = value[part]
        except (KeyError, TypeError, AttributeError):
            value = None
        expected = _EXPECTED.get(type(value))
        if expected:
            return f"{override.group(1)}: {expected}."
    cause = error.__cause__ or error.__context__
    if cause is not None and len(cause.args) > 1:  # ('reason', 'value')
        detail = ": ".join(str(a) for a in cause.args)
        message = message.split(": ", 1)[0] + ": " + detail
    return message


def _check_config(config, path):
    """Refuses a bad config (or Slurm environment) in one line, before
    TensorFlow is imported, and makes the config file's directory
    importable (for a `config.model.name` of one's own, `my_models:MyModel`,
    beside it)."""
    from template_trainer import cluster, config_checks

    try:
        config.keys()  # A config file that failed to load raises here.
    except OSError as e:
        _fail(_one_line(e))
    try:
        config_checks.validate(config)
    except config_checks.ConfigError as e:
        _fail(str(e))
    try:
        # A half-set Slurm environment, before TensorFlow and its cluster.
        cluster.slurm_cluster(config.distribution)
    except cluster.ClusterError as e:
        _fail(str(e))
    if path:
        directory = os.path.dirname(os.path.abspath(path))
        if directory not in sys.path:
            # After the script's own directory: the project's packages win.
            sys.path.insert(1, directory)


def main(argv):
    if len(argv) > 1:
        _fail(f"unexpected arguments {argv[1:]}; use --config.FIELD=VALUE.")
    # TensorFlow's INFO lines (saver, export) would drown the progress bars.
    logging.set_verbosity(logging.WARNING)
    # tf.data says this whenever a distributed dataset is iterated inside a
    # tf.function (each evaluation): nothing a user can act on.
    warnings.filterwarnings(
        "ignore",
        message="To make it possible to preserve tf.data options",
        category=UserWarning,
    )
    config = FLAGS.config
    _check_config(config, FLAGS["config"].config_filename)
    try:
        _train(config)
    except KeyboardInterrupt:
        # Ctrl-C outside the training loop (start-up, export); inside it,
        # the trainer saves and stops by itself.
        print(flush=True)
        print(
            "interrupted by Ctrl-C outside the training loop; no checkpoint "
            "was changed. Rerun the same command to resume.",
            file=sys.stderr,
        )
        sys.exit(128 + 2)


def _train(config):
    # Imported here, after flag parsing, so `--help` and flag errors return
    # without the ~5 s TensorFlow import.
    from template_trainer import startup

    startup.import_tensorflow()
    import template_trainer
    import template_trainer.progress

    try:
        metrics = template_trainer.train_and_evaluate(
            config, FLAGS.workdir, FLAGS.allow_config_change
        )
    except template_trainer.RunError as e:
        # Every error that ends a run says why in one line, and has its
        # exit code: 2 for input to change, 1 for a failed run, 128 + N for
        # signal N (the shell's convention).
        if template_trainer.progress.interactive():
            print(flush=True)  # End the progress bar's line.
        print(f"{e.label}{e}", file=sys.stderr)
        sys.exit(e.exit_code)
    figures = ", ".join(
        f"{k}={v}" if isinstance(v, int) else f"{k}={v:.4g}"
        for k, v in metrics.items()
    )
    model = os.path.join(FLAGS.workdir, "model.keras")
    saved = f"; model: {model}" if os.path.exists(model) else ""
    print(f"Done: {figures}{saved}")


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
