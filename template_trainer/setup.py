"""Everything a run needs before its first step, built from the config.

This is where the config stops: `create_run` unpacks it into plain values
and objects (datasets, the compiled model, the step function, checkpoints,
summaries), so nothing past it reads a ConfigDict.
"""

import dataclasses
import importlib
import inspect
import math
import os
import sys
import tempfile
import traceback

import keras
import numpy as np
import tensorflow as tf

import models
from template_trainer import (
    checkpoints,
    config_checks,
    distribution,
    errors,
    optimizers,
    schema,
    summaries,
)
from template_trainer import workdir as workdir_guard
from template_trainer.data import pipeline


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
    # The data's shapes and sizes (a `DatasetInfo`), printed at the start.
    info: object = None
    # The validation split that `evaluate_val` reads (one pass).
    val_data: object = None

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
    # A model name that does not import fails before the data is prepared
    # (minutes, for a large dataset's first use).
    resolve_architecture(config.model.name)
    data = pipeline.create_datasets(
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
        context_length=schema.value(config, "context_length"),
        label_column=schema.value(config, "label_column"),
        image_size=schema.value(config, "image_size"),
    )
    config_checks.check_fits(
        config.batch_size,
        config.max_shift,
        data.info,
        strategy.num_replicas_in_sync,
        config.best_metric,
    )
    if workdir and is_chief:
        # Refuses to resume on other data; keeps the class names and the
        # vocabulary with the run.
        workdir_guard.keep_data(
            workdir,
            config.dataset,
            data.info.record(),
            checkpoints.has_checkpoint(workdir),
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
    if isinstance(model, models.CustomModel):  # `.keras` keeps them
        model.label_names = tuple(data.info.label_names)
        model.vocabulary = data.info.vocabulary
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
        info=data.info,
        val_data=val_data,
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
        model.compile(
            optimizer=_create_optimizer(config, updates),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=_metrics(info),
            # The config's "off" values (0, 1) are compile's None.
            global_clipnorm=schema.value(config, "global_clipnorm"),
            gradient_accumulation_steps=schema.value(
                config, "gradient_accumulation_steps"
            ),
            max_consecutive_non_finite=schema.value(
                config, "max_consecutive_non_finite"
            ),
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
    architecture = resolve_architecture(model_config.name)
    kwargs = {k: v for k, v in model_config.items() if k != "name"}
    _check_parameters(model_config.name, architecture, kwargs)
    kwargs.update(_data_arguments(architecture, info))
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


def _data_arguments(architecture, info):
    """`normalization=(mean, variance)` of a tabular dataset's features,
    for an architecture whose constructor takes it (the bundled MLP's
    does: `model.keras` then predicts on raw rows); else nothing."""
    if info.normalization is None:
        return {}
    try:
        parameters = inspect.signature(architecture).parameters
    except (TypeError, ValueError):
        return {}
    if "normalization" not in parameters:
        return {}
    return {"normalization": info.normalization}


def resolve_architecture(name):
    """The class or factory `config.model.name` names: one of
    `models.ARCHITECTURES`, or `"package.module:Attribute"`, imported (the
    module found on `sys.path`, where `train.py` puts the config file's
    directory).

    Raises:
        config_checks.ConfigError: the module or the attribute does not
            exist, or importing the module failed.
    """
    if name in models.ARCHITECTURES:
        return models.ARCHITECTURES[name]
    module_name, _, attribute = name.partition(":")

    def refuse(why):
        raise config_checks.ConfigError(
            f"config.model.name={name!r} is invalid: {why}."
        )

    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and (module_name + ".").startswith(e.name + "."):
            refuse(
                f"there is no module {e.name!r} (looked in the config "
                "file's directory and on sys.path); expected "
                "'package.module:Attribute' naming your module"
            )
        refuse(f"importing {module_name} failed ({_described(e)})")
    except Exception as e:  # noqa: BLE001 - anything the user's module raises
        refuse(f"importing {module_name} failed ({_described(e)})")
    target = module
    for part in attribute.split("."):
        target = getattr(target, part, None)
        if target is None:
            defined = sorted(
                n
                for n, v in vars(module).items()
                if not n.startswith("_")
                and callable(v)
                and getattr(v, "__module__", None) == module.__name__
            )
            refuse(
                f"module {module_name} has no attribute {attribute!r} (it "
                f"defines {', '.join(defined) or 'no classes or functions'})"
            )
    if not callable(target):
        refuse(f"{attribute} is not a class or a function")
    return target


def _described(error):
    """`Type: message` of `error`, one line, and where it was raised."""
    message = " ".join(str(error).split())
    return f"{type(error).__name__}: {message}{_raised_at(error)}"


def _check_parameters(name, architecture, fields):
    """Refuses a field of `config.model` the architecture does not take
    (a class is checked by its `__init__`). Keyword arguments it passes on
    (`**kwargs`) are Keras's for a Keras model, and anything for another
    callable."""
    function = (
        architecture.__init__
        if isinstance(architecture, type)
        else architecture
    )
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):  # No signature (a builtin): try it.
        return
    named = [
        p.name
        for p in parameters.values()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        and p.name not in ("self", "input_shape", "num_classes")
    ]
    accepted = list(named)
    if any(p.kind == p.VAR_KEYWORD for p in parameters.values()):
        if not (
            isinstance(architecture, type)
            and issubclass(architecture, keras.layers.Layer)
        ):
            return
        base = inspect.signature(keras.layers.Layer.__init__).parameters
        accepted += [n for n, p in base.items() if p.kind == p.KEYWORD_ONLY]
    for field in fields:
        if field not in accepted:
            raise config_checks.ConfigError(
                f"config.model.{field} is not a parameter of {name!r} (it "
                f"takes {', '.join(named) or 'no other parameters'}); "
                f"remove it from config.model (del config.model[{field!r}] "
                "in the config file) or add it to the architecture."
            )


class ModelNotSavableError(errors.RunError):
    """The built model does not survive a `.keras` save and load."""


def check_saves(model):
    """Saves `model` as `.keras` to a temporary directory and loads it back,
    before training, so a model whose exports would not load fails now,
    not after hours.

    Raises:
        ModelNotSavableError: it did not load, or came back with other
            weights; the message names the class at fault and the fix.
    """
    with tempfile.TemporaryDirectory(prefix="save-check-") as directory:
        path = os.path.join(directory, "model.keras")
        try:
            with errors.writing("save check's model", path):
                model.save(path)
            loaded = keras.models.load_model(path)
        except errors.WriteError:
            raise  # The disk, not the model: say so as for any write.
        except Exception as e:  # noqa: BLE001 - whatever Keras raises
            raise ModelNotSavableError(_not_savable(model, e)) from None
    ours, theirs = model.get_weights(), loaded.get_weights()
    if len(ours) != len(theirs) or not all(
        a.shape == b.shape and np.array_equal(a, b)
        for a, b in zip(ours, theirs)
    ):
        raise ModelNotSavableError(
            f"{_class_name(type(model))} comes back from a .keras save and "
            "load with other weights: its get_config() (or a layer's) must "
            "return every argument its constructor takes, so that "
            "from_config() builds the same model."
        )


def _class_name(cls):
    return f"{cls.__module__}.{cls.__qualname__}"


def _not_savable(model, error):
    """Why `model` does not load from `.keras`: the first of its own
    layer classes (or its own class) that is not registered, or that its
    `get_config()` cannot rebuild; else Keras's error, in one line."""
    ours = [
        layer
        for layer in model._flatten_layers(include_self=True, recursive=True)
        if not type(layer).__module__.startswith("keras")
    ]
    for layer in ours:
        cls = type(layer)
        registered = keras.saving.get_registered_name(cls)
        if keras.saving.get_registered_object(registered) is not cls:
            package = cls.__module__.split(".")[0]
            return (
                f"{_class_name(cls)} (layer {layer.name!r}) is not registered "
                "for saving, so the run's model.keras would not load: "
                "decorate the class with @keras.saving."
                f"register_keras_serializable(package={package!r})."
            )
    for layer in reversed(ours):  # The innermost first.
        try:
            type(layer).from_config(layer.get_config())
        except Exception as e:  # noqa: BLE001 - whatever the layer raises
            # Keras's first sentence; the rest is an example.
            reason = " ".join(str(e).split()).split(". ")[0]
            return (
                f"{_class_name(type(layer))} (layer {layer.name!r}) cannot be "
                f"rebuilt from its get_config() ({type(e).__name__}: "
                f"{reason}), so the "
                "run's model.keras would not load: give the class a "
                "get_config() that returns every argument of its __init__ "
                "(and a from_config() if they need converting)."
            )
    return (
        "the model does not survive a .keras save and load, so the run's "
        f"model.keras would not load ({_described(error)})."
    )


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

    The step is traced as Keras's `fit` traces it, without AutoGraph
    (`do_not_convert`): `train_step`, the layers' `call` and Keras's own
    code run as written, so a step that trains under `fit` trains here,
    and no trainer start spends seconds rewriting Keras's source. Only the
    loop around it is converted.
    """
    step_fn = (
        tf.function(model.train_step, jit_compile=True, autograph=False)
        if jit_compile
        else model.train_step
    )

    def first_replica(logs):
        return tf.nest.map_structure(
            lambda v: strategy.experimental_local_results(v)[0], logs
        )

    # A function of its own, so that its two calls in `loop` trace the
    # step once (as `fit` wraps its step in one).
    @tf.function(autograph=False)
    def one_step(iterator):
        batch = distribution.split_batch(strategy, next(iterator))
        return first_replica(strategy.run(step_fn, args=(batch,)))

    @tf.function
    def loop(iterator, num_steps):
        # The first step outside the loop gives `logs` its structure.
        logs = one_step(iterator)
        for _ in tf.range(num_steps - 1):
            logs = one_step(iterator)
        step.assign_add(num_steps)
        return logs

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
    trace it again.) `test_step` is traced without AutoGraph, as in
    `make_train_steps`."""
    dataset = strategy.experimental_distribute_dataset(dataset)

    @tf.autograph.experimental.do_not_convert
    def test_step(batch):
        strategy.run(model.test_step, args=(batch,))

    @tf.function
    def evaluate():
        for batch in dataset:
            test_step(batch)

    return evaluate
