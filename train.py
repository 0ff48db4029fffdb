"""Trains a model from a config file.

  python train.py --config configs/default.py --workdir runs/default

Override config fields with `--config.FIELD=VALUE`. Rerunning the same
command on the same workdir resumes from its newest checkpoint.
"""

import os
import sys

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


def _parse_flags(argv):
    """absl's own parser prints two lines and exits 1 (or a traceback, for an
    unknown config field); this prints one line and exits 2."""
    try:
        return FLAGS(argv)
    except flags.Error as e:
        _fail(" ".join(str(e).split()))
    except (AttributeError, KeyError) as e:
        overrides = [a for a in argv[1:] if a.startswith("--config.")]
        _fail(
            f"unknown config field '{str(e).strip(chr(34) + chr(39))}' (in "
            f"{' '.join(overrides)}); the "
            "fields are those of the config file's get_config()."
        )


def main(argv):
    if len(argv) > 1:
        _fail(f"unexpected arguments {argv[1:]}; use --config.FIELD=VALUE.")
    # TensorFlow's INFO lines (saver, export) would drown the progress bars.
    logging.set_verbosity(logging.WARNING)
    try:
        config = FLAGS.config
        config.keys()  # A config file that failed to load raises here.
    except OSError as e:
        _fail(" ".join(str(e).split()))
    # Imported here, after flag parsing, so `--help` and flag errors return
    # without the ~5 s TensorFlow import.
    import checkpointing
    import config_validation
    import distribution
    import input_pipeline
    import trainer
    import workdir

    try:
        metrics = trainer.train_and_evaluate(
            config, FLAGS.workdir, FLAGS.allow_config_change
        )
    except trainer.Preempted as e:
        print(flush=True)  # End the progress bar's line.
        print(str(e), file=sys.stderr)
        sys.exit(128 + e.signum)  # The shell's convention for a signal.
    except trainer.TrainingDivergedError as e:
        print(flush=True)  # End the progress bar's line.
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except (
        checkpointing.NoUsableCheckpointError,
        config_validation.ConfigError,
        distribution.DistributionError,
        distribution.WorkerLostError,
        input_pipeline.DatasetUnavailableError,
        workdir.ConfigMismatchError,
        workdir.WorkdirInUseError,
    ) as e:
        _fail(str(e))
    print("Done: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
