"""The numbers behind `mylayers.gradcheck`: finite differences, Jacobians
and Hessian-vector products, compared in every execution mode with the
tolerances of `tolerance.py`."""

import types

import numpy as np
import tensorflow as tf

from mylayers.gradcheck import messages
from mylayers.gradcheck.report import Row, Status
from mylayers.gradcheck.tolerance import NOISE_ULPS, compare, machine_epsilon

# Finite-difference columns evaluated per call of the traced function.
COLUMN_BLOCK = 256


def compile_mode(fn, mode):
    """`fn` as it runs in `mode`: "eager", "function" or "jit"."""
    if mode == "eager":
        return fn
    return tf.function(fn, jit_compile=mode == "jit", reduce_retracing=True)


def _f64(x):
    return tf.cast(x, tf.float64)


def _flat(tensors):
    return tf.concat([tf.reshape(t, [-1]) for t in tensors], axis=0)


def _index(shape, flat):
    return ",".join(map(str, np.unravel_index(flat, shape)))


def _index_namer(shapes, names):
    """Names a flat index into the concatenation of tensors of `shapes`."""
    sizes = [int(np.prod(s)) for s in shapes]
    offsets = np.cumsum([0] + sizes)

    def where(flat):
        k = int(np.searchsorted(offsets, flat, side="right") - 1)
        return f"{names[k]}[{_index(shapes[k], flat - offsets[k])}]"

    return where


class Checker:
    """The numbers behind `gradcheck`, for one target at one point.

    Args:
        t: A `target.Target`: `t.fn(sources)` is the flat output vector.
        tol: The `Tolerance` of the precision `t` computes in.
        num_projections: Random directions per tensor in projection mode,
            and random upstreams for a reference backward.
        seed: Seed of the random upstreams and directions.
    """

    def __init__(self, t, tol, num_projections, seed):
        self.t, self.tol = t, tol
        self.sources = list(t.sources)
        self.names = list(t.names)
        self.n_in = t.n_in
        self.shapes = [tuple(s.shape) for s in self.sources]
        # Modes where a first-order gradient had the wrong shape: their
        # second order has nothing to build on.
        self.wrong_shape_modes = set()
        rng = np.random.default_rng(seed)
        self.y0 = t.fn(self.sources)
        self.n_out = int(self.y0.shape[0])
        out_dtype = self.y0.dtype
        self.v = tf.constant(rng.normal(size=self.n_out), out_dtype)
        self.steps = [
            tol.eps * max(1.0, float(tf.sqrt(tf.reduce_mean(_f64(s) ** 2))))
            for s in self.sources
        ]
        self.directions = [
            [rng.normal(size=shape) for _ in range(num_projections)]
            for shape in self.shapes
        ]
        self.upstreams = [
            tf.constant(3 * rng.normal(size=self.n_out), out_dtype)
            for _ in range(num_projections)
        ]
        self.where = _index_namer(self.shapes, self.names)
        self.noise_unit = NOISE_ULPS * machine_epsilon(tol.dtype)
        sizes = [int(np.prod(shape)) for shape in self.shapes]
        self.offsets = np.cumsum([0] + sizes)
        self.step_of = np.repeat(self.steps, sizes)  # per flat entry
        self.f, self.g = self._forward, self._flat_gradient
        self._base = {}
        self._traced = {}
        self._columns = {}
        self._along = {}
        self._untraceable = None

    @property
    def untraceable(self):
        """Why `tf.function` cannot run the target (a `.numpy()` in call),
        or None. Finite differences then run eagerly, and only the eager
        mode can be checked."""
        self._trace(self.f)
        return self._untraceable

    def _forward(self, ps):
        return self.t.fn(ps)

    def _gradient(self, ps, upstream, unconnected="none"):
        with tf.GradientTape() as tape:
            tape.watch(ps)
            loss = tf.reduce_sum(upstream * self._forward(ps))
        return tape.gradient(loss, ps, unconnected_gradients=unconnected)

    def _flat_gradient(self, ps):
        return _flat(self._gradient(ps, self.v, "zero"))

    def _row(self, k, mode, check):
        return Row(self.t.name, self.names[k], mode, check, self.tol.dtype)

    def _moved(self, delta):
        """Every source `+ delta` and `- delta`, `delta` a flat float64
        vector over all sources, rounded to each source's dtype."""
        plus, minus = [], []
        for k, source in enumerate(self.sources):
            part = delta[self.offsets[k] : self.offsets[k + 1]]
            move = tf.cast(tf.reshape(part, source.shape), source.dtype)
            plus.append(source + move)
            minus.append(source - move)
        return plus, minus

    def _trace(self, fn):
        """`fn` at `sources +- delta`: by column (`column(j)`, or a block
        `columns(js)`), traced once, since full Jacobians take thousands of
        calls, most of the cost; or along a direction (`along(delta)`)."""
        if fn not in self._traced:
            total = int(self.offsets[-1])
            step_of = tf.constant(self.step_of, tf.float64)

            def column(j):
                delta = tf.one_hot(j, total, dtype=tf.float64) * step_of[j]
                plus, minus = self._moved(delta)
                return _f64(fn(plus)), _f64(fn(minus))

            def side(j, sign):
                # One side of `column(j)`: half the graph to trace.
                delta = tf.one_hot(j, total, dtype=tf.float64) * step_of[j]
                return _f64(fn(self._moved(sign * delta)[0]))

            def columns(js):
                return tf.map_fn(
                    column,
                    js,
                    fn_output_signature=(tf.float64, tf.float64),
                    parallel_iterations=1,
                )

            def along(delta):
                plus, minus = self._moved(delta)
                return _f64(fn(plus)), _f64(fn(minus))

            self._base[fn] = _f64(fn(self.sources)).numpy()
            traced = tf.function(side)
            if not self._untraceable:
                try:
                    traced(tf.constant(0), tf.constant(1.0, tf.float64))
                except Exception as error:  # Whatever the target raises.
                    self._untraceable = error
            if self._untraceable:
                self._traced[fn] = types.SimpleNamespace(
                    side=side, columns=None, along=along
                )
                return self._traced[fn]
            self._traced[fn] = types.SimpleNamespace(
                side=traced,
                columns=tf.function(columns, reduce_retracing=True),
                # A few calls per tensor (projections): not worth tracing.
                along=along,
            )
        return self._traced[fn]

    def _steps_taken(self, k, scale=1.0):
        """The moves `up`, `down` each entry of source `k` actually makes
        for a step of `+-scale h`, after rounding to its dtype (elementwise,
        so the same whether one entry moves or all do)."""
        source = self.sources[k]
        h = tf.cast(scale * self.steps[k], source.dtype)
        x = _f64(source)
        up = _f64(source + h) - x
        down = x - _f64(source - h)
        return up.numpy().ravel(), down.numpy().ravel()

    def _noise(self, y_plus, y_minus, y_base, step):
        """Rounding error a difference of these evaluations can carry."""
        size = np.maximum(np.abs(y_plus), np.abs(y_minus))
        typical = np.mean(np.abs(y_base)) if y_base.size else 0.0
        return self.noise_unit * (size + typical) / step

    def _central(self, fn, k, direction, scale=1.0):
        """Central difference of `fn` along `direction` on source `k`, at
        `scale` times the step.

        Returns `(fd, d, noise)`: the difference, the direction `d` it
        measures exactly (`direction` after rounding the moved source to
        its dtype), and the rounding-noise bound of each entry. The same
        in every mode, so computed once.
        """
        key = (fn, k, id(direction), scale)
        if key not in self._along:
            self._along[key] = self._compute_central(fn, k, direction, scale)
        return self._along[key]

    def _compute_central(self, fn, k, direction, scale):
        along = self._trace(fn).along
        h = scale * self.steps[k]
        source = self.sources[k]
        move = tf.cast(h * np.asarray(direction), source.dtype)
        d = (_f64(source + move) - _f64(source - move)).numpy() / (2 * h)
        delta = np.zeros(int(self.offsets[-1]))
        delta[self.offsets[k] : self.offsets[k + 1]] = h * np.ravel(direction)
        y_plus, y_minus = (y.numpy() for y in along(tf.constant(delta)))
        fd = (y_plus - y_minus) / (2 * h)
        noise = self._noise(y_plus, y_minus, self._base[fn], 2 * h)
        return fd, d, noise

    def _central_columns(self, fn, k):
        """Finite-difference Jacobian of `fn` w.r.t. source `k`, by column.

        Returns `(central, left, right, noise)`, each `(n_rows, size_k)`:
        the central difference, the one-sided ones, and the rounding noise
        of the central one. The same in every mode, so computed once.
        """
        if (fn, k) not in self._columns:
            traced = self._trace(fn)
            js = np.arange(self.offsets[k], self.offsets[k + 1])
            if traced.columns and len(js) >= 4 * COLUMN_BLOCK:
                # Blocks of columns per call: for many columns the Python
                # overhead of a call per column outweighs tracing a loop.
                pairs = [
                    traced.columns(tf.constant(js[i : i + COLUMN_BLOCK]))
                    for i in range(0, len(js), COLUMN_BLOCK)
                ]
            else:
                up = tf.constant(1.0, tf.float64)
                pairs = [
                    (traced.side(j, up), traced.side(j, -up))
                    for j in map(tf.constant, js)
                ]
            # Single columns or blocks of them, as (rows, columns).
            n_rows = self._base[fn].size
            y_plus, y_minus = (
                np.concatenate(
                    [np.reshape(p[i].numpy(), (-1, n_rows)) for p in pairs]
                ).T
                for i in (0, 1)
            )
            self._columns[fn, k] = self._differences(fn, k, y_plus, y_minus)
        return self._columns[fn, k]

    def _differences(self, fn, k, y_plus, y_minus, scale=1.0):
        """`(central, left, right, noise)` from `fn` at source `k` moved up
        and down by `scale` times the step, column by column: the central
        and one-sided differences over the moves actually made, and the
        rounding noise of the central one."""
        up, down = self._steps_taken(k, scale)
        base = self._base[fn][:, None]
        return (
            (y_plus - y_minus) / (up + down),
            (base - y_minus) / down,
            (y_plus - base) / up,
            self._noise(y_plus, y_minus, self._base[fn], up + down),
        )

    def _jacobian_namer(self, k, row_name):
        cols = self.shapes[k]
        size = int(np.prod(cols))

        def where(flat):
            i, j = divmod(int(flat), size)
            return f"{row_name(i)} / {self.names[k]}[{_index(cols, j)}]"

        return where

    def _compare_columns(self, row, actual, fn, k, where):
        central, left, right, noise = self._central_columns(fn, k)
        floor = self.tol.floor(central)
        # One-sided differences use half the step: twice the noise.
        one_sided = np.maximum(floor, 2 * noise)
        rescues = [
            ("at a kink", (left, one_sided)),
            ("at a kink", (right, one_sided)),
        ]
        expected = (central, np.maximum(floor, noise))
        failing = compare(row, actual, expected, self.tol.rtol, where, rescues)
        # Where the one-sided differences disagree, the function bends or
        # breaks within the step: look once more, at half the step. Where
        # they agree, the central difference is sound and the failure
        # stands.
        bends = np.abs(left - right) > one_sided + self.tol.rtol * np.abs(
            central
        )
        columns = np.flatnonzero(
            (failing.reshape(central.shape) & bends).any(0)
        )
        if columns.size:
            for label, (value, bound) in self._half_step_columns(
                fn, k, columns
            ):
                rescues.append((label, (value, np.maximum(floor, bound))))
            compare(row, actual, expected, self.tol.rtol, where, rescues)
        return row

    def _half_step_columns(self, fn, k, columns):
        """Differences at half the step, for `columns` of source `k` (NaN
        elsewhere): `(label, (value, noise))` for the central and one-sided
        differences, and for their Richardson extrapolations with the full
        step (`(4 D(h/2) - D(h)) / 3`, `2 D(h/2) - D(h)`), which cancel the
        leading truncation error of a smooth function."""
        side = self._trace(fn).side
        plus, minus = (tf.constant(v, tf.float64) for v in (0.5, -0.5))
        c0, l0, r0, n0 = self._central_columns(fn, k)
        y_plus, y_minus = (np.full_like(c0, np.nan) for _ in "+-")
        for column in columns:
            j = tf.constant(column + self.offsets[k])
            y_plus[:, column] = side(j, plus).numpy()
            y_minus[:, column] = side(j, minus).numpy()
        central, left, right, noise = self._differences(
            fn, k, y_plus, y_minus, 0.5
        )
        one_sided = 4 * noise + 2 * n0
        return [
            ("at a finer step", (central, noise)),
            ("at a finer step", ((4 * central - c0) / 3, (4 * noise + n0) / 3)),
            ("at a kink", (left, 2 * noise)),
            ("at a kink", (right, 2 * noise)),
            ("at a kink", (2 * left - l0, one_sided)),
            ("at a kink", (2 * right - r0, one_sided)),
        ]

    def first_order(self, mode, jacobian):
        """Rows for the first derivative in `mode`."""
        vjp = compile_mode(self._gradient, mode)
        grads = vjp(self.sources, self.v)
        rows = []
        disconnected = set()  # or of the wrong shape: nothing to compare
        for k, grad in enumerate(grads):
            why = None
            if grad is None:
                why = messages.NONE_GRADIENT
            elif tuple(grad.shape) != self.shapes[k]:
                # Broadcasting would hide it from a projection check; the
                # optimizer fails on it much later, far from the cause.
                why = messages.wrong_shape(
                    tuple(grad.shape), self.shapes[k], self.names[k]
                )
                self.wrong_shape_modes.add(mode)
            if why:
                disconnected.add(k)
                row = self._row(k, mode, "order 1")
                row.status, row.detail = Status.FAIL, why
                rows.append(row)
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
            return rows
        for k in checked:
            grad = _f64(grads[k]).numpy().ravel()
            rows.append(self._compare_projections(k, mode, grad))
        return rows

    def _projections(self, k, scale):
        """`v^T J d` by central differences at `scale` times the step, for
        each direction `d` of source `k`, and their rounding noise."""
        v = self.v.numpy().astype(np.float64)
        measured = [
            self._central(self.f, k, u, scale) for u in self.directions[k]
        ]
        expected = np.array([np.dot(v, fd) for fd, _, _ in measured])
        noise = np.array([np.dot(np.abs(v), n) for _, _, n in measured])
        return expected, noise, [d for _, d, _ in measured]

    def _compare_projections(self, k, mode, grad):
        expected, noise, directions = self._projections(k, 1.0)
        actual = [float(np.dot(grad, d.ravel())) for d in directions]
        row = self._row(k, mode, "order 1: v^T J u vs FD")
        bound = np.maximum(self.tol.floor(expected), noise)

        def where(i):
            return f"projection {i}"

        failing = compare(row, actual, (expected, bound), self.tol.rtol, where)
        if failing.any():
            # As for columns: a second look at half the step, extrapolated.
            half, half_noise, _ = self._projections(k, 0.5)
            finer = (4 * half - expected) / 3
            finer_bound = np.maximum(
                self.tol.floor(expected), (4 * half_noise + noise) / 3
            )
            compare(
                row,
                actual,
                (expected, bound),
                self.tol.rtol,
                where,
                [("at half the step", (finer, finer_bound))],
            )
        return row

    def _jacobians(self, mode, ps, targets, fn):
        """`d fn(ps) / d ps[k]` for `k` in `targets`, in `mode`, by one
        backward pass per output: the backward pass training runs, traced
        (and compiled) once with the output's index as an argument.

        The one way for every target: vectorizing with pfor traces for
        seconds, fails on some ops (numpy code) and needs a fallback."""

        n_rows = self.n_out if fn == self._forward else int(self.offsets[-1])

        def backward(tape, y, sources, i):
            return tape.gradient(
                y,
                sources,
                output_gradients=tf.one_hot(i, n_rows, dtype=y.dtype),
                unconnected_gradients="zero",
            )

        if mode == "eager":
            # The passes share one recorded forward pass: eagerly, rerunning
            # it per output costs ~15% of a full check.
            with tf.GradientTape(persistent=True) as tape:
                tape.watch(ps)
                y = fn(ps)
            sources = [ps[k] for k in targets]
            rows = [backward(tape, y, sources, i) for i in range(n_rows)]
        else:

            def row(ps, i):
                with tf.GradientTape() as tape:
                    tape.watch(ps)
                    y = fn(ps)
                return backward(tape, y, [ps[k] for k in targets], i)

            row = compile_mode(row, mode)
            rows = [row(ps, tf.constant(i)) for i in range(n_rows)]
        return [tf.stack([r[j] for r in rows]) for j in range(len(targets))]

    def _first_order_full(self, mode, checked):
        if not checked:
            return []
        jacobians = self._jacobians(mode, self.sources, checked, self._forward)
        rows = []
        for k, jacobian in zip(checked, jacobians):
            actual = tf.reshape(jacobian, (self.n_out, -1))
            where = self._jacobian_namer(k, self.t.output_name)
            rows.append(
                self._compare_columns(
                    self._row(k, mode, "order 1: J vs FD"),
                    actual,
                    self.f,
                    k,
                    where,
                )
            )
        return rows

    def _reference_row(self, mode, vjp, jacobian):
        """Input gradients against the declared reference backward."""
        upstreams = list(self.upstreams)
        if jacobian == "full":
            upstreams += [
                tf.one_hot(i, self.n_out, dtype=self.v.dtype)
                for i in range(self.n_out)
            ]
        actual, expected = [], []
        for u in upstreams:
            xs = self.sources[: self.n_in]
            grads = vjp(self.sources, u)[: self.n_in]
            ref = self.t.reference(xs, u)
            actual.append(_f64(_flat(grads)).numpy())
            expected.append(_f64(_flat(ref)).numpy())
        in_shapes = self.shapes[: self.n_in]
        where_in = _index_namer(in_shapes, self.names[: self.n_in])
        size = sum(int(np.prod(s)) for s in in_shapes)

        def where(flat):
            return f"upstream {flat // size}, {where_in(flat % size)}"

        row = self._row(0, mode, "order 1 vs reference")
        if self.n_in > 1:
            row.tensor = "inputs"
        # Both sides are computed, not differenced: no step noise.
        compare(
            row,
            actual,
            (expected, self.tol.floor(expected)),
            self.tol.rtol,
            where,
        )
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

        hvp_reverse = compile_mode(hvp_reverse, mode)
        hvp_forward = compile_mode(hvp_forward, mode)
        n_total = sum(int(np.prod(s)) for s in self.shapes)
        rows = []
        if jacobian == "full":
            columns = self._jacobians(
                mode,
                self.sources,
                list(range(len(self.sources))),
                self._flat_gradient,
            )
        for k in range(len(self.sources)):
            if jacobian == "full":
                rows.append(
                    self._compare_columns(
                        self._row(k, mode, "order 2: H vs FD"),
                        tf.reshape(columns[k], (n_total, -1)),
                        self.g,
                        k,
                        self._jacobian_namer(k, self.where),
                    )
                )
            reverse, forward, expected, noise = [], [], [], []
            # With the full Hessian compared entry by entry above, the
            # forward-over-reverse route is checked along one random
            # direction: any error of it shows there almost surely.
            directions = self.directions[k]
            if jacobian == "full":
                directions = directions[:1]
            for u in directions:
                fd, d, fd_noise = self._central(self.g, k, u)
                us = [tf.zeros_like(s) for s in self.sources]
                us[k] = tf.cast(d, self.sources[k].dtype)
                if jacobian != "full":
                    reverse.append(hvp_reverse(self.sources, us).numpy())
                forward.append(hvp_forward(self.sources, us).numpy())
                expected.append(fd)
                noise.append(fd_noise)
            where = self._projection_namer()
            expected = np.stack(expected)
            atol = np.maximum(self.tol.floor(expected), np.stack(noise))
            for check, actual in (
                ("order 2: Hu reverse vs FD", reverse),
                ("order 2: Hu forward vs FD", forward),
            ):
                if actual:
                    row = self._row(k, mode, check)
                    compare(
                        row,
                        np.stack(actual),
                        (expected, atol),
                        self.tol.rtol,
                        where,
                    )
                    rows.append(row)
        return rows

    def _projection_namer(self):
        n_total = sum(int(np.prod(s)) for s in self.shapes)

        def where(flat):
            i, j = divmod(int(flat), n_total)
            return f"u{i}: {self.where(j)}"

        return where
