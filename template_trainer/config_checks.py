"""Checks every config value before any work starts.

Each failure is a `ConfigError` whose message is one line naming the field,
the value received and what is allowed; `train.py` prints it and exits 2.
It imports neither TensorFlow nor Keras, so `train.py` refuses a bad
config before their ~5 s start. What each field accepts is declared in
`schema.py`.
"""

from template_trainer import errors, schema


class ConfigError(errors.RunError):
    """A config value is missing, of the wrong type, or out of range."""


def _fail(field, value, allowed):
    raise ConfigError(f"config.{field}={value!r} is invalid: {allowed}.")


def validate(config):
    """Raises `ConfigError` for the first invalid field of `config`, in
    `schema.FIELDS`' order.

    What depends on the data and the devices is checked by `check_fits`
    once they are known.
    """
    for field in schema.FIELDS:
        if not schema.has(config, field.name):
            # An architecture's optional argument, or a field added since
            # the config was written: the trainer reads its old value.
            if field.optional or field.before is not schema.NO_DEFAULT:
                continue
            raise ConfigError(
                f"config.{field.name} is missing: expected "
                f"{field.check.doc} ({field.doc})."
            )
        value = schema.get(config, field.name)
        why = field.check(value)
        if why:
            _fail(field.name, value, why)


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
