"""The training loop: `train_and_evaluate(config, workdir)`.

It drives `model.train_step` (the same step `model.fit` runs) from its own
loop inside `tf.function`, rather than calling `fit`, because it must
checkpoint the data iterator (for exact resume) and run under
`MultiWorkerMirroredStrategy`, neither of which `fit` supports.
"""

import contextlib
import math
import os
import re
import signal
import sys
import threading
import time
import traceback

import keras
import tensorflow as tf

import checkpointing
import config_validation
import distribution
import input_pipeline
import models
import optimizers
import summaries
import workdir as workdir_guard


class TrainingDivergedError(RuntimeError):
    """Too many consecutive steps had a NaN or Inf loss or gradients."""


class Preempted(Exception):
    """Training stopped on SIGTERM/SIGINT after saving a checkpoint.

    `here` is false on the workers of a multi-worker run that stopped
    because another worker received the signal.
    """

    def __init__(self, signum, step, checkpoint, here=True):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
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


@contextlib.contextmanager
def _catch_preemption():
    """Records SIGTERM/SIGINT instead of dying, so the loop can save first."""
    received = []
    if threading.current_thread() is not threading.main_thread():
        yield received  # Signal handlers can only be set from the main thread.
        return
    previous = {
        s: signal.signal(s, lambda signum, _: received.append(signum))
        for s in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        yield received
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _metric_values(model, prefix=""):
    """Current results of every metric of `model`, as Python floats."""
    values = {}
    for metric in model.metrics:
        result = metric.result()
        if isinstance(result, dict):
            values.update(result)
        else:
            values[metric.name] = result
    return {prefix + name: float(value) for name, value in values.items()}


def _create_model(model_config, info):
    architecture = models.ARCHITECTURES[model_config.name]
    kwargs = {k: v for k, v in model_config.items() if k != "name"}
    try:
        return architecture(
            input_shape=info.input_shape, num_classes=info.num_classes, **kwargs
        )
    except (TypeError, ValueError) as e:
        # Only the model knows what fits the data (e.g. how many pooling
        # blocks an 8x8 image allows); say it as a config error.
        message = " ".join(str(e).split())
        raise config_validation.ConfigError(
            f"config.model is invalid: {message} (building "
            f"{model_config.name!r} for {info.input_shape} inputs"
            f"{_raised_at(e)})."
        ) from None


def _raised_at(error):
    """`; raised at FILE:LINE`, the innermost frame of the project's (or the
    user's) own code in `error`'s traceback, or "" if there is none: when
    the model's own code is wrong, that is where to look."""
    frames = traceback.extract_tb(error.__traceback__)
    for frame in reversed(frames):
        path = os.path.abspath(frame.filename)
        if "site-packages" not in path and not path.startswith(sys.prefix):
            relative = os.path.relpath(path)
            if not relative.startswith(os.pardir):
                path = relative
            return f"; raised at {path}:{frame.lineno}"
    return ""


def _create_optimizer(config, total_steps):
    schedule = optimizers.create_schedule(
        config.schedule,
        config.learning_rate,
        total_steps=total_steps,
        warmup_steps=config.warmup_steps,
        boundaries=config.boundaries,
        decay_factor=config.decay_factor,
    )
    return optimizers.create_optimizer(
        config.optimizer,
        schedule,
        momentum=config.momentum,
        nesterov=config.nesterov,
        weight_decay=config.weight_decay,
    )


def make_train_steps(model, strategy, step, jit_compile):
    """Returns `train_steps(iterator, num_steps)`, a `tf.function`.

    One call runs `num_steps` steps of `model.train_step` (each replica on
    its slice of the global batch), adds them to `step`, and returns the
    last step's logs (first replica's values). Many steps per call, as
    Keras's `steps_per_execution`, save a Python round trip per step.
    `jit_compile` compiles the step (not the loop: the iterator cannot be)
    with XLA.
    """
    step_fn = (
        tf.function(model.train_step, jit_compile=True)
        if jit_compile
        else model.train_step
    )

    def first_replica(logs):
        return tf.nest.map_structure(
            lambda v: strategy.experimental_local_results(v)[0], logs
        )

    def one_step(iterator):
        batch = distribution.split_batch(strategy, next(iterator))
        return strategy.run(step_fn, args=(batch,))

    @tf.function
    def train_steps(iterator, num_steps):
        # The first step outside the loop gives `logs` its structure.
        logs = one_step(iterator)
        for _ in tf.range(num_steps - 1):
            logs = one_step(iterator)
        step.assign_add(num_steps)
        return first_replica(logs)

    return train_steps


def _is_better(value, best, mode):
    return value > best if mode == "max" else value < best


def train_and_evaluate(config, workdir, allow_config_change=False):
    """Trains `config`'s model, resuming from `workdir` if it holds a run.

    Args:
        config: An `ml_collections.ConfigDict` like `configs/default.py`'s.
        workdir: Directory for checkpoints, summaries and exported models.
        allow_config_change: Resume a run even if its saved config differs
            from `config` in more than the run length.

    Returns:
        A dict of the final metrics: `step`, the last training metrics
        (`loss`, `accuracy`, ...) and the evaluation on the test split
        (`eval_loss`, `eval_accuracy`).

    Raises:
        config_validation.ConfigError: a config value is invalid.
        input_pipeline.DatasetUnavailableError: the dataset cannot be had.
        workdir.WorkdirError: `workdir` cannot be created or written.
        workdir.WorkdirInUseError: another trainer is using `workdir`.
        checkpointing.CheckpointMismatchError: the checkpoint holds a model
            of other shapes (a config change `allow_config_change` let in).
        workdir.ConfigMismatchError: `workdir` holds a run of another config.
        Preempted: SIGTERM or SIGINT arrived; a checkpoint was saved.
    """
    config_validation.validate(config)
    # The strategy comes first: multi-worker set-up must precede other ops.
    distribution.split_cpu(config.cpu_devices)
    strategy = distribution.create_strategy(
        config.distribution, config.collective_timeout_s
    )
    if config.fast_dev_run:
        # A smoke run writes nothing: no lock, config, checkpoint or export.
        return _train(config, os.path.abspath(workdir), strategy, writes=False)
    _, worker_index, is_chief = distribution.worker_info(strategy)
    workdir = workdir_guard.prepare(workdir)
    # Each worker of a multi-worker run holds its own lock in the workdir.
    lock_name = "lock" if is_chief else f"lock.worker-{worker_index}"
    with workdir_guard.lock(workdir, lock_name):
        workdir_guard.check_config(
            workdir,
            config.to_json(),
            allow_config_change,
            has_checkpoint=os.path.exists(
                os.path.join(workdir, "checkpoints", "checkpoint")
            ),
        )
        return _train(config, workdir, strategy, writes=True)


def _train(config, workdir, strategy, writes):
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(config.seed)

    _, worker_index, is_chief = distribution.worker_info(strategy)
    if config.batch_size % strategy.num_replicas_in_sync:
        raise config_validation.ConfigError(
            f"config.batch_size={config.batch_size} is invalid: expected a "
            f"multiple of the {strategy.num_replicas_in_sync} replicas."
        )
    train_data, eval_data, info = input_pipeline.create_datasets(
        dataset=config.dataset,
        data_dir=config.data_dir,
        download=config.download,
        batch_size=config.batch_size,
        eval_batch_size=config.eval_batch_size,
        shuffle_buffer=config.shuffle_buffer,
        seed=config.seed,
        max_shift=config.max_shift,
        overfit_batches=config.overfit_batches,
    )
    height, width = info.input_shape[:2]
    most = (min(height, width) - 1) // 2
    if config.max_shift > most:
        raise config_validation.ConfigError(
            f"config.max_shift={config.max_shift} is invalid: expected at "
            f"most {most} for {height}x{width} images (a larger shift moves "
            "most of the image out of view)."
        )
    if config.fast_dev_run:
        steps_per_epoch = total_steps = config.fast_dev_run
        eval_data = eval_data.take(config.fast_dev_run)
    else:
        steps_per_epoch = math.ceil(info.num_train / config.batch_size)
        total_steps = config.num_epochs * steps_per_epoch
    num_epochs = total_steps // steps_per_epoch

    model = _compiled_model(config, info, strategy, total_steps)
    optimizer = model.optimizer  # LossScaleOptimizer under mixed_float16
    # Outside the strategy's scope: plain variables, the same on every
    # worker, that Python can read.
    step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    initial_best = -math.inf if config.best_mode == "max" else math.inf
    best = tf.Variable(initial_best, dtype=tf.float64, trainable=False)
    # A plain iterator, not a distributed one: only plain ones checkpoint.
    iterator = iter(train_data)
    eval_data = strategy.experimental_distribute_dataset(eval_data)

    guard = [
        v
        for name, v in model.step_state.items()
        if name in ("non_finite_steps", "consecutive_non_finite")
    ]
    state = checkpointing.state(model, optimizer, step, iterator, best, guard)
    checkpoints = _Checkpoints(
        config, workdir, state, step, strategy, total_steps, writes
    )
    checkpoints.restore()
    if int(step) >= total_steps:
        print(
            f"The run is already at step {int(step)}, at or past this "
            f"config's {total_steps} steps: nothing to train. Raise "
            "--config.num_epochs to train longer."
        )
    if writes and is_chief:
        # Only now: a config that cannot restore the run never replaces the
        # one that can.
        workdir_guard.save_config(workdir, config.to_json())

    train_steps = make_train_steps(model, strategy, step, config.jit_compile)

    @tf.function
    def evaluate_all(dataset):
        for batch in dataset:
            strategy.run(model.test_step, args=(batch,))

    def evaluate():
        for metric in model.metrics:
            metric.reset_state()
        evaluate_all(eval_data)
        return _metric_values(model, prefix="eval_")

    stop_signal = distribution.agreed_signal(strategy)
    writer = (
        summaries.Writer(workdir, int(step)) if writes and is_chief else None
    )
    loop_start = time.perf_counter()
    train_logs, eval_logs = {}, {}
    with distribution.peers_watched(strategy), _catch_preemption() as signals:
        while int(step) < total_steps:
            epoch, done_in_epoch = divmod(int(step), steps_per_epoch)
            if done_in_epoch == 0:
                for metric in model.metrics:
                    metric.reset_state()
            print(f"Epoch {epoch + 1}/{num_epochs}")
            progress = keras.utils.Progbar(
                steps_per_epoch, stateful_metrics=["steps/s"]
            )
            progress.update(done_in_epoch)
            epoch_end = (epoch + 1) * steps_per_epoch
            while int(step) < epoch_end:
                current = int(step)
                num_steps = min(
                    config.steps_per_loop,
                    epoch_end - current,
                    checkpoints.next_step() - current,
                )
                start = time.perf_counter()
                logs = _run_steps(train_steps, iterator, num_steps, model)
                seconds = time.perf_counter() - start
                train_logs = {k: float(v) for k, v in logs.items()}
                train_logs.update(_metric_values(model))
                train_logs["steps/s"] = num_steps / seconds
                progress.update(
                    int(step) - epoch * steps_per_epoch,
                    list(train_logs.items()),
                )
                scalars = dict(train_logs)
                scalars.update(
                    (name, float(v.read_value()))
                    for name, v in model.step_state.items()
                )
                scalars["learning_rate"] = float(optimizer.learning_rate)
                # Seconds of this process's loop, evaluation and saving
                # included; a resumed run starts again from 0.
                scalars["elapsed_s"] = time.perf_counter() - loop_start
                at_epoch_end = int(step) == epoch_end
                if at_epoch_end and (
                    (epoch + 1) % config.eval_every_epochs == 0
                    or int(step) == total_steps
                ):
                    eval_logs = evaluate()
                    scalars.update(eval_logs)
                    print(
                        " - ".join(
                            f"{k}: {v:.4f}" for k, v in eval_logs.items()
                        )
                    )
                    value = eval_logs[config.best_metric]
                    if _is_better(value, float(best), config.best_mode):
                        best.assign(value)
                        checkpoints.save_best()
                if writer:
                    writer.write(int(step), scalars)
                if checkpoints.due():
                    checkpoints.save()
                signum = stop_signal(signals)
                if signum:
                    raise Preempted(
                        signum, int(step), checkpoints.save(), bool(signals)
                    )
        if not eval_logs or int(step) % steps_per_epoch:
            eval_logs = evaluate()
        checkpoints.save()
    if writes and not is_chief:
        # Each worker's final weights, to check that all workers agree.
        worker_dir = os.path.join(workdir, f"worker-{worker_index}")
        os.makedirs(worker_dir, exist_ok=True)
        model.save(os.path.join(worker_dir, "model.keras"))
    if writer:
        writer.close()
        _export(model, workdir, "")
        summaries.plot_curves(workdir)
        if checkpoints.restore_best():
            _export(model, workdir, "best_")
    return {"step": int(step), **train_logs, **eval_logs}


def _compiled_model(config, info, strategy, total_steps):
    """The config's model, compiled with its optimizer and step options."""
    # Global Keras state: set every run, so one run's policy never leaks
    # into the next run in the same process.
    keras.mixed_precision.set_global_policy(config.mixed_precision)
    with strategy.scope():
        model = _create_model(config.model, info)
        # With accumulation the optimizer updates once per k steps.
        updates = total_steps // config.gradient_accumulation_steps
        model.compile(
            optimizer=_create_optimizer(config, updates),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
            global_clipnorm=config.global_clipnorm or None,
            gradient_accumulation_steps=(
                config.gradient_accumulation_steps
                if config.gradient_accumulation_steps > 1
                else None
            ),
            max_consecutive_non_finite=config.max_consecutive_non_finite
            or None,
            log_grad_norm=config.log_grad_norm,
            layer_grad_norms=config.layer_grad_norms,
            missing_gradients=config.missing_gradients,
        )
        # Slots must exist before a restore, or they are not restored.
        model.optimizer.build(model.trainable_variables)
    return model


def _run_steps(train_steps, iterator, num_steps, model):
    """`train_steps` for `num_steps` steps; their last logs.

    Raises:
        TrainingDivergedError: the non-finite guard's limit was reached.
    """
    try:
        logs = train_steps(iterator, tf.constant(num_steps, tf.int64))
        model.check_non_finite()  # The step's own check skips XLA.
    except (tf.errors.InvalidArgumentError, FloatingPointError) as e:
        if "consecutive training steps" not in str(e):
            raise
        # The assert's message, without TensorFlow's wrapping.
        found = re.search(r"\d+ consecutive training steps[^]]*", str(e))
        raise TrainingDivergedError(found.group(0)) from None
    return logs


class _Checkpoints:
    """The run's checkpoints: restore, the save cadence, and the best model.

    Every worker saves (saving runs collectives), but only the chief's
    checkpoint is kept; all workers resume from it, as their iterators are
    in the same state. With `writes` false (`fast_dev_run`) nothing is read
    or written.
    """

    def __init__(self, config, workdir, state, step, strategy, total, writes):
        num_workers, _, self._is_chief = distribution.worker_info(strategy)
        self._step, self._writes = step, writes
        # 0 turns the step cadence off.
        self._every = config.checkpoint_every_steps or total
        # Workers would disagree on elapsed time, and every worker must take
        # part in each save: multi-worker runs keep to the step cadence.
        self._secs = config.checkpoint_every_secs if num_workers == 1 else 0
        self._last_save = time.perf_counter()
        self._manager = self._best = None
        if writes:
            self._manager = checkpointing.manager(
                state,
                os.path.join(workdir, "checkpoints"),
                config.max_checkpoints_to_keep,
            )
            if self._is_chief:
                self._best = checkpointing.manager(
                    tf.train.Checkpoint(model=state.model),
                    os.path.join(workdir, "best_checkpoint"),
                    max_to_keep=1,
                )
        self._state = state
        # The step of the newest checkpoint, kept here rather than read from
        # the manager: a non-chief worker's manager never records its saves,
        # and all workers must agree on whether to save (each save runs
        # collectives).
        self._saved_step = None

    def restore(self):
        """Restores the newest readable checkpoint, if there is one."""
        if not self._writes:
            return
        start = time.perf_counter()
        restored = checkpointing.restore_latest(self._state, self._manager)
        if restored:
            self._saved_step = int(self._step)
            print(
                f"Resuming from {restored} at step {int(self._step)}. "
                f"(restored in {time.perf_counter() - start:.2f} s)"
            )

    def next_step(self):
        """The next step the step cadence saves at."""
        return (int(self._step) // self._every + 1) * self._every

    def due(self):
        """Whether the step or the time cadence asks for a save now."""
        return int(self._step) % self._every == 0 or bool(
            self._secs and time.perf_counter() - self._last_save >= self._secs
        )

    def save(self):
        """Saves the current step (once); returns its path, or None."""
        if not self._writes:
            return None
        step = int(self._step)
        if self._saved_step != step:
            checkpointing.save(self._manager, step, self._is_chief)
            self._saved_step = step
        self._last_save = time.perf_counter()
        return _path(self._manager, step)

    def save_best(self):
        """Saves the model's weights as the best so far (the chief only)."""
        if self._best:
            self._best.save(checkpoint_number=int(self._step))

    def restore_best(self):
        """Loads the best weights into the model; False if none were saved."""
        if not (self._best and self._best.latest_checkpoint):
            return False
        tf.train.Checkpoint(model=self._state.model).restore(
            self._best.latest_checkpoint
        ).assert_existing_objects_matched()
        return True


def _path(manager, number):
    return os.path.join(manager.directory, f"ckpt-{number}")


def _export(model, workdir, prefix):
    """Writes `{prefix}model.keras` and the `{prefix}saved_model/` export."""
    model.save(os.path.join(workdir, f"{prefix}model.keras"))
    model.export(os.path.join(workdir, f"{prefix}saved_model"), verbose=False)
