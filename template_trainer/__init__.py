"""The trainer: what `train.py` runs, one role per module.

- `loop`: `train_and_evaluate`, the loop that reads top to bottom.
- `setup`: everything a run needs before its first step, from the config.
- `checkpoints`: what is saved, where, when; restore, fallback, the best.
- `input_pipeline`: TFDS datasets, split into train, validation and test.
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
from template_trainer.loop import (
    Preempted,
    TrainingDivergedError,
    train_and_evaluate,
)

__all__ = [
    "Preempted",
    "RunError",
    "TrainingDivergedError",
    "WriteError",
    "train_and_evaluate",
]
