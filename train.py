"""Trains a model from a config file.

  python train.py --config configs/default.py --workdir runs/default

Override config fields with `--config.FIELD=VALUE`. Rerunning the same
command on the same workdir resumes from its newest checkpoint.
"""

import os
import sys
import warnings

# Keras 3 picks its backend at import time; this project is TensorFlow's.
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# Hide TensorFlow's C++ start-up chatter (CPU feature notes, no-GPU notes).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

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
        message = " ".join(str(e).split())
        if "invalid literal for int()" in message:
            message = message.split(": invalid literal", 1)[0] + (
                ": expected an integer."
            )
        _fail(message)
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
        summary = " ".join(str(e).split())
        _fail(
            f"config file {path} could not be loaded ({type(e).__name__}: "
            f"{summary}); expected a Python file whose get_config() returns "
            "an ml_collections.ConfigDict, as configs/default.py does."
        )


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
    try:
        config = FLAGS.config
        config.keys()  # A config file that failed to load raises here.
    except OSError as e:
        _fail(" ".join(str(e).split()))
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
    print(
        "Done: "
        + ", ".join(
            f"{k}={v}" if isinstance(v, int) else f"{k}={v:.4g}"
            for k, v in metrics.items()
        )
    )


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
