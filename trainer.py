"""The training loop: `train_and_evaluate(config, workdir)`.

It drives `model.train_step` (the same step `model.fit` runs) from its own
loop inside `tf.function`, rather than calling `fit`, because it must
checkpoint the data iterator (for exact resume) and run under
`MultiWorkerMirroredStrategy`, neither of which `fit` supports.
"""

import math
import os
import time

import keras
import tensorflow as tf

import checkpointing
import config_validation
import input_pipeline
import models
import optimizers
import summaries


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
    return architecture(
        input_shape=info.input_shape, num_classes=info.num_classes, **kwargs
    )


def _evaluate(model, eval_fn, eval_data):
    for metric in model.metrics:
        metric.reset_state()
    eval_fn(eval_data)
    return _metric_values(model, prefix="eval_")


def train_and_evaluate(config, workdir):
    """Trains `config`'s model, resuming from `workdir` if it holds a run.

    Args:
        config: An `ml_collections.ConfigDict` like `configs/default.py`'s.
        workdir: Directory for checkpoints, summaries and the final model.

    Returns:
        A dict of the final metrics: `step`, the last epoch's training
        metrics (`loss`, `accuracy`) and the evaluation on the test split
        (`eval_loss`, `eval_accuracy`).

    Raises:
        config_validation.ConfigError: a config value is invalid.
        input_pipeline.DatasetUnavailableError: the dataset cannot be had.
    """
    config_validation.validate(config)
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    keras.utils.set_random_seed(config.seed)

    train_data, eval_data, info = input_pipeline.create_datasets(
        dataset=config.dataset,
        data_dir=config.data_dir,
        batch_size=config.batch_size,
        eval_batch_size=config.eval_batch_size,
        shuffle_buffer=config.shuffle_buffer,
        seed=config.seed,
        max_shift=config.max_shift,
    )
    steps_per_epoch = math.ceil(info.num_train / config.batch_size)
    total_steps = config.num_epochs * steps_per_epoch

    model = _create_model(config.model, info)
    optimizer = optimizers.create_optimizer(
        config.optimizer,
        optimizers.create_schedule(
            config.schedule,
            config.learning_rate,
            total_steps=total_steps,
            warmup_steps=config.warmup_steps,
            boundaries=config.boundaries,
            decay_factor=config.decay_factor,
        ),
        momentum=config.momentum,
        nesterov=config.nesterov,
        weight_decay=config.weight_decay,
    )
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )
    # Slots must exist before a restore, or they are silently not restored.
    optimizer.build(model.trainable_variables)
    step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    iterator = iter(train_data)

    checkpoint = checkpointing.state(model, optimizer, step, iterator)
    manager = checkpointing.manager(
        checkpoint,
        os.path.join(workdir, "checkpoints"),
        config.max_checkpoints_to_keep,
    )
    restored = checkpointing.restore_latest(checkpoint, manager)
    if restored:
        print(f"Resuming from {restored} at step {int(step)}.")

    @tf.function
    def train_steps(iterator, num_steps):
        for _ in tf.range(num_steps):
            model.train_step(next(iterator))
        step.assign_add(tf.cast(num_steps, tf.int64))

    @tf.function
    def eval_all(dataset):
        for batch in dataset:
            model.test_step(batch)

    writer = summaries.Writer(workdir)
    train_logs = {}
    eval_logs = {}
    while int(step) < total_steps:
        epoch, step_in_epoch = divmod(int(step), steps_per_epoch)
        if step_in_epoch == 0:
            for metric in model.metrics:
                metric.reset_state()
        progress = keras.utils.Progbar(
            steps_per_epoch, stateful_metrics=["loss", "accuracy", "steps/s"]
        )
        print(f"Epoch {epoch + 1}/{config.num_epochs}")
        progress.update(step_in_epoch)
        epoch_end = (epoch + 1) * steps_per_epoch
        while int(step) < epoch_end:
            current = int(step)
            next_checkpoint = (
                current // config.checkpoint_every_steps + 1
            ) * config.checkpoint_every_steps
            num_steps = min(
                config.steps_per_loop,
                epoch_end - current,
                next_checkpoint - current,
            )
            start = time.perf_counter()
            train_steps(iterator, tf.constant(num_steps, tf.int64))
            train_logs = _metric_values(model)
            train_logs["steps/s"] = num_steps / (time.perf_counter() - start)
            progress.update(
                int(step) - epoch * steps_per_epoch, list(train_logs.items())
            )
            if int(step) % config.checkpoint_every_steps == 0:
                manager.save(checkpoint_number=int(step))
        scalars = dict(train_logs)
        scalars["learning_rate"] = float(optimizer.learning_rate)
        if (epoch + 1) % config.eval_every_epochs == 0 or int(
            step
        ) == total_steps:
            eval_logs = _evaluate(model, eval_all, eval_data)
            scalars.update(eval_logs)
            print(" - ".join(f"{k}: {v:.4f}" for k, v in eval_logs.items()))
        writer.write(int(step), scalars)

    if not eval_logs:
        eval_logs = _evaluate(model, eval_all, eval_data)
    if int(step) != (
        manager.latest_checkpoint
        and int(manager.latest_checkpoint.rsplit("-", 1)[1])
    ):
        manager.save(checkpoint_number=int(step))
    writer.close()
    model.save(os.path.join(workdir, "model.keras"))
    return {"step": int(step), **train_logs, **eval_logs}
