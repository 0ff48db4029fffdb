"""Checks every config value before any work starts.

Each failure is a `ConfigError` whose message is one line naming the field,
the value received and what is allowed; `train.py` prints it and exits 2.
It imports neither TensorFlow nor Keras, so `train.py` refuses a bad
config before their ~5 s start: the names a config may choose are kept
here (the tests check them against the modules that use them).
"""

import math
import os
import re

from template_trainer import errors
from template_trainer.data import names as data_names

# `models.ARCHITECTURES`' names; `config.model.name` may also be an import
# path, "package.module:Attribute" (see `setup.resolve_architecture`).
ARCHITECTURES = ("cnn", "mlp", "transformer_lm")
IMPORT_PATH = re.compile(
    r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$"
)
OPTIMIZERS = ("sgd", "adam", "adamw")  # `optimizers.OPTIMIZERS`
SCHEDULES = ("constant", "warmup_cosine", "piecewise")  # and `SCHEDULES`
# `distribution.STRATEGIES`
STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker", "tpu")

# What the trainer's evaluation on the validation split reports (its model
# is compiled with the loss and `accuracy`, and for text `bpc`, bits per
# character); `config.best_metric` picks one.
VAL_METRICS = ("val_loss", "val_accuracy", "val_bpc")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")


class ConfigError(errors.RunError):
    """A config value is missing, of the wrong type, or out of range."""


# `mylayers.checks`' predicates (the layers and `CustomModel.compile` use
# those; importing `mylayers` would import TensorFlow). The tests check
# that both agree.
def _is_int(value, minimum=None, maximum=None):
    """Whether `value` is an int (a bool is not) within the bounds."""
    if not isinstance(value, int) or isinstance(value, bool):
        return False
    return (minimum is None or value >= minimum) and (
        maximum is None or value <= maximum
    )


def _is_number(value, minimum=None):
    """Whether `value` is a finite int or float (not a bool), >= `minimum`."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    return math.isfinite(value) and (minimum is None or value >= minimum)


def _fail(field, value, allowed):
    raise ConfigError(f"config.{field}={value!r} is invalid: {allowed}.")


def _get(config, field):
    for part in field.split("."):
        config = config[part]
    return config


def _int(config, field, minimum, maximum=None):
    value = _get(config, field)
    if not _is_int(value, minimum, maximum):
        if maximum is None:
            _fail(field, value, f"expected an integer >= {minimum}")
        _fail(field, value, f"expected an integer from {minimum} to {maximum}")
    return value


def _number(config, field, minimum, strict=True, maximum=None):
    """A finite number > `minimum` (>= unless `strict`) and < `maximum`."""
    value = _get(config, field)
    ok = _is_number(value, minimum) and (value > minimum if strict else True)
    if maximum is not None:
        ok = ok and value < maximum
    if not ok:
        bound = f"> {minimum}" if strict else f">= {minimum}"
        upper = f" and < {maximum}" if maximum is not None else ""
        _fail(field, value, f"expected a number {bound}{upper}")
    return value


def _bool(config, field):
    value = _get(config, field)
    if not isinstance(value, bool):
        _fail(field, value, "expected True or False")
    return value


def _choice(config, field, choices):
    value = _get(config, field)
    if value not in choices:
        _fail(field, value, f"expected one of {', '.join(sorted(choices))}")
    return value


def validate(config):
    """Raises `ConfigError` for the first invalid field of `config`.

    What depends on the data and the devices is checked by `check_fits`
    once they are known.
    """
    dataset = _get(config, "dataset")
    why = data_names.problem(dataset)
    if why:
        _fail("dataset", dataset, why)
    label_column = config.get("label_column", "label")
    if not isinstance(label_column, str) or not label_column:
        _fail("label_column", label_column, "expected a CSV column's name")
    if "image_size" in config:
        _int(config, "image_size", 0)
    data_dir = config.data_dir
    if data_dir is not None and (
        not isinstance(data_dir, str)
        or not data_dir
        or os.path.isfile(data_dir)
    ):
        _fail("data_dir", data_dir, "expected a directory path or None")
    _bool(config, "download")
    _number(config, "val_fraction", 0.0, maximum=1.0)
    for field in ("batch_size", "eval_batch_size", "shuffle_buffer"):
        _int(config, field, 1)
    _int(config, "max_shift", 0)
    _int(config, "context_length", 1)

    name = _get(config, "model.name")
    if name not in ARCHITECTURES and not (
        isinstance(name, str) and IMPORT_PATH.match(name)
    ):
        _fail(
            "model.name",
            name,
            f"expected one of {', '.join(ARCHITECTURES)}, or an "
            "architecture of your own as 'package.module:Attribute'",
        )
    for field in ("hidden_units", "filters"):
        values = config.model.get(field, ())  # `filters`: CNNs only
        if _is_int(values):  # One width for every layer (LMs).
            values = (values,)
        if not all(_is_int(v, 1) for v in values):
            _fail(f"model.{field}", values, "expected positive integers")
    if "dropout" in config.model:  # Architectures may have none.
        _number(config, "model.dropout", 0.0, strict=False, maximum=1.0)

    _choice(config, "optimizer", OPTIMIZERS)
    _number(config, "learning_rate", 0.0)
    _number(config, "momentum", 0.0, strict=False, maximum=1.0)
    _bool(config, "nesterov")
    _number(config, "weight_decay", 0.0, strict=False)
    _choice(config, "schedule", SCHEDULES)
    _int(config, "warmup_steps", 0)
    _number(config, "decay_factor", 0.0)
    _int(config, "num_epochs", 1)
    boundaries = config.boundaries
    if list(boundaries) != sorted(set(boundaries)) or not all(
        _is_int(b, 1) for b in boundaries
    ):
        _fail("boundaries", boundaries, "expected increasing positive steps")

    _choice(config, "mixed_precision", PRECISIONS)
    _number(config, "global_clipnorm", 0.0, strict=False)
    _int(config, "gradient_accumulation_steps", 1)
    _int(config, "max_consecutive_non_finite", 0)
    _bool(config, "log_grad_norm")
    _bool(config, "layer_grad_norms")
    _choice(config, "missing_gradients", ("raise", "warn"))

    _int(config, "seed", 0, 2**32 - 1)
    _bool(config, "deterministic")
    _int(config, "steps_per_loop", 1)
    _bool(config, "jit_compile")
    _int(config, "val_every_epochs", 1)
    _choice(config, "best_metric", VAL_METRICS)
    _choice(config, "best_mode", ("auto", "max", "min"))
    _int(config, "early_stopping_patience", 0)
    _int(config, "fast_dev_run", 0)
    _int(config, "overfit_batches", 0)

    _choice(config, "distribution", STRATEGIES)
    _int(config, "cpu_devices", 0)
    _int(config, "collective_timeout_s", 0)

    _int(config, "checkpoint_every_secs", 0)
    _int(config, "checkpoint_every_steps", 0)
    _int(config, "max_checkpoints_to_keep", 1)


def check_fits(batch_size, max_shift, info, replicas, best_metric):
    """Raises `ConfigError` where the config does not fit the data (a
    `data.pipeline.DatasetInfo`) or the devices: a batch the replicas
    cannot share, a shift that moves most of the image out of view, an
    image option or metric for text, or the reverse."""
    if batch_size % replicas:
        _fail(
            "batch_size",
            batch_size,
            f"expected a multiple of the {replicas} replicas",
        )
    if info.kind == "text":
        if max_shift:
            _fail("max_shift", max_shift, "expected 0 for a text dataset")
        return
    if best_metric == "val_bpc":
        _fail(
            "best_metric",
            best_metric,
            "bits per character are for text datasets; expected "
            "val_accuracy or val_loss",
        )
    if info.kind == "tabular":
        if max_shift:
            _fail(
                "max_shift",
                max_shift,
                "expected 0 for a dataset of feature rows (shifts move "
                "image pixels)",
            )
        return
    height, width = info.input_shape[:2]
    most = (min(height, width) - 1) // 2
    if max_shift > most:
        _fail(
            "max_shift",
            max_shift,
            f"expected at most {most} for {height}x{width} images (a larger "
            "shift moves most of the image out of view)",
        )
