"""Checkpoints: everything that decides a run's future, saved and restored.

Built on `tf.train.CheckpointManager`, which writes a checkpoint's files first
and only then records it in the `checkpoint` index file, so an interrupted
save never becomes the newest checkpoint. A newest checkpoint that is damaged
anyway (a truncated file) is skipped with a warning in favour of the previous
one.
"""

import os
import shutil
import tempfile

import tensorflow as tf
from absl import logging


class NoUsableCheckpointError(RuntimeError):
    """Every checkpoint in the workdir failed to restore."""


class CheckpointMismatchError(RuntimeError):
    """The checkpoint is readable but holds a model of other shapes."""


def _tf_variables(variables):
    # Keras 3 variables wrap a `tf.Variable`; the checkpoint wants that one.
    return [v.value for v in variables]


def state(model, optimizer, step, iterator, best, guard):
    """Returns the `tf.train.Checkpoint` of a run.

    It holds the model's weights, the optimizer (slots, iteration count,
    learning rate), the step counter, the data iterator's position, every
    random-number state of the model (dropout's `SeedGenerator`s) and the
    metric accumulators, the best evaluation so far and the non-finite
    guard's counters (`guard`, empty when it is off), so a resumed run
    continues exactly.
    """
    weight_ids = {id(w) for w in model.weights}
    rng = [v for v in model.variables if id(v) not in weight_ids]
    metric_vars = [v for m in model.metrics for v in m.variables]
    return tf.train.Checkpoint(
        model=model,
        optimizer=optimizer,
        step=step,
        iterator=iterator,
        rng=_tf_variables(rng),
        metrics=_tf_variables(metric_vars),
        best=best,
        guard=list(guard),
    )


def manager(checkpoint, directory, max_to_keep):
    return tf.train.CheckpointManager(
        checkpoint, directory=directory, max_to_keep=max_to_keep
    )


def save(checkpoint_manager, step, is_chief):
    """Saves a checkpoint at `step`; a non-chief worker's copy is dropped.

    Under `MultiWorkerMirroredStrategy` every worker must take part in a
    save, but only the chief's copy is kept: the others write to a private
    temporary directory, deleted at once.
    """
    if is_chief:
        checkpoint_manager.save(checkpoint_number=step)
        return
    directory = tempfile.mkdtemp(prefix="worker-checkpoint-")
    try:
        checkpoint_manager.checkpoint.write(os.path.join(directory, "ckpt"))
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def restore_latest(checkpoint, checkpoint_manager):
    """Restores the newest checkpoint that loads; returns its path or None.

    Raises:
        CheckpointMismatchError: the newest checkpoint holds other shapes.
        NoUsableCheckpointError: checkpoints exist but none could be read.
    """
    paths = list(reversed(checkpoint_manager.checkpoints))
    for path in paths:
        try:
            checkpoint.restore(path).assert_existing_objects_matched()
        # A damaged file surfaces as any of these, depending on where the
        # damage is; a later successful restore overwrites every object.
        except (tf.errors.OpError, ValueError, AssertionError, IndexError) as e:
            if "incompatible tensor with shape" in str(e):
                # Not damage: every checkpoint of the run has these shapes.
                raise CheckpointMismatchError(
                    f"checkpoint {path} does not fit the model of this "
                    f"config ({' '.join(str(e).split())}): the config, or "
                    "the model's code, changed the model's shapes since the "
                    "run was saved, and a run cannot resume with other "
                    "shapes. Resume with the config and code the run was "
                    "started with, or use a new --workdir."
                ) from None
            logging.warning(
                "Checkpoint %s is damaged (%s); trying the previous one.",
                path,
                type(e).__name__,
            )
            continue
        return path
    if paths:
        raise NoUsableCheckpointError(
            f"none of the {len(paths)} checkpoints in "
            f"{checkpoint_manager.directory} could be restored; move that "
            "directory away to start over."
        )
    return None
