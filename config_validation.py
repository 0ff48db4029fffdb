"""Checks every config value before any work starts.

Each failure is a `ConfigError` whose message is one line naming the field,
the value received and what is allowed; `train.py` prints it and exits 2.
"""

import math
import os

import distribution
import input_pipeline
import models
import optimizers

# What the trainer's evaluation reports (its model is compiled with the loss
# and `accuracy`); `config.best_metric` picks one.
EVAL_METRICS = ("eval_loss", "eval_accuracy")


class ConfigError(ValueError):
    """A config value is missing, of the wrong type, or out of range."""


def _fail(field, value, allowed):
    raise ConfigError(f"config.{field}={value!r} is invalid: {allowed}.")


def _get(config, field):
    for part in field.split("."):
        config = config[part]
    return config


def _int(config, field, minimum):
    value = _get(config, field)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        _fail(field, value, f"expected an integer >= {minimum}")
    return value


def _float(config, field, minimum, strict=True, maximum=None):
    value = _get(config, field)
    ok = (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
    )
    if ok:
        ok = value > minimum if strict else value >= minimum
        if maximum is not None:
            ok = ok and value < maximum
    if not ok:
        bound = f"> {minimum}" if strict else f">= {minimum}"
        upper = f" and < {maximum}" if maximum is not None else ""
        _fail(field, value, f"expected a number {bound}{upper}")
    return value


def _choice(config, field, choices):
    value = _get(config, field)
    if value not in choices:
        _fail(field, value, f"expected one of {', '.join(sorted(choices))}")
    return value


def validate(config):
    """Raises `ConfigError` for the first invalid field of `config`.

    What depends on the data (`max_shift` against the image size, the batch
    against the replicas) is checked by the trainer once it has the data.
    """
    _choice(config, "dataset", input_pipeline.PIXEL_MAX)
    data_dir = config.data_dir
    if data_dir is not None and (
        not isinstance(data_dir, str)
        or not data_dir
        or os.path.isfile(data_dir)
    ):
        _fail("data_dir", data_dir, "expected a directory path or None")
    for field in ("batch_size", "eval_batch_size", "shuffle_buffer"):
        _int(config, field, 1)
    _int(config, "max_shift", 0)
    if not isinstance(config.download, bool):
        _fail("download", config.download, "expected True or False")

    _choice(config, "model.name", models.ARCHITECTURES)
    for field in ("hidden_units", "filters"):
        values = config.model.get(field, ())  # `filters`: CNNs only
        if not all(isinstance(v, int) and v >= 1 for v in values):
            _fail(f"model.{field}", values, "expected positive integers")
    if "dropout" in config.model:  # Architectures may have none.
        _float(config, "model.dropout", 0.0, strict=False, maximum=1.0)

    _choice(config, "optimizer", optimizers.OPTIMIZERS)
    _float(config, "learning_rate", 0.0)
    _float(config, "momentum", 0.0, strict=False, maximum=1.0)
    _float(config, "weight_decay", 0.0, strict=False)
    _choice(config, "schedule", optimizers.SCHEDULES)
    _int(config, "warmup_steps", 0)
    _float(config, "decay_factor", 0.0)
    _int(config, "num_epochs", 1)

    boundaries = config.boundaries
    if list(boundaries) != sorted(set(boundaries)) or not all(
        isinstance(b, int) and b > 0 for b in boundaries
    ):
        _fail("boundaries", boundaries, "expected increasing positive steps")

    _choice(
        config,
        "mixed_precision",
        ("float32", "mixed_float16", "mixed_bfloat16"),
    )
    _float(config, "global_clipnorm", 0.0, strict=False)
    _int(config, "gradient_accumulation_steps", 1)
    _int(config, "max_consecutive_non_finite", 0)
    for field in ("log_grad_norm", "layer_grad_norms"):
        if not isinstance(config[field], bool):
            _fail(field, config[field], "expected True or False")
    _choice(config, "missing_gradients", ("raise", "warn"))

    seed = _int(config, "seed", 0)
    if seed >= 2**32:
        _fail("seed", seed, "expected an integer from 0 to 2**32 - 1")
    _int(config, "steps_per_loop", 1)
    if not isinstance(config.jit_compile, bool):
        _fail("jit_compile", config.jit_compile, "expected True or False")
    _int(config, "eval_every_epochs", 1)
    _choice(config, "best_mode", ("max", "min"))
    _choice(config, "best_metric", EVAL_METRICS)
    _int(config, "fast_dev_run", 0)
    _int(config, "overfit_batches", 0)
    _int(config, "checkpoint_every_steps", 0)
    _int(config, "checkpoint_every_secs", 0)
    _int(config, "max_checkpoints_to_keep", 1)

    _choice(config, "distribution", distribution.STRATEGIES)
    _int(config, "cpu_devices", 0)
    _int(config, "collective_timeout_s", 0)
