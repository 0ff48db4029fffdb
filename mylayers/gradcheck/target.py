"""What `gradcheck` differentiates: a layer, a model or a function, as a
pure function of its float inputs and trainable weights, in the precision
the check runs in.

A layer is checked in float64 without copying it: for the duration of the
check every layer in it computes in float64 (its `dtype_policy` is set, and
restored afterwards), and its variables are read from float64 values given
through a `keras.StatelessScope`. Nothing depends on the layer's
constructor or `get_config`, so layers written as the Keras guides write
them (no `**kwargs`, no `get_config`, weights made in `__init__` or
`build`) are checked as they are. The scope also keeps every evaluation
from changing the layer: updates to non-trainable state (a running mean)
and to random seeds are collected, not applied, so each evaluation sees the
same state and draws the same random numbers.
"""

import contextlib
import dataclasses
import functools
import re

import keras
import numpy as np
import tensorflow as tf

from mylayers.gradcheck import messages
from mylayers.gradcheck.tolerance import PRECISIONS


class CallError(ValueError):
    """The target could not be built or called; the message is one line
    that says what to change."""


@dataclasses.dataclass
class Target:
    """A target as `fn(sources) -> flat output vector`.

    Attributes:
        name: The target's name, for the report.
        fn: `fn(sources)`: the float outputs and added losses, flattened
            and concatenated.
        sources: The tensors differentiated: float input leaves, then
            trainable weights.
        names: A name per source.
        n_in: How many sources are inputs.
        output_name: Names a flat output index (`y[0,3]`, `losses[0]`).
        reference: `reference(input_sources, flat_upstream)` or None.
        supports_jit: False when a layer in it cannot run under XLA.
        differentiable_twice: False when a layer in it has no second
            derivative.
        dtype: The float dtype the check runs in.
        precision: One line: the dtype, and why.
        notes: What was held fixed, restored or skipped.
        skipped: `(name, reason)` of inputs that are not differentiated.
        view: Returns the context manager that every use of `fn` runs
            in (for a layer in a float64 view: its dtype policies).
    """

    name: str
    fn: object
    sources: list
    names: list
    n_in: int
    output_name: object
    reference: object
    supports_jit: bool
    differentiable_twice: bool
    dtype: str
    precision: str
    notes: list
    skipped: list
    view: object


def _layers_of(layer):
    """`layer` and every layer nested in it."""
    # Keras has no public recursive listing; its own jit check uses this.
    return [layer, *layer._flatten_layers(include_self=False)]


def _is_float(dtype):
    return tf.dtypes.as_dtype(dtype).is_floating


# The names Keras gives a weight made without `name=`: `variable_10`.
_AUTO_NAME = re.compile(r"variable(_\d+)?")


@functools.cache
def _keras_attributes():
    """The attributes Keras itself sets on every layer, among them its
    lists of all the layer's variables: no user's name for a weight."""
    return frozenset(vars(keras.layers.Layer(name="gradcheck_probe")))


def _held(value, attribute):
    """`(attribute, variable)` for each variable in an attribute's value:
    the variable itself, or in a list or dict (`ws[0]`, `ws['a']`)."""
    if isinstance(value, keras.Variable):
        yield attribute, value
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _held(item, f"{attribute}[{i}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _held(item, f"{attribute}[{key!r}]")


def weight_names(layer, variables):
    """A name per variable of `layer`: its path, or, for a weight made
    without `name=` (which Keras calls `variable_10`), the path of its layer
    and the attribute that holds it (`manual_glu/w`, `manual_glu/ws[0]`).

    A weight given a name keeps its path, as `layer.weights` and the saved
    model show it (`Dense` holds its kernel in `_kernel`). A variable no
    attribute holds keeps its path too.
    """
    held = {}  # id(variable) -> (made by this layer, attribute)
    for inner in _layers_of(layer):
        for attribute, value in vars(inner).items():
            # `_self_*`: TensorFlow's checkpoint bookkeeping.
            if attribute in _keras_attributes() or attribute.startswith(
                "_self_"
            ):
                continue
            for name, v in _held(value, attribute):
                # Rather the layer that made it: `add_weight` puts the
                # layer's name last in the path.
                owner = v.path.split("/")[-2:-1] == [inner.name]
                if id(v) not in held or owner > held[id(v)][0]:
                    held[id(v)] = (owner, name)
    names = []
    for v in variables:
        if id(v) in held and _AUTO_NAME.fullmatch(v.name):
            layer_path = v.path.rpartition("/")[0] or layer.name
            names.append(f"{layer_path}/{held[id(v)][1]}")
        else:
            names.append(v.path)
    return names


def _path_name(root, path):
    return root + "".join(
        f"[{p!r}]" if isinstance(p, str) else f"[{p}]" for p in path
    )


class _OutputDtypeError(TypeError):
    """A layer in a float64 view returned another float dtype.

    Attributes:
        from_state: Whether call() also assigned a float variable: Keras's
            `assign` keeps the variable's own dtype, so an output read back
            from it is in that dtype.
    """

    def __init__(self, message, from_state):
        super().__init__(message)
        self.from_state = from_state


class _Structure:
    """Names the leaves of nested inputs: `inputs[0]['a']`."""

    def __init__(self, structure, root, single):
        paths = keras.tree.flatten_with_path(structure)
        self.paths = [path[1:] if single else path for path, _ in paths]
        self.root = root

    def name(self, i):
        return _path_name(self.root, self.paths[i])


def _prepare_inputs(inputs):
    """`inputs` as positional arguments, converted to tensors."""
    single = not isinstance(inputs, (list, tuple))
    args = [inputs] if single else list(inputs)
    args = keras.tree.map_structure(tf.convert_to_tensor, args)
    return args, _Structure(args, "inputs", single)


def _cast_floats(args, dtype):
    return keras.tree.map_structure(
        lambda x: tf.cast(x, dtype) if _is_float(x.dtype) else x, args
    )


def _flat_outputs(outputs, losses, dtype):
    leaves = [
        tf.reshape(tf.cast(y, dtype), [-1])
        for y in keras.tree.flatten(outputs)
        if _is_float(y.dtype)
    ]
    leaves += [tf.reshape(tf.cast(loss, dtype), [-1]) for loss in losses]
    if not leaves:
        return tf.zeros([0], dtype)
    return tf.concat(leaves, 0)


class _OutputNamer:
    """Names a flat output index: `y[0,3]`, `y['a'][1]`, `losses[0]`."""

    def __init__(self, outputs, n_losses):
        paths = keras.tree.flatten_with_path(outputs)
        single = len(paths) == 1 and paths[0][0] == ()
        self.parts = []
        for path, y in paths:
            if not _is_float(y.dtype):
                continue
            shape = tuple(y.shape)
            name = "y" if single else _path_name("y", path)
            self.parts.append((name, shape, int(np.prod(shape))))
        for i in range(n_losses):
            self.parts.append((f"losses[{i}]", (), 1))

    def __call__(self, flat):
        flat = int(flat)
        for name, shape, size in self.parts:
            if flat < size:
                if not shape:
                    return name
                index = np.unravel_index(flat, shape)
                return f"{name}[{','.join(map(str, index))}]"
            flat -= size
        return f"output {flat}"


@contextlib.contextmanager
def _policies(layers, dtype):
    """Every layer in `layers` computes in `dtype` inside the block, and
    Keras's default float type is `dtype` (what `keras.random.normal` and
    `keras.ops.ones` make without a dtype argument)."""
    saved = [(layer, layer.dtype_policy) for layer in layers]
    floatx = keras.config.floatx()
    try:
        if dtype is not None:
            keras.config.set_floatx(dtype)
            for layer in layers:
                layer.dtype_policy = dtype
        yield
    finally:
        keras.config.set_floatx(floatx)
        for layer, policy in saved:
            layer.dtype_policy = policy


def _functional_runner(model, args):
    """A Functional or Sequential `model` with inputs that keep their dtype.

    Functional models cast their inputs to the dtype of their `keras.Input`s
    (float32): the runner is the same graph of the same layers (shared, not
    copied) on inputs of the dtypes given.
    """
    new_inputs = [
        keras.Input(batch_shape=t.shape, dtype=x.dtype)
        for t, x in zip(model.inputs, keras.tree.flatten(args))
    ]
    try:
        structure = model.input
    except AttributeError:  # A Sequential model that was never called.
        structure = model.inputs[0] if len(new_inputs) == 1 else model.inputs
    return keras.models.clone_model(
        model,
        input_tensors=keras.tree.pack_sequence_as(structure, new_inputs),
        clone_function=lambda layer: layer,
    )


def _is_graph_model(layer):
    return isinstance(layer, keras.Model) and hasattr(layer, "inputs")


class _LayerFunction:
    """A built layer as a pure function of (float inputs, weights)."""

    def __init__(self, layer, args, view, call_kwargs):
        self.layer = layer
        self.trainable = list(layer.trainable_variables)
        ids = {id(v) for v in self.trainable}
        self.fixed = [v for v in layer.variables if id(v) not in ids]
        self.call_kwargs = call_kwargs
        # In a view, weights and state are read as `view`; else as they are.
        self.dtype = view
        self.args = args
        self.float_leaves = [
            i
            for i, x in enumerate(keras.tree.flatten(args))
            if _is_float(x.dtype)
        ]
        self.runner = layer
        if view and _is_graph_model(layer):
            self.runner = _functional_runner(layer, args)
        self.layers = _layers_of(layer)
        if self.runner is not layer:
            self.layers.append(self.runner)
        # Non-trainable state (running means, seeds), as it was at the
        # start: every evaluation starts from it.
        self.fixed_values = [self._read(v) for v in self.fixed]

    def _read(self, v):
        if self.dtype is None or not _is_float(v.dtype):
            return tf.identity(v.value)
        return tf.cast(v.value, self.dtype)

    def weights(self):
        return [self._read(v) for v in self.trainable]

    def input_sources(self):
        leaves = keras.tree.flatten(self.args)
        return [leaves[i] for i in self.float_leaves]

    def call(self, sources, with_state=False):
        leaves = list(keras.tree.flatten(self.args))
        n_in = len(self.float_leaves)
        for i, x in zip(self.float_leaves, sources[:n_in]):
            leaves[i] = x
        args = keras.tree.pack_sequence_as(self.args, leaves)
        scope = keras.StatelessScope(collect_losses=True)
        for v, value in zip(self.trainable, sources[n_in:]):
            scope.add_update((v, value))
        for v, value in zip(self.fixed, self.fixed_values):
            scope.add_update((v, value))
        # Under tf.function a layer named like a private class
        # ("__my_layer") is not a valid root name scope; nested, it is.
        with scope, tf.name_scope("gradcheck"):
            outputs = self.runner(*args, **self.call_kwargs)
            # Read inside the scope: a layer may return a variable it
            # updated (the guide's ComputeSum returns `self.total`).
            outputs = keras.tree.map_structure(tf.convert_to_tensor, outputs)
            losses = list(self.runner.losses)
        if not with_state:
            return outputs, losses
        state = [scope.get_current_value(v) for v in self.fixed]
        return outputs, losses, state


def _changed_state(function, state):
    """Names of non-trainable variables a call changed, and of seeds."""
    changed, seeds = [], []
    names = weight_names(function.layer, function.fixed)
    for v, name, before, after in zip(
        function.fixed, names, function.fixed_values, state
    ):
        if after is None or np.array_equal(np.asarray(before), after):
            continue
        (changed if _is_float(v.dtype) else seeds).append(name)
    return changed, seeds


def _build(layer, args, call_kwargs):
    """Builds `layer` for `args`: symbolically where it can, since an eager
    call would run call() once for real and could change its state."""
    if layer.built:
        return
    args = _cast_floats(args, layer.compute_dtype)
    specs = keras.tree.map_structure(
        lambda x: keras.KerasTensor(x.shape, x.dtype), args
    )
    try:
        layer(*specs, **call_kwargs)
        return
    except Exception:
        pass  # Some layers cannot be traced symbolically; call for real.
    try:
        layer(*args, **call_kwargs)
    except Exception as error:
        shapes = [tuple(x.shape) for x in keras.tree.flatten(args)]
        raise CallError(
            messages.could_not_build(layer.name, shapes, error)
        ) from error


def _probe(function, view):
    """Calls `function`; returns its sources, outputs, losses and the state
    it changed, or raises what went wrong (in a `view` dtype, an output in
    another dtype is wrong too: its finite differences would be noise)."""
    sources = function.input_sources() + function.weights()
    outputs, losses, state = function.call(sources, with_state=True)
    floats = [
        y for y in keras.tree.flatten(outputs) if _is_float(y.dtype)
    ] + losses
    wrong = {y.dtype.name for y in floats if y.dtype.name != view}
    if view and wrong:
        changed, _ = _changed_state(function, state)
        raise _OutputDtypeError(
            f"it returns {sorted(wrong)[0]} from {view} inputs and weights",
            from_state=bool(changed),
        )
    if not floats:
        raise CallError(
            messages.nothing_to_differentiate(
                function.layer.name, "output or added loss in"
            )
        )
    return sources, outputs, losses, state


def _precisions_to_try(dtype, own):
    """`dtype`, then float32 for a half-precision layer (a finer check than
    its own dtype allows), then its own compute dtype."""
    if dtype is None or dtype == own:
        return [own]
    half = own in ("float16", "bfloat16") and dtype != "float32"
    return [dtype, *(["float32"] if half else []), own]


def as_layer_target(
    layer, inputs, dtype, reference, training, mask, call_kwargs
):
    """The `Target` of a Keras layer or model, in `dtype` if it can run
    there, else in its own compute dtype (the report says why)."""
    args, in_structure = _prepare_inputs(inputs)
    kwargs = dict(call_kwargs or {})
    if training is not None:
        kwargs["training"] = training
    if mask is not None:
        kwargs["mask"] = mask
    _build(layer, args, kwargs)
    own = layer.compute_dtype
    failure = None
    for precision in _precisions_to_try(dtype, own):
        view = None if precision == own else precision
        try:
            function = _LayerFunction(
                layer, _cast_floats(args, precision), view, kwargs
            )
            with _policies(function.layers, view):
                sources, outputs, losses, state = _probe(function, view)
            break
        except CallError:
            raise
        except Exception as error:
            if precision == own:
                raise CallError(
                    messages.could_not_call_layer(layer.name, own, error)
                ) from error
            failure = failure or error  # Report why `dtype` failed.
    from_state = getattr(failure, "from_state", None)
    why = messages.layer_precision(
        dtype,
        precision,
        own,
        layer,
        failure,
        messages.float64_advice(failure, from_state),
    )
    notes = []
    changed, seeds = _changed_state(function, state)
    if changed:
        notes.append(messages.state_held(changed))
    if seeds:
        notes.append(messages.RANDOM_HELD)
    namer = _OutputNamer(outputs, len(losses))
    if losses:
        notes.append(messages.added_losses(len(losses)))
    skipped = _skipped_inputs(args, in_structure)
    layers = _layers_of(layer)
    ref = reference or getattr(layer, "reference_backward", None)
    return Target(
        name=layer.name,
        fn=lambda ps: _flat_outputs(*function.call(ps), precision),
        sources=sources,
        names=[in_structure.name(i) for i in function.float_leaves]
        + weight_names(layer, function.trainable),
        n_in=len(function.float_leaves),
        output_name=namer,
        reference=_reference(ref, outputs),
        supports_jit=all(inner.supports_jit for inner in layers),
        differentiable_twice=all(
            getattr(inner, "differentiable_twice", True) for inner in layers
        ),
        dtype=precision,
        precision=f"{precision}, {why}",
        notes=notes,
        skipped=skipped,
        view=lambda: _policies(function.layers, view),
    )


def _skipped_inputs(args, structure):
    skipped = []
    for i, x in enumerate(keras.tree.flatten(args)):
        if not _is_float(x.dtype):
            skipped.append(
                (structure.name(i), messages.skipped_input(x.dtype.name))
            )
    return skipped


def _reference(reference, outputs):
    """`reference(input_sources, flat_upstream)`, calling the user's
    `reference(inputs, upstream)` with their structures."""
    if reference is None:
        return None
    leaves = keras.tree.flatten(outputs)
    if len(leaves) != 1:
        raise ValueError(
            "gradcheck compares a reference backward for targets with one "
            f"output. Received: {len(leaves)} outputs"
        )
    (output,) = leaves

    def call(xs, upstream):
        upstream = tf.reshape(upstream, tf.shape(output))
        x = xs[0] if len(xs) == 1 else list(xs)
        grads = reference(x, upstream)
        return [grads] if len(xs) == 1 else list(grads)

    return call


def as_function_target(fn, inputs, dtype, reference, call_kwargs):
    """The `Target` of a function of tensors, in `dtype` if it runs there,
    else in the dtype of its inputs."""
    args, in_structure = _prepare_inputs(inputs)
    kwargs = dict(call_kwargs or {})
    name = getattr(fn, "__name__", type(fn).__name__)
    attempts = ([dtype] if dtype is not None else []) + [None]
    failure = None
    for precision in attempts:
        cast_args = _cast_floats(args, precision) if precision else args
        leaves = keras.tree.flatten(cast_args)
        float_leaves = [i for i, x in enumerate(leaves) if _is_float(x.dtype)]
        if not float_leaves:
            raise CallError(messages.nothing_to_differentiate(name, "input to"))
        own = max(
            (leaves[i].dtype.name for i in float_leaves),
            key=lambda d: PRECISIONS.index(d) if d in PRECISIONS else -1,
        )
        out_dtype = precision or own

        def call(ps, leaves=leaves, float_leaves=float_leaves):
            leaves = list(leaves)
            for i, x in zip(float_leaves, ps):
                leaves[i] = x
            packed = keras.tree.pack_sequence_as(cast_args, leaves)
            return fn(*packed, **kwargs)

        sources = [leaves[i] for i in float_leaves]
        try:
            outputs = call(sources)
            wrong = {
                y.dtype.name
                for y in keras.tree.flatten(outputs)
                if _is_float(y.dtype) and y.dtype.name != out_dtype
            }
            if wrong and precision:
                raise TypeError(
                    f"it returns {sorted(wrong)[0]} from {precision} inputs"
                )
            break
        except Exception as error:
            if precision is None:
                raise CallError(
                    messages.could_not_call_function(name, error)
                ) from error
            failure = error
    why = messages.function_precision(dtype, precision, failure)
    return Target(
        name=name,
        fn=lambda ps: _flat_outputs(call(ps), [], out_dtype),
        sources=sources,
        names=[in_structure.name(i) for i in float_leaves],
        n_in=len(float_leaves),
        output_name=_OutputNamer(outputs, 0),
        reference=_reference(reference, outputs),
        supports_jit=True,
        differentiable_twice=True,
        dtype=out_dtype,
        precision=f"{out_dtype}, {why}",
        notes=[],
        skipped=_skipped_inputs(args, in_structure),
        view=contextlib.nullcontext,
    )
