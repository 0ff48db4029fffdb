"""What TensorFlow, absl and ml_collections say only in words.

Where a library raises no type of its own for a case the trainer must tell
apart, the match on its message lives here, one function per pattern.
Each is pinned by a canary, `tests/upstream_test.py::test_upstream_*`,
which provokes the real message: when a release rewords one, its canary
fails, instead of a user's run getting a vaguer error. Everywhere else the
trainer catches types.

Imports nothing heavy: the flag errors are read before TensorFlow starts.
"""

import re

# ml_collections' `--config` flag, when the file's get_config() raised or
# the file could not be run.
_CONFIG_FILE_FAILED = "Error whilst parsing config file"
# absl's message for a flag whose value does not parse:
# "flag --config.batch_size=abc: invalid literal for int() ...".
_FLAG_VALUE = re.compile(r"flag (--config\.([\w.]+)=.*?): ")
# What Python's int() and float() say, inside absl's message.
_NUMBER_PARSE = (
    (": invalid literal for int()", "an integer"),
    (": could not convert string to float", "a number"),
)
# TensorFlow's restore of a variable saved with another shape.
_SHAPE_MISMATCH = "incompatible tensor with shape"
# TensorFlow's collective errors name the peer that failed this way when
# they know it, and otherwise mention tasks by their device names.
_REPORTED_FROM = re.compile(r"reported from (/job:\w+/task:\d+)")
_TASK = re.compile(r"/job:\w+/replica:\d+/task:\d+")
# TensorFlow's wrappers around an op's message: "{{function_node ...}} "
# inside a tf.function, " [Op:ReadFile]" eagerly.
_FUNCTION_NODE = re.compile(r"\{\{[^}]*\}\}\s*")
_OP_SUFFIX = re.compile(r"\s*\[Op:\w+\]$")


def one_line(text):
    return " ".join(str(text).split())


def is_config_file_failure(error):
    """Whether absl's flag error is ml_collections' for a config file that
    raised (its traceback follows, as text)."""
    return _CONFIG_FILE_FAILED in str(error)


def unknown_config_field(error):
    """`(field, hint)` for ml_collections' error on an override of a field
    the config does not have (`--config.batch_sise=3`: a `KeyError` of
    "'batch_sise'\\nDid you mean ...", wrapped in an `AttributeError`), or
    None for another error."""
    if not isinstance(error, (AttributeError, KeyError)):
        return None
    cause = error.args[0] if error.args else error
    while isinstance(cause, BaseException) and cause.args:
        cause = cause.args[0]
    text = str(cause)
    if "get_config" in text:  # A config file without get_config().
        return None
    name, _, hint = text.partition("\n")
    return name.strip().strip("'\""), hint.strip()


def lacks_get_config(error):
    """Whether ml_collections' error says the config file has no
    get_config()."""
    cause = error
    while isinstance(cause, BaseException) and cause.args:
        cause = cause.args[0]
    return "get_config" in str(cause)


def bad_override(error):
    """`(flag, field)` for absl's error on `--config.FIELD=VALUE` whose
    value does not parse, e.g. `("--config.batch_size=abc",
    "batch_size")`; None for another flag error."""
    match = _FLAG_VALUE.match(one_line(error))
    return match.groups() if match else None


def without_python_parse_error(message):
    """absl's message for a number flag that does not parse, cut before
    Python's own words, and what was expected: `("flag --length=abc", "an
    integer")`; `(message, None)` for any other."""
    for python_says, expected in _NUMBER_PARSE:
        if python_says in message:
            return message.split(python_says, 1)[0], expected
    return message, None


def is_shape_mismatch(error):
    """Whether a checkpoint restore failed on a variable saved with another
    shape (TensorFlow raises a plain `ValueError`)."""
    return _SHAPE_MISMATCH in str(error)


def peers_named(error, me):
    """The tasks a collective error names as failed, other than `me`."""
    named = _REPORTED_FROM.findall(str(error))
    if not named:
        named = [t for t in _TASK.findall(str(error)) if t != me]
    return sorted(set(named))


def without_op_wrappers(message):
    """TensorFlow's op error message without its wrappers."""
    return _OP_SUFFIX.sub("", _FUNCTION_NODE.sub("", message))
