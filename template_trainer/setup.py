"""Everything a run needs before its first step, built from the config.

This is where the config stops: `create_run` unpacks it into plain values
and objects (datasets, the compiled model, the step function, checkpoints,
summaries), so nothing past it reads a ConfigDict.
"""

import dataclasses
import math
import os
import sys
import traceback

import keras
import tensorflow as tf

import models
from template_trainer import (
    checkpoints,
    config_checks,
    distribution,
    input_pipeline,
    optimizers,
    summaries,
)


@dataclasses.dataclass
class Run:
    """A run, ready to train: what the loop and its helpers work on."""

    model: keras.Model
    strategy: tf.distribute.Strategy
    step: tf.Variable
    iterator: tf.data.Iterator  # plain, not distributed: it checkpoints
    train_steps: object  # see `make_train_steps`
    # `make_evaluate`'s, one pass over each split
    evaluate_val: object
    evaluate_test: object
    checkpoints: checkpoints.Checkpoints
    writer: summaries.Writer | None  # None: this process writes no logs
    workdir: str | None  # None: fast_dev_run, nothing is written
    is_chief: bool
    worker_index: int
    total_steps: int
    steps_per_epoch: int
    steps_per_loop: int
    val_every_epochs: int
    best_metric: str

    @property
    def num_epochs(self):
        return self.total_steps // self.steps_per_epoch


def create_strategy(config):
    """The config's `tf.distribute` strategy; first, as multi-worker set-up
    must precede any other TensorFlow op."""
    distribution.split_cpu(config.cpu_devices)
    return distribution.create_strategy(
        config.distribution, config.collective_timeout_s
    )


def create_run(config, workdir, strategy):
    """Builds the `Run` of `config`; `workdir` None writes nothing."""
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(config.seed)
    _, worker_index, is_chief = distribution.worker_info(strategy)
    data = input_pipeline.create_datasets(
        dataset=config.dataset,
        data_dir=config.data_dir,
        download=config.download,
        val_fraction=config.val_fraction,
        batch_size=config.batch_size,
        eval_batch_size=config.eval_batch_size,
        shuffle_buffer=config.shuffle_buffer,
        seed=config.seed,
        max_shift=config.max_shift,
        overfit_batches=config.overfit_batches,
        context_length=config.context_length,
    )
    config_checks.check_fits(
        config.batch_size,
        config.max_shift,
        data.info,
        strategy.num_replicas_in_sync,
        config.best_metric,
    )
    val_data, test_data = data.val, data.test
    if config.fast_dev_run:
        steps_per_epoch = total_steps = config.fast_dev_run
        val_data = val_data.take(config.fast_dev_run)
        test_data = test_data.take(config.fast_dev_run)
    else:
        steps_per_epoch = math.ceil(data.info.num_train / config.batch_size)
        total_steps = config.num_epochs * steps_per_epoch

    model = compiled_model(config, data.info, strategy, total_steps)
    step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    iterator = iter(data.train)
    return Run(
        model=model,
        strategy=strategy,
        step=step,
        iterator=iterator,
        train_steps=make_train_steps(model, strategy, step, config.jit_compile),
        evaluate_val=make_evaluate(model, strategy, val_data),
        evaluate_test=make_evaluate(model, strategy, test_data),
        checkpoints=checkpoints.Checkpoints(
            workdir,
            model,
            step,
            iterator,
            guard=model.non_finite_counters,
            strategy=strategy,
            every_steps=config.checkpoint_every_steps,
            every_secs=config.checkpoint_every_secs,
            keep=config.max_checkpoints_to_keep,
            best_mode=best_mode(config.best_metric, config.best_mode),
        ),
        # Created once the checkpoint is restored (`Writer` drops the
        # records of steps that are about to be trained again).
        writer=None,
        workdir=workdir,
        is_chief=is_chief,
        worker_index=worker_index,
        total_steps=total_steps,
        steps_per_epoch=steps_per_epoch,
        steps_per_loop=config.steps_per_loop,
        val_every_epochs=config.val_every_epochs,
        best_metric=config.best_metric,
    )


def best_mode(metric, mode):
    """`mode`, or for "auto" the one that suits `metric`: lower is better
    for a loss (and bits per character), higher for anything else
    (accuracy)."""
    if mode != "auto":
        return mode
    return "min" if metric.endswith(("_loss", "_bpc")) else "max"


def compiled_model(config, info, strategy, total_steps):
    """The config's model, compiled with its optimizer and step options."""
    # Global Keras state: set every run, so one run's policy never leaks
    # into the next run in the same process.
    keras.mixed_precision.set_global_policy(config.mixed_precision)
    with strategy.scope():
        model = _create_model(config.model, info)
        # With accumulation the optimizer updates once per k steps.
        updates = total_steps // config.gradient_accumulation_steps
        accumulation = config.gradient_accumulation_steps
        model.compile(
            optimizer=_create_optimizer(config, updates),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=_metrics(info),
            # The config's "off" values (0, 1) are compile's None.
            global_clipnorm=config.global_clipnorm or None,
            gradient_accumulation_steps=accumulation
            if accumulation > 1
            else None,
            max_consecutive_non_finite=config.max_consecutive_non_finite
            or None,
            log_grad_norm=config.log_grad_norm,
            layer_grad_norms=config.layer_grad_norms,
            missing_gradients=config.missing_gradients,
        )
        # Slots must exist before a restore, or they are not restored.
        model.optimizer.build(model.trainable_variables)
    return model


def _metrics(info):
    """Accuracy (of the next character, for text), and for text the loss
    in bits per character: the loss itself is in nats."""
    metrics = [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
    if info.kind == "text":
        metrics.append(models.BitsPerCharacter(name="bpc"))
    return metrics


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
        raise config_checks.ConfigError(
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


def _create_optimizer(config, total_updates):
    schedule = optimizers.create_schedule(
        config.schedule,
        config.learning_rate,
        total_steps=total_updates,
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
    """Returns `train_steps(iterator, num_steps)`, which runs a
    `tf.function` traced once.

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
    def loop(iterator, num_steps):
        # The first step outside the loop gives `logs` its structure.
        logs = one_step(iterator)
        for _ in tf.range(num_steps - 1):
            logs = one_step(iterator)
        step.assign_add(num_steps)
        return first_replica(logs)

    def train_steps(iterator, num_steps):
        # A tensor: a Python int would trace the loop again for every new
        # count (the last, shorter call of an epoch; a save between).
        return loop(iterator, tf.convert_to_tensor(num_steps, tf.int64))

    train_steps.function = loop  # the `tf.function`, to inspect its graph
    return train_steps


def make_evaluate(model, strategy, dataset):
    """Returns `evaluate()`, a `tf.function` that runs `model.test_step`
    over one pass of `dataset` on every replica, updating the model's
    metrics. (It closes over the dataset: as an argument, each call would
    trace it again.)"""
    dataset = strategy.experimental_distribute_dataset(dataset)

    @tf.function
    def evaluate():
        for batch in dataset:
            strategy.run(model.test_step, args=(batch,))

    return evaluate
