"""Every sentence `mylayers.gradcheck` writes: row details, notes, the
precision line and `CallError`s. Each says what was found and, where the
user can act, the one change that would help. (The command line's own
argument errors live in `cli.py`.)"""

import re

# --- Causes ---


def one_line(error):
    """`error` as `Type: cause`, on one line, for the report."""
    text = str(error)
    # Keras wraps an error raised in call() in a preamble and puts the
    # cause in bold; show the cause. (The only match on Keras's words in
    # mylayers; its canary: tests/gradcheck_test.py::test_upstream_*.)
    bold = re.search("\x1b\\[1m(.*?)\x1b\\[0m", text, re.S)
    lines = [line.strip() for line in (bold[1] if bold else text).splitlines()]
    message = next((line for line in lines if line), "")
    if len(message) > 160:
        message = message[:157] + "..."
    return f"{type(error).__name__}: {message}"


# --- Row details ---

NONE_GRADIENT = "None gradient (disconnected)"
NO_JIT = "supports_jit=False"
NOT_TWICE = "differentiable_twice=False"
WRONG_SHAPE_FIRST = "a first-order gradient has the wrong shape"


def wrong_shape(shape, expected, name):
    return f"gradient of shape {shape}, expected {expected} (that of {name})"


def untraceable(mode, error):
    """A mode `tf.function` cannot trace the target in: (is it an error,
    detail)."""
    cause = one_line(error)
    if mode == "jit":
        return False, f"tf.function cannot trace it: {cause}"
    # Keras traces call() in fit, evaluate and predict: a real defect.
    return True, (
        f"tf.function cannot trace it ({cause}), and Keras's fit traces "
        "call() too: write call() with TF or keras.ops (numpy code through "
        "mylayers.numpy_op); the eager rows still hold"
    )


def mode_error(mode, check, error):
    """A mode the target could not run in: (is it an error, detail)."""
    cause = one_line(error)
    if mode == "jit":
        # Keras compiles with XLA only where every layer allows it, so this
        # is not a defect of the gradient: say how to declare it.
        return False, (
            f"XLA could not run it: {cause}; declare "
            "self.supports_jit = False in the layer's __init__"
        )
    if check == "order 2":
        return True, (
            f"{cause}; if the layer has no second derivative, declare "
            "self.differentiable_twice = False"
        )
    return True, cause


def non_finite(output, value, dtype):
    return (
        f"{output} = {value} at these inputs, in {dtype}: nothing to "
        "compare; check at inputs where the outputs are finite"
    )


RANDOM_CALLS = (
    "two calls at the same point differ: call() draws random numbers "
    "gradcheck cannot fix; draw them with keras.random and a "
    "keras.random.SeedGenerator made in __init__, or check training=False"
)


def skipped_input(dtype):
    return f"{dtype} input: no gradient; held fixed"


# --- Notes ---

BATCH_OF_ONE = (
    "the inputs have a batch of 1: a weight gradient that takes one "
    "sample, or the mean, instead of the sum over the batch looks right at "
    "batch 1; use 2 or more"
)
RANDOM_HELD = (
    "call() drew random numbers from keras.random; every evaluation used "
    "the same seed state, hence the same numbers"
)


def state_held(changed):
    return (
        f"call() updated non-trainable state ({', '.join(changed)}); each "
        "evaluation started from the state as it was, so the finite "
        "differences were not corrupted, and the layer's state is unchanged"
    )


def added_losses(count):
    return (
        f"{count} added loss(es) (add_loss, regularizers) are checked as "
        "outputs losses[i]"
    )


# --- Precision ---


def float64_advice(error, from_state):
    """The one change that would let a layer run in float64, after
    `error`; `from_state` when the output was read from an assigned
    variable (an `OutputDtypeError` says so), None for other errors."""
    if from_state:
        return (
            "create the layer's weights in float64 (pass dtype='float64' "
            "on to super().__init__()), since assign() keeps a variable's "
            "dtype and the output is read from an assigned variable"
        )
    if from_state is not None:
        return (
            "cast to self.compute_dtype (or inputs.dtype) in call(), not "
            "to a fixed float32"
        )
    # Nearly always a tensor made in a fixed float32 meeting a float64 one.
    return (
        "create the tensors that build() and call() make with "
        "dtype=self.compute_dtype (or cast them to inputs.dtype) instead "
        "of a fixed float32"
    )


def layer_precision(asked, used, own, layer, failure, advice):
    """Why a layer was checked in `used`: the part of the precision line
    after the dtype."""
    if asked is None:
        return f"the layer's own (dtype=None: checked as it is, in {own})"
    if used == asked == own:
        return "as asked, the layer's own"
    if used == asked:
        return (
            f"every layer of '{layer.name}' computed in {asked} for the "
            "check; the layer itself is left as it was "
            f"({layer.dtype_policy.name})"
        )
    why = (
        "the layer's own"
        if used == own
        else f"rather than the layer's own {own}"
    )
    return (
        f"{why}: {asked} failed ({one_line(failure)}); to allow {asked}, "
        f"{advice}"
    )


def function_precision(asked, used, failure):
    if used:
        return "inputs cast to it"
    if asked is None:
        return "dtype=None: the inputs' own"
    return (
        f"the inputs' own: {asked} failed ({one_line(failure)}); to allow "
        f"{asked}, make the function work on {asked} tensors"
    )


def precision_line(precision, dtype, tol):
    """The report's `precision` line: the dtype, why, and what it sees."""
    line = f"{precision}. {tol.describe().capitalize()}"
    if dtype == "float32":
        return line + (
            f"; in float32, errors under about {tol.rtol:.0e} relative go "
            "unseen, while a wrong sign, a 2x scale or a missing batch sum "
            "is caught"
        )
    if dtype != "float64":
        return line + (
            f"; {dtype} is coarse: its finite differences carry rounding "
            "noise of a few percent of the outputs over the step, and an "
            "error smaller than that goes unseen; dtype='float32' checks "
            "finer"
        )
    return line


# --- CallError ---


def could_not_build(name, shapes, error):
    return (
        f"gradcheck could not build '{name}' by calling it on inputs of "
        f"shapes {shapes} ({one_line(error)}); nothing was checked. Pass "
        "inputs and call arguments (mask, training, call_kwargs) that the "
        "layer accepts, or call it once yourself to see the whole traceback."
    )


def could_not_call_layer(name, own, error):
    return (
        f"gradcheck could not call '{name}' in its own dtype {own} "
        f"({one_line(error)}); nothing was checked. Call it once yourself "
        "on these inputs to see the traceback."
    )


def could_not_call_function(name, error):
    return (
        f"gradcheck could not call '{name}' on its inputs "
        f"({one_line(error)}); nothing was checked."
    )


def nothing_to_differentiate(name, what):
    return (
        f"gradcheck found no float {what} '{name}': nothing to differentiate."
    )
