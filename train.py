"""Trains a model from a config file.

  python train.py --config configs/default.py --workdir runs/default

Override config fields with `--config.FIELD=VALUE`. Rerunning the same
command on the same workdir resumes from its newest checkpoint. The
machinery is `template_trainer`: `train_and_evaluate` (loop.py) trains,
`command_line` turns bad input into one-line errors.
"""

from template_trainer import command_line

# Before anything imports TensorFlow: Keras's backend, quiet C++ notes,
# oneDNN's kernels (each unless the user set it).
command_line.set_process_defaults()

from absl import app, flags  # noqa: E402
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


def main(argv):
    if len(argv) > 1:
        command_line.fail(
            f"unexpected arguments {argv[1:]}; use --config.FIELD=VALUE."
        )
    # Checked before the ~5 s TensorFlow import, which comes only now.
    config = command_line.checked_config(FLAGS)
    metrics = command_line.run(lambda: _train(config))
    print(command_line.done_line(metrics, FLAGS.workdir))


def _train(config):
    command_line.import_quiet_tensorflow()
    import template_trainer

    return template_trainer.train_and_evaluate(
        config, FLAGS.workdir, FLAGS.allow_config_change
    )


if __name__ == "__main__":
    app.run(
        main,
        flags_parser=lambda argv: command_line.parse_config_flags(FLAGS, argv),
    )
