"""The training loop: `train_and_evaluate(config, workdir)`.

It drives `model.train_step` (the same step `model.fit` runs) from its own
loop inside `tf.function`, rather than calling `fit`, because it must
checkpoint the data iterator (for exact resume) and run under
`MultiWorkerMirroredStrategy`, neither of which `fit` supports.
"""

import contextlib
import json
import os
import shutil
import signal
import sys
import threading
import time

from template_trainer import (
    cluster,
    config_checks,
    distribution,
    errors,
    exports,
    setup,
    summaries,
)
from template_trainer import workdir as workdir_guard
from template_trainer.checkpoints import has_checkpoint
from template_trainer.progress import Progress


class TrainingDivergedError(errors.RunError):
    """Too many consecutive steps had a NaN or Inf loss or gradients."""

    exit_code = 1


class Preempted(errors.RunError):
    """Training stopped on a signal of `distribution.STOP_SIGNALS` (SIGTERM,
    SIGINT, Slurm's SIGUSR1) after saving a checkpoint.

    `here` is false on the workers of a multi-worker run that stopped
    because another worker received the signal. The exit code is the
    shell's for the signal, 128 + its number.
    """

    label = ""  # Not an error: the run stopped as asked.

    def __init__(self, signum, step, checkpoint, here=True):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        self.exit_code = 128 + signum
        where = "" if here else " on another worker"
        saved = (
            f"checkpoint saved to {checkpoint}"
            if checkpoint
            else "nothing saved (fast_dev_run)"
        )
        super().__init__(
            f"stopped by {signal.Signals(signum).name}{where} at step "
            f"{step}; {saved}. Rerun the same command to resume."
        )


def train_and_evaluate(config, workdir, allow_config_change=False):
    """Trains `config`'s model, resuming from `workdir` if it holds a run.

    Evaluates on the validation split during training, keeps the best
    model by `config.best_metric` on it, and evaluates the final and the
    best model on the test split once, at the end.

    Args:
        config: An `ml_collections.ConfigDict` like `configs/default.py`'s.
        workdir: Directory for checkpoints, summaries and exported models.
        allow_config_change: Resume a run even if its saved config differs
            from `config` in fields that change the computation.

    Returns:
        A dict of the final metrics: `step`; the last training metrics
        (`loss`, `accuracy`, ...); `val_loss`, `val_accuracy` of the final
        model; `best_step` and its `best_val_*`; `test_loss`,
        `test_accuracy` of the final model and `best_test_loss`,
        `best_test_accuracy` of the best one.

    Raises:
        errors.RunError: the run cannot start or go on; its subclasses say
            why (`config_checks.ConfigError`, `workdir.WorkdirInUseError`,
            `errors.WriteError`, `Preempted`, ...), each in one line.
    """
    config_checks.validate(config)
    strategy = setup.create_strategy(config)
    with _claimed(workdir, config, strategy, allow_config_change) as workdir:
        run = setup.create_run(config, workdir, strategy)
        # Before the first step, not after hours: the exports must load.
        setup.check_saves(run.model)
        with (
            _last_good_checkpoint_named(run),
            distribution.peers_watched(strategy),
        ):
            _resume(run, config)
            logs = _train(run, config.early_stopping_patience)
            return _finish(run, logs)


@contextlib.contextmanager
def _claimed(workdir, config, strategy, allow_config_change):
    """Yields the absolute workdir, locked and checked against its saved
    config; None for `fast_dev_run`, which writes nothing."""
    if config.fast_dev_run:
        yield None
        return
    _, worker_index, is_chief = distribution.worker_info(strategy)
    created = workdir_guard.first_missing(workdir)
    workdir = workdir_guard.prepare(workdir)
    # Each worker of a multi-worker run holds its own lock in the workdir.
    lock_name = "lock" if is_chief else f"lock.worker-{worker_index}"
    try:
        with workdir_guard.locked(workdir, lock_name):
            workdir_guard.check_config(
                workdir,
                config.to_json(),
                allow_config_change,
                has_checkpoint=has_checkpoint(workdir),
            )
            yield workdir
    except BaseException:
        # A run refused before it recorded anything (a config that does
        # not fit the data, a model that does not save) leaves no workdir.
        started = os.path.join(workdir, "config.json")
        if created and is_chief and not os.path.exists(started):
            shutil.rmtree(created, ignore_errors=True)
        raise


@contextlib.contextmanager
def _last_good_checkpoint_named(run):
    """Adds the newest complete checkpoint to a `WriteError`'s message."""
    try:
        yield
    except errors.WriteError as e:
        e.last_checkpoint = run.checkpoints.last_good()
        raise


def _resume(run, config):
    """Restores the newest checkpoint, then records the config and opens
    the logs at the restored step."""
    _describe(run)
    start = time.perf_counter()
    restored = run.checkpoints.restore()
    if restored:
        print(
            f"Resuming from {restored} at step {int(run.step)}. "
            f"(restored in {time.perf_counter() - start:.2f} s)"
        )
    finished = int(run.step) >= run.total_steps
    if finished:
        print(
            f"The run is already at step {int(run.step)}, at or past this "
            f"config's {run.total_steps} steps: nothing to train. Raise "
            "--config.num_epochs to train longer."
        )
    if run.workdir and run.is_chief:
        # Only now: a config that cannot restore the run never replaces the
        # one that can; and one that trains nothing never replaces the one
        # the weights were trained with.
        if not finished:
            workdir_guard.save_config(run.workdir, config.to_json())
        run.writer = summaries.Writer(
            run.workdir, int(run.step), hparams=json.loads(config.to_json())
        )


def _describe(run):
    """Prints what is about to train: the model's size and the data's."""
    info = run.info
    unit = " windows" if info.kind == "text" else ""
    print(
        f"Model: {run.model.name}, {run.model.count_params():,} parameters. "
        f"Data: {info.num_train:,} train, {info.num_val:,} validation, "
        f"{info.num_test:,} test{unit}."
    )


def _train(run, patience=0):
    """Trains to the last step, or until `patience` validations in a row
    (0: no limit) did not improve on the best: validates, logs and saves
    on the way.

    Returns the last logs (training metrics, and validation ones if the
    last loop validated).
    """
    logs, start = {}, time.perf_counter()
    agree = distribution.agreed_signal(run.strategy)
    with _catch_preemption() as signals:
        while int(run.step) < run.total_steps:
            if _stopped_early(run, patience):
                break
            epoch, done = divmod(int(run.step), run.steps_per_epoch)
            progress = Progress(
                epoch, run.num_epochs, run.steps_per_epoch, done
            )
            epoch_end = (epoch + 1) * run.steps_per_epoch
            while int(run.step) < epoch_end:
                logs = _train_steps(run, epoch_end)
                progress.update(
                    int(run.step) - epoch * run.steps_per_epoch, logs
                )
                if int(run.step) == epoch_end and _validation_due(run, epoch):
                    logs.update(_validate(run))
                _log(run, logs, elapsed=time.perf_counter() - start)
                if run.checkpoints.due():
                    run.checkpoints.save()
                signum = agree(signals)
                if signum:
                    checkpoint = run.checkpoints.save()
                    if signum == signal.SIGUSR1 and checkpoint:
                        _requeue(run)
                    raise Preempted(
                        signum, int(run.step), checkpoint, here=bool(signals)
                    )
    return logs


def _stopped_early(run, patience):
    """Whether early stopping ends the run now; if so, says why. The count
    is in the checkpoint, so a resumed run goes on counting."""
    stale = int(run.checkpoints.stale)
    if not patience or stale < patience:
        return False
    print(
        f"Early stopping at step {int(run.step)}: {run.best_metric} has "
        f"not improved on {float(run.checkpoints.best_value):.4f} (step "
        f"{int(run.checkpoints.best_step)}) in {stale} validations "
        f"(early_stopping_patience={patience})."
    )
    return True


def _train_steps(run, epoch_end):
    """Runs one loop call's steps; returns the logs shown and logged: the
    metrics' means over these steps alone (each call starts them afresh),
    and the last step's other values (`grad_norm`, ...).

    Raises:
        TrainingDivergedError: the non-finite guard's limit was reached.
    """
    current = int(run.step)
    num_steps = min(run.steps_per_loop, epoch_end - current)
    next_save = run.checkpoints.next_step()
    if next_save is not None:
        num_steps = min(num_steps, next_save - current)
    start = time.perf_counter()
    run.model.reset_metrics()
    logs = run.train_steps(run.iterator, num_steps)
    try:
        run.model.check_non_finite()
    except FloatingPointError as e:
        raise TrainingDivergedError(str(e)) from None
    logs = {k: float(v) for k, v in logs.items()}
    logs.update(_metric_results(run.model))
    logs["steps/s"] = num_steps / (time.perf_counter() - start)
    return logs


def _validation_due(run, epoch):
    last = int(run.step) == run.total_steps
    return last or (epoch + 1) % run.val_every_epochs == 0


def _validate(run):
    """Evaluates on the validation split, prints it, and keeps the model as
    the best if it is."""
    logs = _evaluate(run, run.evaluate_val, "val_")
    print(" - ".join(f"{k}: {v:.4f}" for k, v in logs.items()))
    run.checkpoints.offer_best(logs[run.best_metric])
    return logs


def _evaluate(run, evaluate, prefix):
    """The model's metrics from `evaluate()` (one pass over a split), named
    `prefix*`."""
    run.model.reset_metrics()
    evaluate()
    results = _metric_results(run.model)
    return {prefix + name: value for name, value in results.items()}


def _metric_results(model):
    return {k: float(v) for k, v in model.get_metrics_result().items()}


def _log(run, logs, elapsed):
    """Writes the scalars of this loop call to TensorBoard and
    `metrics.jsonl`."""
    if not run.writer:
        return
    scalars = dict(logs)
    scalars.update(
        (name, float(v.read_value()))
        for name, v in run.model.step_state.items()
    )
    scalars["learning_rate"] = float(run.model.optimizer.learning_rate)
    # Seconds of this process's loop, validation and saving included; a
    # resumed run starts again from 0.
    scalars["elapsed_s"] = elapsed
    run.writer.write(int(run.step), scalars)


def _finish(run, logs):
    """Validates and saves the last step, tests the final and the best
    model once, and exports both (the best one as a copy of the final one
    when they are the same); returns the run's final metrics."""
    if "val_loss" not in logs:  # Nothing trained, or validated, this time.
        logs.update(_validate(run))
    run.checkpoints.save()
    results = {"step": int(run.step), **logs}
    results.update(_evaluate(run, run.evaluate_test, "test_"))
    if run.workdir and not run.is_chief:
        # Each worker's final weights, to check that all workers agree.
        worker_dir = os.path.join(run.workdir, f"worker-{run.worker_index}")
        os.makedirs(worker_dir, exist_ok=True)
        run.model.save(os.path.join(worker_dir, "model.keras"))
    if run.writer:
        exports.export(run.model, run.workdir)
    results.update(_test_best(run, results))
    if run.writer:
        tested = {k: v for k, v in results.items() if "test_" in k}
        run.writer.add_to_last(int(run.step), tested)
        run.writer.close()
        summaries.plot_curves(run.workdir)
    return results


def _test_best(run, results):
    """The best model's step, value, test figures and exports (none if no
    best was saved). When the final model is the best, they are its own:
    the same weights, so no second test pass and no second export."""
    best_step = int(run.checkpoints.best_step)
    if best_step == results["step"]:
        if not run.checkpoints.has_best():
            return {}
        figures = {
            f"best_{k}": v for k, v in results.items() if k.startswith("test_")
        }
        if run.writer:
            exports.copy(run.workdir, "best_")
    else:
        if not run.checkpoints.restore_best():
            return {}
        figures = _evaluate(run, run.evaluate_test, "best_test_")
        if run.writer:
            exports.export(run.model, run.workdir, "best_")
    return {
        "best_step": best_step,
        f"best_{run.best_metric}": float(run.checkpoints.best_value),
        **figures,
    }


def _requeue(run):
    """Slurm's SIGUSR1 warns of the time limit: once saved, the chief
    requeues the job (outside Slurm, nothing to do) and says so at once.
    Called while `_catch_preemption` still holds: the SIGTERM that Slurm
    sends the requeued job's tasks is caught, and the line is out before
    the process ends."""
    if run.is_chief:
        said = cluster.requeue_slurm_job(int(run.step))
        if said:
            print(said, file=sys.stderr, flush=True)


@contextlib.contextmanager
def _catch_preemption():
    """Records the stop signals (`distribution.STOP_SIGNALS`) instead of
    dying, so the loop can save first."""
    received = []
    if threading.current_thread() is not threading.main_thread():
        yield received  # Signal handlers can only be set from the main thread.
        return
    previous = {
        s: signal.signal(s, lambda signum, _: received.append(signum))
        for s in distribution.STOP_SIGNALS
    }
    try:
        yield received
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
