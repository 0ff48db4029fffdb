"""The numbers behind `mylayers.gradcheck`: finite differences, Jacobians,
Hessian-vector products, and their comparison, with a step and tolerances
scaled to the precision the target computes in."""

import dataclasses
import types

import numpy as np
import tensorflow as tf

from mylayers.gradcheck.report import Row

# Rounding in the two evaluations of a central difference, a few units in
# the last place each through the target's ops, divided by the step: the
# noise floor under which a finite difference says nothing.
NOISE_ULPS = 16

# Finite-difference columns evaluated per call of the traced function.
COLUMN_BLOCK = 256


@dataclasses.dataclass(frozen=True)
class Tolerance:
    """Finite-difference step and tolerances for one precision.

    An entry fails when `|actual - expected| > max(atol, noise) + rtol *
    |expected|`, where `noise` is the rounding error the finite difference
    itself can carry (`NOISE_ULPS` units of `dtype` in the outputs, over
    the step).

    Attributes:
        dtype: The float dtype the target computes in.
        eps: Step, relative to `max(1, rms)` of the perturbed tensor.
        atol: Absolute tolerance.
        rtol: Relative tolerance.
    """

    dtype: str
    eps: float
    atol: float
    rtol: float


# The step balances truncation (~ eps^2) against rounding (~ unit / eps):
# about the cube root of machine epsilon, as a power of two so that steps
# are exact for inputs of magnitude one. float64 keeps the checker's
# historical values; rtol for float32 is jax.test_util's gradient tolerance.
_DEFAULTS = {
    "float64": (1e-6, 1e-6, 1e-5),
    "float32": (2.0**-8, 1e-5, 2e-3),
    "float16": (2.0**-4, 1e-3, 5e-2),
    "bfloat16": (2.0**-3, 1e-2, 1e-1),
}

PRECISIONS = tuple(_DEFAULTS)


def tolerance(dtype, eps=None, atol=None, rtol=None):
    """The `Tolerance` for `dtype`, with any of its values overridden."""
    if dtype not in _DEFAULTS:
        raise ValueError(
            f"gradcheck checks in one of {PRECISIONS}. Received: "
            f"dtype={dtype!r}"
        )
    d_eps, d_atol, d_rtol = _DEFAULTS[dtype]
    return Tolerance(
        dtype,
        d_eps if eps is None else eps,
        d_atol if atol is None else atol,
        d_rtol if rtol is None else rtol,
    )


def machine_epsilon(dtype):
    """Machine epsilon of a float dtype name, bfloat16 included."""
    if dtype == "bfloat16":
        return 2.0**-7
    return float(np.finfo(np.dtype(dtype)).eps)


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


def compare(row, actual, candidates, rtol, where):
    """Fills `row` with how far `actual` is from the first candidate.

    `candidates` are `(expected, atol)` pairs of arrays (or scalars) shaped
    like `actual`: an entry passes when it is within `atol + rtol *
    |expected|` of any of them. The first is the central difference; the
    others (one-sided differences) only rescue entries at a kink, where the
    central difference straddles two slopes. Entries whose first expected
    value is not finite (the target overflowed at a perturbed point) are
    left out and counted in the status.
    """
    actual = np.asarray(actual, np.float64).ravel()
    expected, atol = candidates[0]
    expected = np.asarray(expected, np.float64).ravel()
    checkable = np.isfinite(expected)
    error = np.where(checkable, np.abs(actual - expected), 0.0)

    def excess(candidate):
        value, bound = candidate
        value = np.asarray(value, np.float64).ravel()
        bound = np.asarray(bound, np.float64)
        bound = bound.ravel() if bound.ndim else bound
        with np.errstate(invalid="ignore"):
            return np.abs(actual - value) - (bound + rtol * np.abs(value))

    primary = excess(candidates[0])
    passes = primary <= 0
    rescued = np.zeros_like(passes)
    for candidate in candidates[1:]:
        alternative = excess(candidate) <= 0
        rescued |= alternative & ~passes
        passes |= alternative
    failing = checkable & ~passes
    failing |= checkable & ~np.isfinite(actual)
    # The worst entry: the failing one furthest out of tolerance, or, when
    # all pass, the one furthest from its expected value.
    if failing.any():
        score = np.where(failing, np.nan_to_num(primary, nan=np.inf), -np.inf)
    else:
        score = error
    worst = int(np.argmax(score)) if actual.size else 0
    row.max_abs = float(error.max(initial=0.0))
    row.max_rel = float(
        (error / np.maximum(np.abs(expected), _floor(atol))).max(initial=0.0)
    )
    if actual.size:
        row.worst_index = where(worst)
        row.actual = float(actual[worst])
        row.expected = float(expected[worst])
    notes = []
    if rescued.any():
        notes.append(f"{int(rescued.sum())} at a kink")
    if not checkable.all():
        notes.append(f"{int((~checkable).sum())} not finite in FD, unchecked")
    row.status = "FAIL" if failing.any() else "ok"
    if notes:
        row.status += " (" + "; ".join(notes) + ")"
    return row


def _floor(atol):
    """A positive floor for relative errors, from an absolute tolerance."""
    return np.maximum(np.asarray(atol, np.float64).ravel(), 1e-300)


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
            self._traced[fn] = types.SimpleNamespace(
                column=tf.function(column),
                columns=tf.function(columns, reduce_retracing=True),
                # A few calls per tensor (projections): not worth tracing.
                along=along,
            )
        return self._traced[fn]

    def _steps_taken(self, k):
        """The moves `up`, `down` each entry of source `k` actually makes
        for a step of `+-h`, after rounding to its dtype (elementwise, so
        the same whether one entry moves or all do)."""
        source = self.sources[k]
        h = tf.cast(self.steps[k], source.dtype)
        x = _f64(source)
        up = _f64(source + h) - x
        down = x - _f64(source - h)
        return up.numpy().ravel(), down.numpy().ravel()

    def _noise(self, y_plus, y_minus, y_base, step):
        """Rounding error a difference of these evaluations can carry."""
        size = np.maximum(np.abs(y_plus), np.abs(y_minus))
        typical = np.mean(np.abs(y_base)) if y_base.size else 0.0
        return self.noise_unit * (size + typical) / step

    def _central(self, fn, k, direction):
        """Central difference of `fn` along `direction` on source `k`.

        Returns `(fd, d, noise)`: the difference, the direction `d` it
        measures exactly (`direction` after rounding the moved source to
        its dtype), and the rounding-noise bound of each entry.
        """
        along = self._trace(fn).along
        h = self.steps[k]
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
            if len(js) >= 4 * COLUMN_BLOCK:
                # Blocks of columns per call: for many columns the Python
                # overhead of a call per column outweighs tracing a loop.
                pairs = [
                    traced.columns(tf.constant(js[i : i + COLUMN_BLOCK]))
                    for i in range(0, len(js), COLUMN_BLOCK)
                ]
            else:
                pairs = [traced.column(tf.constant(j)) for j in js]
            # Single columns or blocks of them, as (rows, columns).
            n_rows = self._base[fn].size
            y_plus, y_minus = (
                np.concatenate(
                    [np.reshape(p[i].numpy(), (-1, n_rows)) for p in pairs]
                ).T
                for i in (0, 1)
            )
            up, down = self._steps_taken(k)
            base = self._base[fn][:, None]
            self._columns[fn, k] = (
                (y_plus - y_minus) / (up + down),
                (base - y_minus) / down,
                (y_plus - base) / up,
                self._noise(y_plus, y_minus, self._base[fn], up + down),
            )
        return self._columns[fn, k]

    def _jacobian_namer(self, k, row_name):
        cols = self.shapes[k]
        size = int(np.prod(cols))

        def where(flat):
            i, j = divmod(int(flat), size)
            return f"{row_name(i)} / {self.names[k]}[{_index(cols, j)}]"

        return where

    def _compare_columns(self, row, actual, fn, k, where):
        central, left, right, noise = self._central_columns(fn, k)
        atol = np.maximum(self.tol.atol, noise)
        # One-sided differences use half the step: twice the noise.
        candidates = [
            (central, atol),
            (left, np.maximum(self.tol.atol, 2 * noise)),
            (right, np.maximum(self.tol.atol, 2 * noise)),
        ]
        return compare(row, actual, candidates, self.tol.rtol, where)

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
                row = self._row(k, mode, "order 1")
                row.status = status
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
            actual, expected, noise = [], [], []
            for u in self.directions[k]:
                fd, d, fd_noise = self._central(self.f, k, u)
                v = self.v.numpy().astype(np.float64)
                actual.append(float(np.dot(grad, d.ravel())))
                expected.append(float(np.dot(v, fd)))
                noise.append(float(np.dot(np.abs(v), fd_noise)))
            rows.append(
                compare(
                    self._row(k, mode, "order 1: v^T J u vs FD"),
                    actual,
                    [(expected, np.maximum(self.tol.atol, noise))],
                    self.tol.rtol,
                    lambda i: f"projection {i}",
                )
            )
        return rows

    def _jacobians(self, mode, ps, targets, fn):
        """`d fn(ps) / d ps[k]` for `k` in `targets`, vectorized with pfor
        where the target allows it, else by a loop (numpy code)."""

        def jac(ps, use_pfor):
            with tf.GradientTape(persistent=True) as tape:
                tape.watch(ps)
                y = fn(ps)
                # tape.jacobian wants the output in each source's dtype
                # (mixed precision: float16 inputs, float32 weights).
                ys = {ps[k].dtype: tf.cast(y, ps[k].dtype) for k in targets}
            return [
                tape.jacobian(
                    ys[ps[k].dtype],
                    ps[k],
                    unconnected_gradients="zero",
                    experimental_use_pfor=use_pfor,
                )
                for k in targets
            ]

        # In eager mode a loop of small backward passes beats tracing pfor.
        if self.t.supports_jit and (mode != "eager" or self.n_out > 256):
            try:
                return compile_mode(lambda p: jac(p, True), mode)(ps)
            except Exception:
                if mode == "jit":
                    raise
                # pfor cannot vectorize some ops (numpy code among them);
                # a real error in the target raises again below.
        return compile_mode(lambda p: jac(p, False), mode)(ps)

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
        return compare(
            row, actual, [(expected, self.tol.atol)], self.tol.rtol, where
        )

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
            for u in self.directions[k]:
                fd, d, fd_noise = self._central(self.g, k, u)
                us = [tf.zeros_like(s) for s in self.sources]
                us[k] = tf.cast(d, self.sources[k].dtype)
                if jacobian != "full":
                    reverse.append(hvp_reverse(self.sources, us).numpy())
                forward.append(hvp_forward(self.sources, us).numpy())
                expected.append(fd)
                noise.append(fd_noise)
            where = self._projection_namer()
            atol = np.maximum(self.tol.atol, np.stack(noise))
            for check, actual in (
                ("order 2: Hu reverse vs FD", reverse),
                ("order 2: Hu forward vs FD", forward),
            ):
                if actual:
                    rows.append(
                        compare(
                            self._row(k, mode, check),
                            np.stack(actual),
                            [(np.stack(expected), atol)],
                            self.tol.rtol,
                            where,
                        )
                    )
        return rows

    def _projection_namer(self):
        n_total = sum(int(np.prod(s)) for s in self.shapes)

        def where(flat):
            i, j = divmod(int(flat), n_total)
            return f"u{i}: {self.where(j)}"

        return where
