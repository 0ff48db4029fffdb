"""Every field of a training config, declared once.

Each `Field` says its type and bounds or choices, its default, a one-line
doc, and whether it changes what is computed (a resumed run may change
only those that do not). From this list come:

- the defaults (`defaults()`, which `configs/default.py` starts from);
- the checks (`check`, which `config_checks.validate` runs on each field);
- the drift rules on resume (`changeable()`, `value_before_it_existed()`);
- the "off" values the trainer passes on as None (`value()`);
- the README's table of fields (`markdown_table()`, checked by a test;
  `python -m template_trainer.schema` prints it).

Adding a field means adding it here (and using it where it acts). This
module imports neither TensorFlow nor Keras, so a config is checked before
their ~5 s start.
"""

import dataclasses
import math
import os
import re

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

# A field whose default is the experiment's to set (`configs/*.py`).
NO_DEFAULT = object()


# `mylayers.checks`' predicates (the layers and `CustomModel.compile` use
# those; importing `mylayers` would import TensorFlow). The tests check
# that both agree.
def is_int(value, minimum=None, maximum=None):
    """Whether `value` is an int (a bool is not) within the bounds."""
    if not isinstance(value, int) or isinstance(value, bool):
        return False
    return (minimum is None or value >= minimum) and (
        maximum is None or value <= maximum
    )


def is_number(value, minimum=None):
    """Whether `value` is a finite int or float (not a bool), >= `minimum`."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    return math.isfinite(value) and (minimum is None or value >= minimum)


# What a field accepts: each is called with the value and returns None if
# it is fine, else what would be ("expected ..."), and has a `doc`.
@dataclasses.dataclass(frozen=True)
class Int:
    minimum: int
    maximum: int | None = None

    def __call__(self, value):
        if is_int(value, self.minimum, self.maximum):
            return None
        if self.maximum is None:
            return f"expected an integer >= {self.minimum}"
        return f"expected an integer from {self.minimum} to {self.maximum}"

    @property
    def doc(self):
        if self.maximum is None:
            return f"integer >= {self.minimum}"
        return f"integer {self.minimum} to {self.maximum}"


@dataclasses.dataclass(frozen=True)
class Number:
    """A finite number > `minimum` (>= unless `strict`), < `maximum`."""

    minimum: float
    strict: bool = True
    maximum: float | None = None

    def _bounds(self):
        bound = f"> {self.minimum}" if self.strict else f">= {self.minimum}"
        if self.maximum is not None:
            bound += f" and < {self.maximum}"
        return bound

    def __call__(self, value):
        ok = is_number(value, self.minimum) and (
            value > self.minimum if self.strict else True
        )
        if ok and self.maximum is not None:
            ok = value < self.maximum
        return None if ok else f"expected a number {self._bounds()}"

    @property
    def doc(self):
        return f"number {self._bounds()}"


@dataclasses.dataclass(frozen=True)
class Bool:
    def __call__(self, value):
        return None if isinstance(value, bool) else "expected True or False"

    doc = "True or False"


@dataclasses.dataclass(frozen=True)
class Choice:
    choices: tuple

    def __call__(self, value):
        if value in self.choices:
            return None
        return f"expected one of {', '.join(sorted(self.choices))}"

    @property
    def doc(self):
        return " \\| ".join(f"`{c}`" for c in self.choices)


@dataclasses.dataclass(frozen=True)
class Custom:
    """A check of its own: `function(value)` returns None or what is
    expected."""

    function: object
    doc: str

    def __call__(self, value):
        return self.function(value)


def _dataset(value):
    from template_trainer.data import names

    return names.problem(value)


def _data_dir(value):
    if value is None or (
        isinstance(value, str) and value and not os.path.isfile(value)
    ):
        return None
    return "expected a directory path or None"


def _label_column(value):
    if isinstance(value, str) and value:
        return None
    return "expected a CSV column's name"


def _model_name(value):
    if value in ARCHITECTURES or (
        isinstance(value, str) and IMPORT_PATH.match(value)
    ):
        return None
    return (
        f"expected one of {', '.join(ARCHITECTURES)}, or an architecture "
        "of your own as 'package.module:Attribute'"
    )


def _widths(value):
    values = (value,) if is_int(value) else value  # One width for all (LMs).
    try:
        if all(is_int(v, 1) for v in values):
            return None
    except TypeError:  # Not a sequence.
        pass
    return "expected positive integers"


def _boundaries(value):
    try:
        ok = list(value) == sorted(set(value)) and all(
            is_int(b, 1) for b in value
        )
    except TypeError:
        ok = False
    return None if ok else "expected increasing positive steps"


@dataclasses.dataclass(frozen=True)
class Field:
    """One config field.

    Attributes:
        name: Its path in the config: `"batch_size"`, `"model.dropout"`.
        default: Its value in `defaults()`, or `NO_DEFAULT` for the
            experiment's own (`config.model`'s fields).
        check: What it accepts (`Int`, `Number`, `Bool`, `Choice`,
            `Custom`).
        doc: One line for the README's table.
        computes: Whether it changes what is computed; a resumed run may
            change only the fields that do not (the run's length, how
            often it saves), unless `--allow_config_change`.
        off: The value that turns the option off, which the trainer passes
            on as None (`value()`); None for none.
        optional: Checked only when present (an architecture's argument).
        before: The value that was in effect in runs saved before the field
            existed, so they resume as they were; `NO_DEFAULT` for none.
    """

    name: str
    default: object
    check: object
    doc: str
    computes: bool = True
    off: object = None
    optional: bool = False
    before: object = NO_DEFAULT


FIELDS = (
    # data
    Field(
        "dataset",
        "digits",
        Custom(
            _dataset,
            "a catalog name, `csv:PATH`, `imagefolder:DIR`, `text:PATH`",
        ),
        "the data: bundled `digits`/`python_docs`, a TFDS catalog name, or "
        "a source of your own",
    ),
    Field(
        "data_dir",
        None,
        Custom(_data_dir, "a directory, or None"),
        "where TFDS keeps prepared datasets (None: `~/tensorflow_datasets` "
        "or `TFDS_DATA_DIR`)",
    ),
    Field(
        "download",
        True,
        Bool(),
        "download a missing catalog dataset (False: fail at once instead)",
    ),
    Field(
        "val_fraction",
        0.1,
        Number(0.0, maximum=1.0),
        "the part of each training class held out for validation, where "
        "the dataset has no validation split",
    ),
    Field(
        "batch_size",
        32,
        Int(1),
        "global batch, split across replicas",
    ),
    Field("eval_batch_size", 512, Int(1), "batch for validation and test"),
    Field(
        "shuffle_buffer",
        10_000,
        Int(1),
        "examples shuffled at once (>= the digits train split: a full shuffle)",
    ),
    Field(
        "max_shift",
        1,
        Int(0),
        "random shifts of up to this many pixels (images only; on 8x8 "
        "digits 1 lets an MLP pass ~97% test accuracy)",
    ),
    Field(
        "context_length",
        128,
        Int(1),
        "text only: the characters a model reads at once",
        before=128,
    ),
    Field(
        "label_column",
        "label",
        Custom(_label_column, "a column name"),
        "`csv:PATH` only: the column of labels; every other is a feature",
        before="label",
    ),
    Field(
        "image_size",
        0,
        Int(0),
        "`imagefolder:DIR` only: resize to N x N (0: keep the images' own "
        "size, which must then be one)",
        before=0,
    ),
    # model: the architecture's own arguments besides these are checked
    # against its signature (`setup.resolve_architecture`).
    Field(
        "model.name",
        NO_DEFAULT,
        Custom(
            _model_name,
            "`mlp` \\| `cnn` \\| `transformer_lm` \\| "
            "`package.module:Attribute`",
        ),
        "the architecture: a bundled one, or your own class or factory",
    ),
    Field(
        "model.hidden_units",
        NO_DEFAULT,
        Custom(_widths, "positive integers"),
        "widths of the hidden layers (an LM's: one, its MLP's)",
        optional=True,
    ),
    Field(
        "model.filters",
        NO_DEFAULT,
        Custom(_widths, "positive integers"),
        "`cnn` only: channels of each convolution block",
        optional=True,
    ),
    Field(
        "model.dropout",
        NO_DEFAULT,
        Number(0.0, strict=False, maximum=1.0),
        "dropout rate of the bundled architectures",
        optional=True,
    ),
    # optimizer
    Field("optimizer", "adam", Choice(OPTIMIZERS), "the optimizer"),
    Field(
        "learning_rate",
        3e-3,
        Number(0.0),
        "peak of the schedule (digits MLP: 3e-3 beat 1e-3 on validation, "
        "seeds 0-4)",
    ),
    Field("momentum", 0.9, Number(0.0, strict=False, maximum=1.0), "sgd only"),
    Field("nesterov", False, Bool(), "sgd only"),
    Field("weight_decay", 1e-4, Number(0.0, strict=False), "adamw only"),
    Field(
        "schedule",
        "warmup_cosine",
        Choice(SCHEDULES),
        "the learning rate over the run (decaying to 0 lets the last "
        "epochs settle)",
    ),
    Field("warmup_steps", 200, Int(0), "warmup_cosine only"),
    Field(
        "boundaries",
        (10_000,),
        Custom(_boundaries, "increasing positive steps"),
        "piecewise only: steps where the rate drops",
    ),
    Field(
        "decay_factor",
        0.1,
        Number(0.0),
        "piecewise only: the rate's multiplier at each boundary",
    ),
    Field(
        "num_epochs",
        100,
        Int(1),
        "the run's length (a resumed run may change it)",
        computes=False,
    ),
    # training step: CustomModel.compile's options
    Field(
        "mixed_precision",
        "float32",
        Choice(PRECISIONS),
        "Keras's dtype policy (mixed_bfloat16 pays on CPUs with "
        "AVX512_BF16 or AMX)",
    ),
    Field(
        "global_clipnorm",
        0.0,
        Number(0.0, strict=False),
        "> 0: clip the all-reduced gradient's global norm to it",
        off=0.0,
    ),
    Field(
        "gradient_accumulation_steps",
        1,
        Int(1),
        "> 1: one update per k batches",
        off=1,
    ),
    Field(
        "max_consecutive_non_finite",
        0,
        Int(0),
        "> 0: skip NaN/Inf steps, stop after this many in a row (off: its "
        "check costs ~25% of the tiny MLP's step)",
        off=0,
    ),
    Field("log_grad_norm", True, Bool(), "`grad_norm` in the logs"),
    Field(
        "layer_grad_norms",
        False,
        Bool(),
        "one `grad_norm/<layer>` scalar per layer",
    ),
    Field(
        "missing_gradients",
        "raise",
        Choice(("raise", "warn")),
        "for trainable variables the loss does not reach",
    ),
    # training loop
    Field("seed", 0, Int(0, 2**32 - 1), "weights, data order, dropout"),
    Field(
        "deterministic",
        True,
        Bool(),
        "bitwise-reproducible ops, so a resumed run equals an "
        "uninterrupted one (process-wide; Keras then declines jit_compile "
        "in fit)",
    ),
    Field(
        "steps_per_loop",
        50,
        Int(1),
        "train steps inside one tf.function call",
        computes=False,
    ),
    Field("jit_compile", False, Bool(), "compile each step with XLA"),
    Field("val_every_epochs", 10, Int(1), "epochs between validations"),
    Field(
        "best_metric",
        "val_accuracy",
        Choice(VAL_METRICS),
        "the validation metric that picks the best checkpoint",
    ),
    Field(
        "best_mode",
        "auto",
        Choice(("auto", "max", "min")),
        "auto: min for a loss, max otherwise",
    ),
    Field(
        "early_stopping_patience",
        0,
        Int(0),
        "N > 0: stop after N validations in a row without a better "
        "best_metric (counted across resumes)",
        computes=False,
    ),
    Field(
        "fast_dev_run",
        0,
        Int(0),
        "N > 0: N train steps, N validation and N test batches, no writes",
    ),
    Field(
        "overfit_batches",
        0,
        Int(0),
        "N > 0: train and validate on the same N batches",
    ),
    # distribution
    Field(
        "distribution",
        "auto",
        Choice(STRATEGIES),
        "auto: several workers if TF_CONFIG or a Slurm step names them, "
        "else all GPUs, else one device",
    ),
    Field(
        "cpu_devices",
        0,
        Int(0),
        "N > 0: split the CPU into N logical devices (to try mirrored "
        "without GPUs)",
    ),
    Field(
        "collective_timeout_s",
        0,
        Int(0),
        "N > 0: time out each collective (0: TensorFlow's peer health "
        "checks find a lost worker)",
    ),
    # checkpointing
    Field(
        "checkpoint_every_secs",
        600,
        Int(0),
        "save every N seconds of training (0: off)",
        computes=False,
    ),
    Field(
        "checkpoint_every_steps",
        0,
        Int(0),
        "save every N steps (0: off)",
        computes=False,
    ),
    Field(
        "max_checkpoints_to_keep",
        3,
        Int(1),
        "the newest checkpoints kept",
        computes=False,
    ),
)

BY_NAME = {field.name: field for field in FIELDS}


def defaults():
    """An `ml_collections.ConfigDict` of every field at its default, and an
    empty `model` for the experiment to fill."""
    import ml_collections

    config = ml_collections.ConfigDict()
    for field in FIELDS:
        if field.name.startswith("model.") and "model" not in config:
            config.model = ml_collections.ConfigDict()
        if field.default is NO_DEFAULT:
            continue
        if field.default is None:  # A typed None, so flags may set it.
            config[field.name] = ml_collections.FieldReference(
                None, field_type=str
            )
        else:
            config[field.name] = field.default
    return config


def value(config, name):
    """`config`'s value of the field `name`, as the trainer uses it: None
    where it is the field's `off` value (the trainer's `0` is
    `CustomModel.compile`'s None), and the value in effect before the
    field existed where a config has none."""
    field = BY_NAME[name]
    if field.before is not NO_DEFAULT and not has(config, name):
        return field.before
    current = get(config, name)
    if field.off is not None and current == field.off:
        return None
    return current


def get(config, name):
    for part in name.split("."):
        config = config[part]
    return config


def has(config, name):
    try:
        get(config, name)
    except (KeyError, AttributeError):
        return False
    return True


def changeable():
    """The fields a resumed run may change: they leave what is computed as
    it was."""
    return tuple(field.name for field in FIELDS if not field.computes)


def value_before_it_existed():
    """Field -> the value in effect in runs saved before it existed."""
    return {
        field.name: field.before
        for field in FIELDS
        if field.before is not NO_DEFAULT
    }


def markdown_table():
    """The README's table of fields."""
    lines = [
        "| field | default | accepts | what | on resume |",
        "| --- | --- | --- | --- | --- |",
    ]
    for field in FIELDS:
        default = (
            "(the experiment's)"
            if field.default is NO_DEFAULT
            else f"`{field.default!r}`"
        )
        resume = "may change" if not field.computes else "fixed"
        lines.append(
            f"| `{field.name}` | {default} | {field.check.doc} | "
            f"{field.doc} | {resume} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown_table(), end="")
