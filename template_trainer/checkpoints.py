"""Checkpoints: what a run saves, where, when, and how it comes back.

Built on `tf.train.CheckpointManager`, which writes a checkpoint's files first
and only then records it in the `checkpoint` index file, so an interrupted
save never becomes the newest checkpoint. A newest checkpoint that is damaged
anyway (a truncated file) is skipped with a warning in favour of the previous
one. The best model (by a validation metric) is kept apart, in
`best_checkpoint/`.
"""

import math
import os
import shutil
import tempfile
import time

import tensorflow as tf
from absl import logging

from template_trainer import distribution, errors, upstream

CHECKPOINTS = "checkpoints"
BEST = "best_checkpoint"


class NoUsableCheckpointError(errors.RunError):
    """Every checkpoint in the workdir failed to restore."""


class CheckpointMismatchError(errors.RunError):
    """The checkpoint is readable but holds a model of other shapes."""


# A damaged file surfaces as any of these, depending on where the damage
# is; a later successful restore overwrites every object.
_RESTORE_FAILURES = (tf.errors.OpError, ValueError, AssertionError, IndexError)


def has_checkpoint(workdir):
    """Whether `workdir` holds a checkpoint to resume from."""
    return os.path.exists(os.path.join(workdir, CHECKPOINTS, "checkpoint"))


def _tf_variables(variables):
    # Keras 3 variables wrap a `tf.Variable`; the checkpoint wants that one.
    return [v.value for v in variables]


def _state(model, step, iterator, best, guard, stale=None):
    """The `tf.train.Checkpoint` of everything that decides a run's future.

    The model's weights, the optimizer (slots, iteration count, learning
    rate), the step counter, the data iterator's position, every
    random-number state of the model (dropout's `SeedGenerator`s) and the
    metric accumulators, the best validation result so far and the
    non-finite guard's counters (`guard`, empty when it is off), so a
    resumed run continues exactly; and `stale`, early stopping's count of
    validations without improvement (None: a checkpoint of a trainer from
    before it, which has none).
    """
    weight_ids = {id(w) for w in model.weights}
    rng = [v for v in model.variables if id(v) not in weight_ids]
    metric_vars = [v for m in model.metrics for v in m.variables]
    extra = {} if stale is None else {"stale": stale}
    return tf.train.Checkpoint(
        **extra,
        model=model,
        # A LossScaleOptimizer under mixed_float16, with its scale.
        optimizer=model.optimizer,
        step=step,
        iterator=iterator,
        rng=_tf_variables(rng),
        metrics=_tf_variables(metric_vars),
        best=best,
        guard=list(guard),
    )


class Checkpoints:
    """A run's checkpoints: restore, the save cadence, and the best model.

    Every worker saves (saving runs collectives), but only the chief's
    checkpoint is kept; all workers resume from it, as their iterators are
    in the same state. With `workdir` None (`fast_dev_run`) nothing is read
    or written.

    Args:
        workdir: The run's directory, or None.
        model: The compiled model (its optimizer built).
        step: The `tf.Variable` step counter.
        iterator: The training data iterator.
        guard: The non-finite guard's variables (may be empty).
        strategy: The `tf.distribute` strategy.
        every_steps: Save every this many steps (0: only by time).
        every_secs: Save once this many seconds passed since the last save
            (0: only by steps); single-worker runs only, as workers would
            disagree on elapsed time.
        keep: How many checkpoints to keep.
        best_mode: "max" or "min": which validation value is better.
        clock: Returns seconds, for the time cadence; `time.monotonic` if
            None.
    """

    def __init__(
        self,
        workdir,
        model,
        step,
        iterator,
        guard,
        strategy,
        every_steps,
        every_secs,
        keep,
        best_mode,
        clock=None,
    ):
        num_workers, _, self._is_chief = distribution.worker_info(strategy)
        self._step, self._model = step, model
        self._every = every_steps
        self._secs = every_secs if num_workers == 1 else 0
        self._best_mode = best_mode
        self._clock = clock or time.monotonic
        self._last_save = self._clock()
        # Outside the strategy's scope: plain variables, the same on every
        # worker, that Python can read.
        self.best_value = tf.Variable(
            -math.inf if best_mode == "max" else math.inf,
            dtype=tf.float64,
            trainable=False,
        )
        self.best_step = tf.Variable(0, dtype=tf.int64, trainable=False)
        # Validations since the best one (early stopping's count).
        self.stale = tf.Variable(0, dtype=tf.int64, trainable=False)
        best = {"value": self.best_value, "step": self.best_step}
        self._state = _state(model, step, iterator, best, guard, self.stale)
        self._state_before_stale = _state(model, step, iterator, best, guard)
        self._manager = self._best = self._best_dir = None
        if workdir:
            self._best_dir = os.path.join(workdir, BEST)
            self._manager = tf.train.CheckpointManager(
                self._state, os.path.join(workdir, CHECKPOINTS), keep
            )
            if self._is_chief:
                self._best = tf.train.CheckpointManager(
                    tf.train.Checkpoint(model=model),
                    self._best_dir,
                    max_to_keep=1,
                )
        # The step of the newest checkpoint, kept here rather than read from
        # the manager: a non-chief worker's manager never records its saves,
        # and all workers must agree on whether to save (each save runs
        # collectives).
        self._saved_step = None

    def restore(self):
        """Restores the newest checkpoint that loads; returns its path or
        None (nothing to restore).

        Raises:
            CheckpointMismatchError: the newest checkpoint holds other
                shapes.
            NoUsableCheckpointError: checkpoints exist but none loads.
        """
        if not self._manager:
            return None
        paths = list(reversed(self._manager.checkpoints))
        for path in paths:
            try:
                self._state_of(path).restore(
                    path
                ).assert_existing_objects_matched()
            except _RESTORE_FAILURES as e:
                if upstream.is_shape_mismatch(e):
                    # TensorFlow has no type for it. Not damage: every
                    # checkpoint of the run has these shapes.
                    raise CheckpointMismatchError(
                        f"checkpoint {path} does not fit the model of this "
                        f"config ({' '.join(str(e).split())}): the config, "
                        "or the model's code, changed the model's shapes "
                        "since the run was saved, and a run cannot resume "
                        "with other shapes. Resume with the config and code "
                        "the run was started with, or use a new --workdir."
                    ) from None
                logging.warning(
                    "Checkpoint %s is damaged (%s); trying the previous one.",
                    path,
                    type(e).__name__,
                )
                continue
            self._saved_step = int(self._step)
            return path
        if paths:
            raise NoUsableCheckpointError(
                f"none of the {len(paths)} checkpoints in "
                f"{self._manager.directory} could be restored; move that "
                "directory away to start over."
            )
        return None

    def _state_of(self, path):
        """The state to restore `path` into: without `stale` for a
        checkpoint written before early stopping (its count starts at 0)."""
        names = (name for name, _ in tf.train.list_variables(path))
        if any(name.startswith("stale/") for name in names):
            return self._state
        self.stale.assign(0)
        return self._state_before_stale

    def next_step(self):
        """The next step the step cadence saves at (None: no step cadence)."""
        if not self._every:
            return None
        return (int(self._step) // self._every + 1) * self._every

    def due(self):
        """Whether the step or the time cadence asks for a save now."""
        step = int(self._step)
        by_steps = bool(self._every) and step % self._every == 0
        by_time = bool(self._secs) and (
            self._clock() - self._last_save >= self._secs
        )
        return by_steps or by_time

    def save(self):
        """Saves the current step (once); returns its path, or None.

        Raises:
            errors.WriteError: the checkpoint could not be written; the
                previous one stays the newest.
        """
        if not self._manager:
            return None
        step = int(self._step)
        if self._saved_step != step:
            with errors.writing("checkpoint", self._path(step)):
                self._write(step)
            self._saved_step = step
        self._last_save = self._clock()
        return self._path(step)

    def _write(self, step):
        if self._is_chief:
            self._manager.save(checkpoint_number=step)
            return
        # Every worker must take part in a save, but only the chief's copy
        # is kept: the others write to a private temporary directory.
        directory = tempfile.mkdtemp(prefix="worker-checkpoint-")
        try:
            self._state.write(os.path.join(directory, "ckpt"))
        finally:
            shutil.rmtree(directory, ignore_errors=True)

    def _path(self, step):
        return os.path.join(self._manager.directory, f"ckpt-{step}")

    def last_good(self):
        """`(path, step)` of the newest complete checkpoint, or None."""
        if not (self._manager and self._manager.latest_checkpoint):
            return None
        path = self._manager.latest_checkpoint
        return path, int(path.rsplit("-", 1)[1])

    def offer_best(self, value):
        """Keeps the model as the best if `value` beats the best so far
        (by `best_mode`); returns whether it did. `stale` counts the
        validations since the best one."""
        best = float(self.best_value)
        better = value > best if self._best_mode == "max" else value < best
        self.stale.assign(0 if better else self.stale + 1)
        if better:
            self.best_value.assign(value)
            self.best_step.assign(int(self._step))
            if self._best:
                path = os.path.join(self._best.directory, "ckpt")
                with errors.writing("best checkpoint", path):
                    self._best.save(checkpoint_number=int(self._step))
        return better

    def has_best(self):
        """Whether a best checkpoint was saved (by this run or before)."""
        return bool(self._best_path())

    def _best_path(self):
        return self._best_dir and tf.train.latest_checkpoint(self._best_dir)

    def restore_best(self):
        """Loads the best weights into the model; False if none were saved.

        Every worker loads them (the chief wrote them to the shared
        workdir), so all can evaluate the best model together.
        """
        path = self._best_path()
        if not path:
            return False
        tf.train.Checkpoint(model=self._model).restore(
            path
        ).assert_existing_objects_matched()
        return True
