"""The numbers behind `mylayers.gradcheck`: finite differences, Jacobians,
Hessian-vector products, and their comparison."""

import numpy as np
import tensorflow as tf

from mylayers.gradcheck.report import Row


def compile_mode(fn, mode):
    """`fn` as it runs in `mode`: "eager", "function" or "jit"."""
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


def _flat(tensors):
    return tf.concat([tf.reshape(t, [-1]) for t in tensors], axis=0)


class Checker:
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
        vjp = compile_mode(self._gradient, mode)
        grads = vjp(self.sources, self.v)
        rows = []
        disconnected = set()  # or of the wrong shape: nothing to compare
        for k, grad in enumerate(grads):
            status = None
            if grad is None:
                status = "FAIL: None gradient (disconnected)"
            elif tuple(grad.shape) != self.shapes[k]:
                # Broadcasting would hide it from a projection check; the
                # optimizer fails on it much later, far from the cause.
                status = (
                    f"FAIL: gradient of shape {tuple(grad.shape)}, expected "
                    f"{self.shapes[k]} (that of {self.names[k]})"
                )
            if status:
                disconnected.add(k)
                rows.append(
                    Row(
                        self.t.name,
                        self.names[k],
                        mode,
                        "order 1",
                        status=status,
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
                y,
                [ps[k] for k in checked],
                experimental_use_pfor=self.t.supports_jit,
            )

        jacobians = compile_mode(jac, mode)(self.sources)
        n_out = int(np.prod(self.out_shape))
        rows = []
        for k, jacobian in zip(checked, jacobians):
            actual = tf.reshape(jacobian, (n_out, -1))
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

        hvp_reverse = compile_mode(hvp_reverse, mode)
        hvp_forward = compile_mode(hvp_forward, mode)
        n_total = sum(int(np.prod(s)) for s in self.shapes)
        rows = []
        if jacobian == "full":
            columns = compile_mode(hessian, mode)(self.sources)
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
