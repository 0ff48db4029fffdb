"""The trainer: what `train.py` runs, one role per module.

- `loop`: `train_and_evaluate`, the loop that reads top to bottom.
- `setup`: everything a run needs before its first step, from the config.
- `checkpoints`: what is saved, where, when; restore, fallback, the best.
- `data`: the datasets, split into train, validation and test.
- `distribution`: `tf.distribute` strategies, workers, stop signals.
- `workdir`: one trainer per workdir, one config per run.
- `config_checks`: every config value checked before work starts.
- `summaries`: TensorBoard scalars, `metrics.jsonl`, the curves.
- `progress`: the progress bar, or plain lines in a log.
- `exports`: the final and best models as `.keras` and SavedModel.
- `optimizers`: Keras optimizers and schedules from config values.
- `errors`: `RunError`, the base of every error that ends a run.
"""

from template_trainer.errors import RunError, WriteError

# The loop imports TensorFlow (~5 s): loaded on first use, so that
# `template_trainer.config_checks` checks a config without it.
_FROM_LOOP = ("Preempted", "TrainingDivergedError", "train_and_evaluate")


def __getattr__(name):
    if name in _FROM_LOOP:
        from template_trainer import loop

        return getattr(loop, name)
    raise AttributeError(f"module 'template_trainer' has no attribute {name!r}")


__all__ = [
    "Preempted",
    "RunError",
    "TrainingDivergedError",
    "WriteError",
    "train_and_evaluate",
]
