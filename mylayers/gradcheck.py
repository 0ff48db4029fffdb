"""Checks the gradients of layers, models and functions.

`gradcheck(target, inputs)` compares the gradients TensorFlow computes for
`target` (its custom gradients included) with central finite differences, in
float64, in eager mode, in `tf.function` and under XLA. Layers whose
backward pass is meant to differ from the derivative of their forward pass
(straight-through estimators, gradient reversal, clipping) declare a
`reference_backward(inputs, upstream)` method, and their input gradients are
compared with it instead.

Run `python -m mylayers.gradcheck` to check every layer in `mylayers`.
"""

import dataclasses
import sys

import keras
import numpy as np
import tensorflow as tf

MODES = ("eager", "function", "jit")


@dataclasses.dataclass
class Row:
    """One line of the report: how far one gradient is from its reference."""

    target: str
    tensor: str
    mode: str
    check: str
    max_abs: float = float("nan")
    max_rel: float = float("nan")
    worst_index: str = ""
    status: str = "ok"


class GradcheckReport:
    """The figures of a gradient check, one `Row` per tensor, mode and check.

    Attributes:
        rows: The `Row`s, in the order they were checked.
    """

    _HEADER = (
        "target",
        "tensor",
        "mode",
        "check",
        "max abs err",
        "max rel err",
        "worst index",
        "status",
    )

    def __init__(self, rows):
        self.rows = list(rows)

    @property
    def ok(self):
        """Whether no row failed (skipped rows do not fail)."""
        return all(not row.status.startswith("FAIL") for row in self.rows)

    def table(self):
        """The rows as an aligned text table."""
        lines = [self._HEADER] + [
            (
                r.target,
                r.tensor,
                r.mode,
                r.check,
                f"{r.max_abs:.2e}",
                f"{r.max_rel:.2e}",
                r.worst_index,
                r.status,
            )
            for r in self.rows
        ]
        widths = [max(len(line[i]) for line in lines) for i in range(8)]
        return "\n".join(
            "  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip()
            for line in lines
        )

    def __str__(self):
        return self.table()


class GradcheckError(AssertionError):
    """A gradient check failed; the message is the report's table.

    Example:

    >>> def wrong_square(x):
    ...     @tf.custom_gradient
    ...     def f(x):
    ...         return x**2, lambda dy: dy * x  # should be 2 x dy
    ...     return f(x)
    >>> try:
    ...     gradcheck(wrong_square, tf.constant([1.0, 2.0]), modes=["eager"])
    ... except GradcheckError as error:
    ...     print(error.report.rows[0].status)
    FAIL
    """

    def __init__(self, report):
        super().__init__(f"gradient check failed:\n{report.table()}")
        self.report = report


def _layers_of(target):
    """`target` and every layer nested in it."""
    return [target, *target._flatten_layers(include_self=False)]


def _cast_layer(layer, dtype, inputs):
    """A copy of `layer` (or of a Functional model) computing in `dtype`."""

    def clone(inner):
        return type(inner).from_config({**inner.get_config(), "dtype": dtype})

    if not layer.built:
        layer(*[tf.cast(x, layer.compute_dtype) for x in inputs])
    if isinstance(layer, keras.Model):
        try:
            # Without new inputs the copy would cast its inputs to float32.
            copy = keras.models.clone_model(
                layer,
                input_tensors=tf.nest.map_structure(
                    lambda t: keras.Input(batch_shape=t.shape, dtype=dtype),
                    layer.input,
                ),
                clone_function=clone,
            )
        except ValueError as error:
            raise ValueError(
                "gradcheck can only cast Functional and Sequential models to "
                f"{dtype}; build this one in {dtype} and pass dtype=None. "
                f"Received: target={layer.name}"
            ) from error
    else:
        copy = clone(layer)
        copy(*inputs)
    copy.set_weights([np.asarray(w, dtype) for w in layer.get_weights()])
    return copy


@dataclasses.dataclass
class _Target:
    """`target` as a pure function of its inputs and trainable weights."""

    name: str
    fn: object  # fn(inputs, weights) -> output tensor
    weights: list
    weight_names: list
    reference: object
    supports_jit: bool
    differentiable_twice: bool


def _as_target(target, inputs, dtype, reference):
    if not isinstance(target, keras.layers.Layer):
        name = getattr(target, "__name__", type(target).__name__)
        return _Target(
            name, lambda xs, ws: target(*xs), [], [], reference, True, True
        )
    layer = _cast_layer(target, dtype, inputs) if dtype else target
    non_trainable = [v.value for v in layer.non_trainable_variables]

    def fn(xs, ws):
        return layer.stateless_call(list(ws), non_trainable, *xs)[0]

    layers = _layers_of(layer)
    return _Target(
        name=target.name,
        fn=fn,
        weights=[tf.identity(v.value) for v in layer.trainable_variables],
        # The caller's variable names, not the float64 copy's.
        weight_names=[v.path for v in target.trainable_variables],
        reference=reference or getattr(layer, "reference_backward", None),
        supports_jit=all(inner.supports_jit for inner in layers),
        differentiable_twice=all(
            getattr(inner, "differentiable_twice", True) for inner in layers
        ),
    )


def _compile(fn, mode):
    if mode == "eager":
        return fn
    return tf.function(fn, jit_compile=mode == "jit", reduce_retracing=True)


def _compare(target, tensor, mode, check, actual, expected, atol, rtol, where):
    """A `Row` comparing two arrays; `where(flat_index)` names an entry."""
    actual = np.asarray(actual, np.float64).ravel()
    expected = np.asarray(expected, np.float64).ravel()
    error = np.abs(actual - expected)
    excess = error - (atol + rtol * np.abs(expected))
    worst = int(np.argmax(excess)) if error.size else 0
    finite = bool(np.all(np.isfinite(actual)))
    return Row(
        target,
        tensor,
        mode,
        check,
        max_abs=float(error.max(initial=0.0)),
        max_rel=float(
            (error / np.maximum(np.abs(expected), atol)).max(initial=0.0)
        ),
        worst_index=where(worst) if error.size else "",
        status="ok" if finite and excess.max(initial=-1) <= 0 else "FAIL",
    )


def _index_namer(shapes, names):
    """Names a flat index into the concatenation of tensors of `shapes`."""
    sizes = [int(np.prod(s)) for s in shapes]
    offsets = np.cumsum([0] + sizes)

    def where(flat):
        k = int(np.searchsorted(offsets, flat, side="right") - 1)
        index = np.unravel_index(flat - offsets[k], shapes[k])
        return f"{names[k]}[{','.join(map(str, index))}]"

    return where


def gradcheck(
    target,
    inputs,
    *,
    order=1,
    jacobian="full",
    modes=MODES,
    dtype="float64",
    reference=None,
    eps=1e-6,
    atol=1e-6,
    rtol=1e-5,
    num_projections=2,
    seed=0,
):
    """Checks `target`'s gradients w.r.t. its inputs and trainable weights.

    The loss is `L = sum(v * target(inputs))` for a random upstream `v`.

    - Order 1: the gradient w.r.t. every input and trainable weight is
      compared with central finite differences `(f(p + e) - f(p - e)) / 2e`,
      as the full Jacobian (`jacobian="full"`) or as `v^T J u` for random
      `u` (`jacobian="projection"`, for large layers). A `None`
      (disconnected) gradient fails, reported under the variable's name.
    - Inputs of a target with a reference backward (a `reference` argument
      or a `reference_backward(inputs, upstream)` method, as on
      `GradientReversal`) are compared with it instead, for every basis
      upstream (full) and for random upstreams.
    - Order 2 (`order=2`, which also checks order 1): the Hessian of `L`,
      by nested tapes (reverse-over-reverse) and by
      `tf.autodiff.ForwardAccumulator` (forward-over-reverse), against
      finite differences of the first-order gradient. Skipped for targets
      with a layer whose `differentiable_twice` is False.
    - Every check runs in each of `modes`: "eager", "function"
      (`tf.function`) and "jit" (`jit_compile=True`; skipped for targets
      with a layer whose `supports_jit` is False).

    Args:
        target: A `keras.layers.Layer`, a Functional or Sequential
            `keras.Model`, or a function of tensors.
        inputs: A tensor (or array), or a list of them: the target's
            positional inputs.
        order: 1 or 2.
        jacobian: "full" or "projection".
        modes: Execution modes to check, a subset of `MODES`.
        dtype: The dtype to check in: layers and models are copied to it,
            inputs cast. `None` checks the target as it is.
        reference: `reference(inputs, upstream) -> gradient(s)`, the
            intended gradient w.r.t. the inputs; overrides the target's
            `reference_backward`.
        eps: Finite-difference step.
        atol: Absolute tolerance.
        rtol: Relative tolerance; an entry fails when
            `|actual - expected| > atol + rtol * |expected|`.
        num_projections: Random directions per tensor in projection mode,
            and random upstreams for a reference backward.
        seed: Seed of the random upstreams and directions.

    Returns:
        A `GradcheckReport` whose rows hold, per tensor, mode and check, the
        maximum absolute and relative errors and the worst index.

    Raises:
        GradcheckError: When any check fails; its message is the table.
        ValueError: For invalid arguments.

    Example:

    >>> report = gradcheck(lambda x: tf.sin(x), tf.constant([0.5, 1.0]))
    >>> report.ok, [row.mode for row in report.rows]
    (True, ['eager', 'function', 'jit'])
    """
    if order not in (1, 2):
        raise ValueError(f"Expected order 1 or 2. Received: order={order!r}")
    if jacobian not in ("full", "projection"):
        raise ValueError(
            'Expected jacobian="full" or "projection". '
            f"Received: jacobian={jacobian!r}"
        )
    if not set(modes) <= set(MODES) or not modes:
        raise ValueError(
            f"Expected modes to be a subset of {MODES}. Received: "
            f"modes={modes!r}"
        )
    if not isinstance(inputs, (list, tuple)):
        inputs = [inputs]
    inputs = [tf.convert_to_tensor(x) for x in inputs]
    if dtype:
        inputs = [tf.cast(x, dtype) for x in inputs]
    t = _as_target(target, inputs, dtype, reference)
    checker = _Checker(t, inputs, eps, atol, rtol, num_projections, seed)
    rows = []
    for mode in modes:
        if mode == "jit" and not t.supports_jit:
            rows.append(
                Row(
                    t.name,
                    "*",
                    mode,
                    "all",
                    status="skipped (supports_jit=False)",
                )
            )
            continue
        rows += checker.first_order(mode, jacobian)
        if order == 2:
            if t.differentiable_twice:
                rows += checker.second_order(mode, jacobian)
            else:
                rows.append(
                    Row(
                        t.name,
                        "*",
                        mode,
                        "order 2",
                        status=("skipped (differentiable_twice=False)"),
                    )
                )
    report = GradcheckReport(rows)
    if not report.ok:
        raise GradcheckError(report)
    return report


def _flat(tensors):
    return tf.concat([tf.reshape(t, [-1]) for t in tensors], axis=0)


class _Checker:
    """The numbers behind `gradcheck`, for one target and one input."""

    def __init__(self, t, inputs, eps, atol, rtol, num_projections, seed):
        self.t, self.eps, self.atol, self.rtol = t, eps, atol, rtol
        self.n_in = len(inputs)
        self.sources = [*inputs, *t.weights]
        self.names = [
            "inputs" if self.n_in == 1 else f"inputs[{i}]"
            for i in range(self.n_in)
        ] + t.weight_names
        self.shapes = [tuple(s.shape) for s in self.sources]
        rng = np.random.default_rng(seed)
        y = t.fn(inputs, t.weights)
        if y.dtype != inputs[0].dtype:
            raise ValueError(
                f"gradcheck needs '{t.name}' to compute in the dtype of its "
                "inputs: finite differences in a lower precision are noise. "
                f"Received: inputs {inputs[0].dtype.name}, output "
                f"{y.dtype.name}"
            )
        self.out_shape = tuple(y.shape)
        self.v = tf.constant(rng.normal(size=self.out_shape), y.dtype)
        self.directions = [
            [
                tf.constant(rng.normal(size=s.shape), s.dtype)
                for _ in range(num_projections)
            ]
            for s in self.sources
        ]
        self.upstreams = [
            tf.constant(3 * rng.normal(size=self.out_shape), y.dtype)
            for _ in range(num_projections)
        ]
        self.where = _index_namer(self.shapes, self.names)
        # Finite differences run in tf.function: thousands of calls.
        self.f = tf.function(self._forward)
        self.g = tf.function(self._flat_gradient)
        self._columns = {}

    def _forward(self, ps):
        return self.t.fn(ps[: self.n_in], ps[self.n_in :])

    def _gradient(self, ps, upstream, unconnected="none"):
        with tf.GradientTape() as tape:
            tape.watch(ps)
            loss = tf.reduce_sum(upstream * self._forward(ps))
        return tape.gradient(loss, ps, unconnected_gradients=unconnected)

    def _flat_gradient(self, ps):
        return _flat(self._gradient(ps, self.v, "zero"))

    def _row(self, k, mode, check, actual, expected, where=None):
        return _compare(
            self.t.name,
            self.names[k],
            mode,
            check,
            actual,
            expected,
            self.atol,
            self.rtol,
            where or self.where,
        )

    def _central(self, fn, k, direction):
        """`(fn(p + eps d) - fn(p - eps d)) / 2 eps`, `d` on source `k`."""
        plus, minus = list(self.sources), list(self.sources)
        plus[k] = self.sources[k] + self.eps * direction
        minus[k] = self.sources[k] - self.eps * direction
        return (fn(plus) - fn(minus)).numpy().ravel() / (2 * self.eps)

    def _central_columns(self, fn, k):
        """Finite-difference Jacobian of `fn` w.r.t. source `k`, by column.

        The same in every mode, so computed once: it is most of the cost.
        """
        if (fn, k) not in self._columns:
            self._columns[fn, k] = self._compute_central_columns(fn, k)
        return self._columns[fn, k]

    def _compute_central_columns(self, fn, k):
        source = self.sources[k]
        size = int(np.prod(self.shapes[k]))

        @tf.function
        def column(j):
            basis = tf.reshape(
                tf.one_hot(j, size, dtype=source.dtype), source.shape
            )
            plus, minus = list(self.sources), list(self.sources)
            plus[k] = source + self.eps * basis
            minus[k] = source - self.eps * basis
            return tf.reshape(fn(plus) - fn(minus), [-1]) / (2 * self.eps)

        return np.stack(
            [column(tf.constant(j)).numpy() for j in range(size)], 1
        )

    def _jacobian_namer(self, k, rows_name, rows_shape):
        cols = self.shapes[k]

        def where(flat):
            i, j = np.unravel_index(
                flat, (int(np.prod(rows_shape)), int(np.prod(cols)))
            )
            a = np.unravel_index(i, rows_shape)
            b = np.unravel_index(j, cols)
            return (
                f"{rows_name}[{','.join(map(str, a))}] / "
                f"{self.names[k]}[{','.join(map(str, b))}]"
            )

        return where

    def first_order(self, mode, jacobian):
        """Rows for the first derivative in `mode`."""
        vjp = _compile(self._gradient, mode)
        grads = vjp(self.sources, self.v)
        rows = []
        disconnected = set()
        for k, grad in enumerate(grads):
            if grad is None:
                disconnected.add(k)
                rows.append(
                    Row(
                        self.t.name,
                        self.names[k],
                        mode,
                        "order 1",
                        status="FAIL: None gradient (disconnected)",
                    )
                )
        if self.t.reference is not None:
            rows.append(self._reference_row(mode, vjp, jacobian))
        checked = [
            k
            for k in range(len(self.sources))
            if k not in disconnected
            and not (self.t.reference is not None and k < self.n_in)
        ]
        if jacobian == "full":
            rows += self._first_order_full(mode, checked)
        else:
            for k in checked:
                actual = [
                    float(tf.reduce_sum(vjp(self.sources, self.v)[k] * u))
                    for u in self.directions[k]
                ]
                expected = [
                    float(
                        np.dot(
                            self.v.numpy().ravel(), self._central(self.f, k, u)
                        )
                    )
                    for u in self.directions[k]
                ]
                rows.append(
                    self._row(
                        k,
                        mode,
                        "order 1: v^T J u vs FD",
                        actual,
                        expected,
                        lambda i: f"projection {i}",
                    )
                )
        return rows

    def _first_order_full(self, mode, checked):
        if not checked:
            return []

        def jac(ps):
            with tf.GradientTape(persistent=True) as tape:
                tape.watch(ps)
                y = self._forward(ps)
            # pfor vectorizes the Jacobian but cannot vectorize numpy code.
            return tape.jacobian(
                y, ps, experimental_use_pfor=self.t.supports_jit
            )

        jacobians = _compile(jac, mode)(self.sources)
        n_out = int(np.prod(self.out_shape))
        rows = []
        for k in checked:
            actual = tf.reshape(jacobians[k], (n_out, -1))
            expected = self._central_columns(self.f, k)
            where = self._jacobian_namer(k, "y", self.out_shape)
            rows.append(
                self._row(k, mode, "order 1: J vs FD", actual, expected, where)
            )
        return rows

    def _reference_row(self, mode, vjp, jacobian):
        """Input gradients against the declared reference backward."""
        upstreams = list(self.upstreams)
        if jacobian == "full":
            n_out = int(np.prod(self.out_shape))
            upstreams += [
                tf.reshape(
                    tf.one_hot(i, n_out, dtype=self.v.dtype), self.out_shape
                )
                for i in range(n_out)
            ]
        actual, expected = [], []
        for u in upstreams:
            xs = self.sources[: self.n_in]
            grads = vjp(self.sources, u)[: self.n_in]
            ref = self.t.reference(xs[0] if self.n_in == 1 else xs, u)
            ref = [ref] if self.n_in == 1 else list(ref)
            actual.append(_flat(grads).numpy())
            expected.append(_flat(ref).numpy())
        in_shapes = self.shapes[: self.n_in]
        where_in = _index_namer(in_shapes, self.names[: self.n_in])
        size = sum(int(np.prod(s)) for s in in_shapes)

        def where(flat):
            return f"upstream {flat // size}, {where_in(flat % size)}"

        row = self._row(
            0, mode, "order 1 vs reference", actual, expected, where
        )
        if self.n_in > 1:
            row.tensor = "inputs"
        return row

    def second_order(self, mode, jacobian):
        """Rows for the second derivative in `mode`: reverse-over-reverse
        (nested tapes) and forward-over-reverse (`ForwardAccumulator`)."""

        def hvp_reverse(ps, us):
            with tf.GradientTape() as tape:
                tape.watch(ps)
                g = self._flat_gradient(ps)
                projected = tf.reduce_sum(g * _flat(us))
            return _flat(
                tape.gradient(projected, ps, unconnected_gradients="zero")
            )

        def hvp_forward(ps, us):
            with tf.autodiff.ForwardAccumulator(ps, us) as acc:
                g = self._flat_gradient(ps)
            return acc.jvp(g, unconnected_gradients="zero")

        def hessian(ps):
            with tf.GradientTape(persistent=True) as tape:
                tape.watch(ps)
                g = self._flat_gradient(ps)
            return tape.jacobian(
                g,
                ps,
                unconnected_gradients="zero",
                experimental_use_pfor=self.t.supports_jit,
            )

        hvp_reverse = _compile(hvp_reverse, mode)
        hvp_forward = _compile(hvp_forward, mode)
        n_total = sum(int(np.prod(s)) for s in self.shapes)
        rows = []
        if jacobian == "full":
            columns = _compile(hessian, mode)(self.sources)
        for k in range(len(self.sources)):
            zeros = [tf.zeros_like(s) for s in self.sources]
            if jacobian == "full":
                actual = tf.reshape(columns[k], (n_total, -1))
                expected = self._central_columns(self.g, k)
                rows.append(
                    self._row(
                        k,
                        mode,
                        "order 2: H vs FD",
                        actual,
                        expected,
                        self._hessian_namer(k),
                    )
                )
            reverse, forward, expected = [], [], []
            for u in self.directions[k]:
                us = list(zeros)
                us[k] = u
                if jacobian != "full":
                    reverse.append(hvp_reverse(self.sources, us).numpy())
                forward.append(hvp_forward(self.sources, us).numpy())
                expected.append(self._central(self.g, k, u))
            where = self._projection_namer()
            if reverse:
                rows.append(
                    self._row(
                        k,
                        mode,
                        "order 2: Hu reverse vs FD",
                        reverse,
                        expected,
                        where,
                    )
                )
            rows.append(
                self._row(
                    k,
                    mode,
                    "order 2: Hu forward vs FD",
                    forward,
                    expected,
                    where,
                )
            )
        return rows

    def _hessian_namer(self, k):
        size = int(np.prod(self.shapes[k]))

        def where(flat):
            i, j = divmod(flat, size)
            b = np.unravel_index(j, self.shapes[k])
            return f"{self.where(i)} / {self.names[k]}[{','.join(map(str, b))}]"

        return where

    def _projection_namer(self):
        n_total = sum(int(np.prod(s)) for s in self.shapes)

        def where(flat):
            i, j = divmod(flat, n_total)
            return f"u{i}: {self.where(j)}"

        return where


def cli_cases():
    """`(layer, input shape, order)` for each layer in `mylayers`: what
    `python -m mylayers.gradcheck` checks."""
    import mylayers  # Imported here: `mylayers` imports this module.

    return [
        (mylayers.Linear(3, activation="tanh"), (2, 4), 2),
        (mylayers.ManualLinear(3, activation="tanh"), (2, 4), 2),
        (mylayers.RMSNorm(), (2, 4), 2),
        (mylayers.MLPBlock(5), (2, 4), 2),
        (mylayers.StableSoftplus(), (2, 4), 2),
        (mylayers.GradientReversal(0.7), (2, 4), 2),
        (mylayers.StraightThroughQuantize(bits=2), (2, 4), 2),
        (mylayers.StraightThroughQuantize(bits=1), (2, 4), 2),
        (mylayers.ClipGradient(1.5), (2, 4), 2),
        (mylayers.NumpyLinear(3), (2, 4), 2),
    ]


def main():
    """Checks every layer in `mylayers`; prints the table; 0 if all pass."""
    # Setting KERAS_BACKEND here would be too late: `-m mylayers.gradcheck`
    # imports the `mylayers` package, and with it keras, before this runs.
    if keras.backend.backend() != "tensorflow":
        print(
            "mylayers.gradcheck needs the TensorFlow backend: set "
            "KERAS_BACKEND=tensorflow.",
            file=sys.stderr,
        )
        return 2
    rng = np.random.default_rng(0)
    rows = []
    for layer, shape, order in cli_cases():
        # Keep inputs away from the kinks of the quantizer and its clipping.
        x = rng.uniform(0.1, 0.9, size=shape) * rng.choice([-1, 1], shape)
        try:
            rows += gradcheck(layer, x, order=order).rows
        except GradcheckError as error:
            rows += error.report.rows
    report = GradcheckReport(rows)
    print(report.table())
    failed = sum(row.status.startswith("FAIL") for row in rows)
    skipped = sum(row.status.startswith("skipped") for row in rows)
    print(f"\n{len(rows)} checks: {failed} failed, {skipped} skipped.")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
