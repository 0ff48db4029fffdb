"""What `CustomModel.train_step` adds to Keras's step, each opt-in.

`CustomModel.compile` takes the options (`global_clipnorm`,
`gradient_accumulation_steps`, `max_consecutive_non_finite`,
`log_grad_norm`, `layer_grad_norms`, `missing_gradients`) and keeps them
in a `StepExtras`, with the `tf.Variable`s the step writes (gradient
norms, the non-finite counters). With every option at its default the
step is Keras's own.

To copy `CustomModel.train_step` into a model of your own, copy this file
with it: it needs nothing else of the package but `mylayers.checks`. Every
function works eagerly, inside `tf.function`, under XLA and in the replica
context of a `tf.distribute` strategy (`strategy.run`).

`StepExtras` is a plain object, so neither Keras nor `tf.train.Checkpoint`
tracks its variables: the model's weights and `.keras` files stay as they
were, and a trainer checkpoints the counters explicitly.
"""

import keras
import tensorflow as tf
from absl import logging

from mylayers import checks

MISSING_GRADIENTS = ("raise", "warn")


def replicas():
    """Replicas in sync: Keras losses divide by it under `tf.distribute`."""
    return tf.distribute.get_strategy().num_replicas_in_sync


def check_options(
    global_clipnorm,
    gradient_accumulation_steps,
    max_consecutive_non_finite,
    missing_gradients,
):
    """Raises `ValueError` for an invalid `CustomModel.compile` option."""
    checks.require(
        global_clipnorm is None
        or checks.is_number(global_clipnorm, 0, strict=True),
        "CustomModel.compile",
        "global_clipnorm",
        global_clipnorm,
        "None or a positive number",
    )
    for name, value, minimum in [
        ("gradient_accumulation_steps", gradient_accumulation_steps, 2),
        ("max_consecutive_non_finite", max_consecutive_non_finite, 1),
    ]:
        checks.require(
            value is None or checks.is_int(value, minimum),
            "CustomModel.compile",
            name,
            value,
            f"None or an integer >= {minimum}",
        )
    if missing_gradients not in MISSING_GRADIENTS:
        raise ValueError(
            "CustomModel.compile expected 'raise' or 'warn' for "
            "`missing_gradients`. Received: missing_gradients="
            f"{missing_gradients!r}"
        )


def set_accumulation(optimizer, steps):
    """Sets Keras's `gradient_accumulation_steps` on `optimizer`: it then
    applies the mean gradient of `steps` calls once every `steps` calls.

    Raises:
        ValueError: Under more than one replica, or for an optimizer that is
            already built or accumulates over another count.
    """
    if steps is None:
        return
    # Keras's LossScaleOptimizer accumulates in its inner optimizer.
    optimizer = getattr(optimizer, "inner_optimizer", optimizer)
    if replicas() > 1:
        raise ValueError(
            "CustomModel.compile supports `gradient_accumulation_steps` "
            "on one replica only: Keras's optimizer accumulation fails "
            "under MirroredStrategy (its update, inside a tf.cond, needs "
            "merge_call). Received: gradient_accumulation_steps="
            f"{steps} with {replicas()} replicas"
        )
    current = optimizer.gradient_accumulation_steps
    if current == steps:
        return
    if current or optimizer.built:
        raise ValueError(
            "CustomModel.compile cannot set `gradient_accumulation_steps` "
            f"on an optimizer that is already built or accumulates "
            f"({current}). Received: gradient_accumulation_steps={steps}"
        )
    optimizer.gradient_accumulation_steps = steps


def check_missing_gradients(gradients, variables, mode):
    """Raises or warns, at trace time, for variables the loss does not reach.

    Keras's optimizer only warns and trains the rest, so an upstream layer can
    silently stop learning; `mode="raise"` makes that an error.
    """
    missing = [v.path for g, v in zip(gradients, variables) if g is None]
    if not missing:
        return
    message = (
        f"No gradient reaches the trainable variables {missing}: the loss "
        "does not depend on them, so they would never change. Use them in "
        "`call`, make them non-trainable, or pass "
        "`missing_gradients='warn'` to `compile` to train the rest."
    )
    if mode == "raise" or len(missing) == len(variables):
        raise ValueError(message)
    logging.warning(message)


def all_reduced(gradients):
    """The gradients summed over replicas: what the optimizer will apply.

    Each replica holds a partial gradient (Keras losses divide by the replica
    count), so norms must be taken after the sum. Identity on one replica.
    """
    if replicas() == 1:
        return list(gradients)
    # One all-reduce of every gradient concatenated: a batch all-reduce of
    # the list beside the optimizer's own deadlocked two-worker
    # MultiWorkerMirroredStrategy runs (seen: thousands of threads spawned,
    # no step finished).
    context = tf.distribute.get_replica_context()
    flat = tf.concat([tf.reshape(g, [-1]) for g in gradients], axis=0)
    flat = context.all_reduce(tf.distribute.ReduceOp.SUM, flat)
    pieces = tf.split(flat, [tf.size(g) for g in gradients])
    return [tf.reshape(p, tf.shape(g)) for p, g in zip(pieces, gradients)]


def needs_agreed_gradients(optimizer):
    """Whether `optimizer` must see the same gradients on every replica.

    A `LossScaleOptimizer` decides on each replica, from the gradients it is
    given, whether to skip the step for overflow. Given each replica's own
    partial gradient, one replica's overflow leaves the others applying the
    update, summed with its Inf: the weights become Inf (seen with Keras's
    own step under `MirroredStrategy`).
    """
    return replicas() > 1 and isinstance(
        optimizer, keras.optimizers.LossScaleOptimizer
    )


def is_finite(loss, gradients):
    """Whether the loss and every gradient are finite, on every replica.

    All replicas must take the same branch, so a bad value on any one of
    them makes the step bad on all of them.
    """
    parts = [tf.reduce_all(tf.math.is_finite(loss))]
    parts += [tf.reduce_all(tf.math.is_finite(g)) for g in gradients]
    finite = tf.reduce_all(tf.stack(parts))
    if replicas() == 1:
        return finite
    bad = tf.cast(tf.logical_not(finite), tf.float32)
    context = tf.distribute.get_replica_context()
    return tf.equal(context.all_reduce(tf.distribute.ReduceOp.SUM, bad), 0.0)


def apply_if(condition, apply_fn, gradients):
    """Runs `apply_fn(gradients)` (an optimizer update) only if `condition`.

    Inside a strategy that needs `merge_call` (MirroredStrategy), the
    optimizer's own `merge_call` may not run inside a `tf.cond` in replica
    context, so the branch is taken in cross-replica context and the update
    re-entered per replica, as Keras's `LossScaleOptimizer` does. The
    gradients travel through `merge_call` so each replica applies its own.
    `condition` must be equal on every replica.
    """

    def skip():
        return tf.constant(False)

    if not tf.distribute.has_strategy():

        def apply():
            apply_fn(gradients)
            return tf.constant(True)

        tf.cond(condition, apply, skip)
        return

    def cross_replica(strategy, condition, gradients):
        condition = strategy.experimental_local_results(condition)[0]

        def apply_per_replica():
            strategy.extended.call_for_each_replica(apply_fn, args=(gradients,))
            return tf.constant(True)

        tf.cond(condition, apply_per_replica, skip)

    tf.distribute.get_replica_context().merge_call(
        cross_replica, args=(condition, gradients)
    )


def non_finite_message(limit):
    return (
        f"{limit} consecutive training steps had a NaN or Inf loss or "
        f"gradients (max_consecutive_non_finite={limit}); none of them "
        "changed the weights. Lower the learning rate, check the data for "
        "NaN/Inf, or clip gradients (global_clipnorm)."
    )


def _layer_path(variable):
    return variable.path.rpartition("/")[0] or variable.path


def _variable(name, value, dtype):
    # One value for all replicas, written identically by each of them.
    return tf.Variable(
        value,
        dtype=dtype,
        trainable=False,
        name=name.replace("/", "_"),
        aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
    )


class StepExtras:
    """The step options of `CustomModel.compile`, and the step's variables.

    Args:
        global_clipnorm, gradient_accumulation_steps,
        max_consecutive_non_finite, log_grad_norm, layer_grad_norms,
        missing_gradients: As in `CustomModel.compile`; checked by
            `check_options`. Accumulation itself is the optimizer's
            (`set_accumulation`); it is kept here for the compile config.
        trainable_variables: The model's, for the per-layer norms (empty for
            a model not yet built: those are then made on the first trace).

    Attributes:
        variables: Name -> `tf.Variable`, as `CustomModel.step_state`.
    """

    def __init__(
        self,
        global_clipnorm=None,
        gradient_accumulation_steps=None,
        max_consecutive_non_finite=None,
        log_grad_norm=False,
        layer_grad_norms=False,
        missing_gradients="raise",
        trainable_variables=(),
    ):
        check_options(
            global_clipnorm,
            gradient_accumulation_steps,
            max_consecutive_non_finite,
            missing_gradients,
        )
        self.global_clipnorm = global_clipnorm
        self.gradient_accumulation_steps = gradient_accumulation_steps
        self.max_consecutive_non_finite = max_consecutive_non_finite
        self.log_grad_norm = log_grad_norm
        self.layer_grad_norms = layer_grad_norms
        self.missing_gradients = missing_gradients
        self.variables = {}
        if log_grad_norm or layer_grad_norms:
            self.variables["grad_norm"] = _variable("grad_norm", 0.0, "float32")
        if layer_grad_norms:
            for layer in dict.fromkeys(map(_layer_path, trainable_variables)):
                name = f"grad_norm/{layer}"
                self.variables[name] = _variable(name, 0.0, "float32")
        if max_consecutive_non_finite:
            for name in ("non_finite_steps", "consecutive_non_finite"):
                self.variables[name] = _variable(name, 0, "int64")

    @property
    def config(self):
        """The options, as `compile` keyword arguments."""
        return {
            "global_clipnorm": self.global_clipnorm,
            "gradient_accumulation_steps": self.gradient_accumulation_steps,
            "max_consecutive_non_finite": self.max_consecutive_non_finite,
            "log_grad_norm": self.log_grad_norm,
            "layer_grad_norms": self.layer_grad_norms,
            "missing_gradients": self.missing_gradients,
        }

    @property
    def non_finite_counters(self):
        """The guard's counters, or `()` when the guard is off."""
        if not self.max_consecutive_non_finite:
            return ()
        return (
            self.variables["non_finite_steps"],
            self.variables["consecutive_non_finite"],
        )

    def prepare(self, optimizer, gradients, variables):
        """The gradients to apply: missing ones checked, then agreed across
        replicas, clipped and measured as `compile` asked.

        Returns `(gradients, variables, logs)`, without the variables that
        got no gradient (when `missing_gradients="warn"` lets them pass).
        """
        check_missing_gradients(gradients, variables, self.missing_gradients)
        pairs = [(g, v) for g, v in zip(gradients, variables) if g is not None]
        gradients, variables = [g for g, _ in pairs], [v for _, v in pairs]
        # Under a strategy, loss scaling must skip or apply on every replica
        # alike: it then decides from the gradients' mean over replicas,
        # which the optimizer's own sum over replicas turns back into the
        # all-reduced gradients.
        mean = needs_agreed_gradients(optimizer)
        if mean:
            gradients = [g / replicas() for g in all_reduced(gradients)]
        if not (
            self.global_clipnorm or self.log_grad_norm or self.layer_grad_norms
        ):
            return gradients, variables, {}
        # The tape's loss was multiplied by this (mixed_float16), and each
        # replica holds a partial gradient: norms are of the unscaled sum.
        scale = optimizer.scale_loss(tf.constant(1.0))
        if mean:  # The sum is the mean times the replica count.
            scale = scale / replicas()
            summed = gradients
        else:
            summed = all_reduced(gradients)
        squares = [
            tf.reduce_sum(tf.square(tf.cast(g, tf.float32))) for g in summed
        ]
        norm = tf.sqrt(tf.add_n(squares)) / scale
        logs = {"grad_norm": norm} if self.log_grad_norm else {}
        if "grad_norm" in self.variables:
            self.variables["grad_norm"].assign(norm)
        if self.layer_grad_norms:
            self._assign_layer_norms(squares, variables, scale)
        if self.global_clipnorm:
            clip = self.global_clipnorm
            # Keras's formula: a no-op for a finite norm below `clip`, NaN
            # (so the step is caught as non-finite) for a non-finite norm.
            factor = clip * tf.minimum(1.0 / norm, 1.0 / clip) + (norm - norm)
            gradients = [g * tf.cast(factor, g.dtype) for g in gradients]
        return gradients, variables, logs

    def _assign_layer_norms(self, squares, variables, scale):
        per_layer = {}
        for square, variable in zip(squares, variables):
            per_layer.setdefault(_layer_path(variable), []).append(square)
        for layer, layer_squares in per_layer.items():
            name = f"grad_norm/{layer}"
            if name not in self.variables:
                # Made here only for a model built after `compile`: on the
                # first trace, lifted out of the function graph.
                with tf.init_scope():
                    self.variables[name] = _variable(name, 0.0, "float32")
            self.variables[name].assign(
                tf.sqrt(tf.add_n(layer_squares)) / scale
            )

    def apply(self, optimizer, loss, gradients, variables, logs):
        """`optimizer.apply(gradients, variables)`, guarded when
        `max_consecutive_non_finite` is set: a step whose loss or gradients
        are not finite changes no weight and no optimizer state, and is
        counted (`non_finite_steps` is added to `logs`).

        The guard stops for good at the limit: once that many steps in a
        row were not finite, no later step applies or counts, and
        `check_non_finite`, the one place that reports it, raises. Loops
        call it after each call of the step function (`fit` through
        `CustomModel.make_train_function`, the trainer after each loop
        call); a step in a loop of your own calls it too.

        Returns:
            None without the guard (the step applied); with it, a boolean
            tensor, whether the step applied.
        """

        def apply_fn(gradients):
            optimizer.apply(gradients, variables)

        if not self.max_consecutive_non_finite:
            apply_fn(gradients)
            return None
        # A LossScaleOptimizer skips gradient overflow itself and lowers its
        # scale; guarding it here would stop the scale from ever falling.
        scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
        finite = is_finite(loss, () if scaled else gradients)
        total, run = self.non_finite_counters
        going = run < self.max_consecutive_non_finite
        applied = tf.logical_and(finite, going)
        apply_if(applied, apply_fn, gradients)
        bad = tf.cast(tf.logical_and(tf.logical_not(finite), going), tf.int64)
        total.assign_add(bad)
        run.assign(tf.where(going, (run + bad) * bad, run))
        logs["non_finite_steps"] = total.read_value()
        return applied

    def check_non_finite(self):
        """Raises `FloatingPointError` once `max_consecutive_non_finite`
        steps in a row were not finite."""
        limit = self.max_consecutive_non_finite
        if not limit:
            return
        if int(self.variables["consecutive_non_finite"].read_value()) >= limit:
            raise FloatingPointError(non_finite_message(limit))


def update_metrics(model, loss, x, y, y_pred, sample_weight):
    """Feeds `model.loss_tracker` (a `keras.metrics.Mean` named "loss",
    which the model's `metrics` lists first) and the compiled metrics;
    returns their results. Keras feeds its own loss tracker only in its
    own step, so a step of one's own that does not feed one logs
    `loss: 0.0`."""
    # The loss is divided by the replica count under tf.distribute; undo
    # that so the logged loss is the per-example mean, weighted by batch
    # size like Keras's own tracker. On one replica the graph is then op
    # for op Keras's, with no multiplication by 1.
    if replicas() > 1:
        loss = loss * replicas()
    batch_size = tf.shape(tf.nest.flatten(x)[0])[0]
    model.loss_tracker.update_state(loss, sample_weight=batch_size)
    return model.compute_metrics(x, y, y_pred, sample_weight)


def metric_results(model):
    """`model.get_metrics_result()` without the metrics not yet built:
    what a skipped step returns. Compile metrics are built by their first
    update, which an eager run whose first step is skipped has not made
    yet."""
    results = {}
    for metric in model.metrics:
        if not getattr(metric, "built", True):
            continue
        result = metric.result()
        if isinstance(result, dict):
            results.update(result)
        else:
            results[metric.name] = result
    return results


def checked_after_each_call(model, train_function):
    """`train_function` (what `keras.Model.make_train_function` made),
    followed by `model.step_extras.check_non_finite()` after each call when
    the guard is on: `fit` then stops at the guard's limit."""
    if not model.step_extras.max_consecutive_non_finite:
        return train_function

    def checked(iterator):
        logs = train_function(iterator)
        model.step_extras.check_non_finite()
        return logs

    return checked
