"""The arguments of `python -m mylayers.gradcheck`, and the user's target
they name (`my_module:MyLayer`, `my_module:layer`, `my_module:cases`), as
`mylayers.Example`s.

argparse rather than absl flags: the command takes a positional target,
which absl flags do not parse, and its flags belong to this command alone,
not to a process-wide registry that the tests importing it would share.
"""

import argparse
import importlib
import os
import sys
from typing import NamedTuple

import keras

from mylayers.examples import Example


class Sample(NamedTuple):
    """A case's inputs where a shape of random floats will not do.

    Attributes:
        inputs: A shape, filled with random floats, or the inputs as they
            are (integer token ids, which gradcheck holds fixed).
        mask: A Keras padding mask, passed to the layer and held fixed.
    """

    inputs: object
    mask: object = None


class UsageError(ValueError):
    """A bad argument; the message is one line that says what would be
    right."""


_DESCRIPTION = """\
Checks gradients against finite differences, in float64, in eager mode,
tf.function and XLA, and prints one row per tensor. With no TARGET, checks
every layer of mylayers. Exit status: 0 if every check passed, 1 if one
failed, 2 for a bad argument.
"""

_TARGET_HELP = """\
module:Attribute, imported from the current directory (or anywhere on
sys.path). A layer class (instantiated with no arguments, or checked on
its examples if it declares an `examples` classmethod), a layer instance
(module level, e.g. `layer = MyLayer(8)`), or a function that takes no
arguments and returns cases: mylayers.Example(layer, inputs, mask,
order)s or (layer, inputs, order) tuples, inputs an input shape (filled
with random floats) or the inputs themselves. A layer needs --input-shape.
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        # One line, as the trainer's errors, not argparse's usage block.
        raise UsageError(f"{message} (see --help)")


def parser():
    """The command's `argparse.ArgumentParser`."""
    p = _Parser(
        prog="python -m mylayers.gradcheck",
        description=_DESCRIPTION,
        epilog=(
            "examples: python -m mylayers.gradcheck my_layers:MyLayer "
            "--input-shape 4,8 --order 2; python -m mylayers.gradcheck "
            "my_layers:cases"
        ),
    )
    p.add_argument("target", nargs="?", help=_TARGET_HELP)
    p.add_argument(
        "--input-shape",
        type=_shape,
        metavar="N,...",
        help="the layer's input shape, batch first, e.g. 4,8: random "
        "floats of that shape",
    )
    p.add_argument(
        "--order",
        type=int,
        choices=(1, 2),
        help="for a layer: 1, gradients (the default); 2, also second "
        "derivatives",
    )
    return p


def _shape(text):
    try:
        shape = tuple(int(n) for n in text.split(","))
    except ValueError:
        shape = ()
    if not shape or min(shape) < 1:
        raise argparse.ArgumentTypeError(
            f"expected positive integers separated by commas, e.g. 4,8. "
            f"Received: {text!r}"
        )
    return shape


def parse(argv):
    """`argv` as an `argparse.Namespace`; raises `UsageError`."""
    args = parser().parse_args(argv)
    flags = {"--input-shape": args.input_shape, "--order": args.order}
    given = [flag for flag, value in flags.items() if value is not None]
    if args.target is None and given:
        raise UsageError(
            f"{given[0]} needs a TARGET (module:Attribute), a layer"
        )
    return args


def _import(target):
    module_name, colon, attribute = target.partition(":")
    if not colon or not module_name or not attribute:
        raise UsageError(
            f"expected TARGET as module:Attribute, e.g. my_layers:MyLayer. "
            f"Received: {target!r}"
        )
    # `python -m` puts the current directory first on sys.path, but not
    # under -P or PYTHONSAFEPATH; either way, the user's module is there.
    if os.getcwd() not in map(os.path.abspath, sys.path):
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        parts = module_name.split(".")
        packages = {".".join(parts[: i + 1]) for i in range(len(parts))}
        if error.name not in packages:  # An import inside the module.
            raise UsageError(_import_failed(module_name, error)) from error
        raise UsageError(
            f"no module named {module_name!r} in {os.getcwd()} or on "
            "sys.path: run the command from the folder that holds "
            f"{module_name.replace('.', '/')}.py"
        ) from error
    except Exception as error:
        raise UsageError(_import_failed(module_name, error)) from error
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise UsageError(
            f"module {module_name!r} ({module.__file__}) has no attribute "
            f"{attribute!r}"
        ) from None


def _one_line(error):
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"


def _import_failed(module_name, error):
    return f"importing {module_name!r} failed: {_one_line(error)}"


def cases(args):
    """The `mylayers.Example`s that `args.target` names."""
    obj = _import(args.target)
    if isinstance(obj, type) and issubclass(obj, keras.layers.Layer):
        if args.input_shape is None and "examples" in vars(obj):
            # A layer that declares its examples, as mylayers' layers do.
            return _checked_cases(f"{args.target}.examples", obj.examples)
        try:
            obj = obj()
        except Exception as error:
            raise UsageError(
                f"{args.target} could not be made with no arguments "
                f"({_one_line(error)}); name an instance "
                "(layer = MyLayer(8) in the module) or a function that "
                "returns cases"
            ) from error
    if isinstance(obj, keras.layers.Layer):
        if args.input_shape is None:
            raise UsageError(
                f"{args.target} is a layer: give its input shape, e.g. "
                "--input-shape 4,8"
            )
        return [Example(obj, args.input_shape, order=args.order or 1)]
    if isinstance(obj, type) or not callable(obj):
        raise UsageError(
            f"{args.target} is not a layer ({type(obj).__name__}): expected "
            "a keras.layers.Layer subclass or instance, or a function that "
            "returns cases"
        )
    if args.input_shape is not None or args.order is not None:
        raise UsageError(
            f"{args.target} gives cases, with their own inputs and orders: "
            "drop --input-shape and --order"
        )
    return _checked_cases(args.target, obj)


def _checked_cases(target, make):
    """What `make()` returns, each case as an `Example`."""
    try:
        result = list(make())
    except Exception as error:
        raise UsageError(f"{target}() failed: {_one_line(error)}") from error
    return [_as_example(target, case) for case in result]


def _as_example(target, case):
    if isinstance(case, Example):
        layer, order = case.layer, case.order
    elif isinstance(case, tuple) and len(case) == 3:
        layer, inputs, order = case
        sample = inputs if isinstance(inputs, Sample) else Sample(inputs)
        case = Example(layer, sample.inputs, sample.mask, order)
    else:
        layer = order = None
    if not isinstance(layer, keras.layers.Layer) or order not in (1, 2):
        raise UsageError(
            f"{target}() returned {case!r:.80}: expected mylayers.Example"
            "(layer, inputs) or (layer, inputs, order) tuples, with a "
            "keras.layers.Layer and order 1 or 2"
        )
    return case
