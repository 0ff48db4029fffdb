"""What `CustomModel.train_step` adds to Keras's step, and the state it keeps.

`StepState` holds `CustomModel.compile`'s step options and the
`tf.Variable`s the step writes (gradient norms, non-finite counters). It is
a plain object, so neither Keras nor `tf.train.Checkpoint` tracks those
variables: the model's weights and `.keras` files stay as they were, and a
trainer checkpoints the counters explicitly.
"""

import keras
import tensorflow as tf

from models import step_parts
from mylayers import checks

MISSING_GRADIENTS = ("raise", "warn")


def _check_int(name, value, minimum):
    checks.require(
        value is None or checks.is_int(value, minimum),
        "CustomModel.compile",
        name,
        value,
        f"None or an integer >= {minimum}",
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


def non_finite_message(limit):
    return (
        f"{limit} consecutive training steps had a NaN or Inf loss or "
        f"gradients (max_consecutive_non_finite={limit}); none of them "
        "changed the weights. Lower the learning rate, check the data for "
        "NaN/Inf, or clip gradients (global_clipnorm)."
    )


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
    _check_int("gradient_accumulation_steps", gradient_accumulation_steps, 2)
    _check_int("max_consecutive_non_finite", max_consecutive_non_finite, 1)
    if missing_gradients not in MISSING_GRADIENTS:
        raise ValueError(
            "CustomModel.compile expected 'raise' or 'warn' for "
            "`missing_gradients`. Received: missing_gradients="
            f"{missing_gradients!r}"
        )


def set_accumulation(optimizer, steps):
    """Sets Keras's `gradient_accumulation_steps` on `optimizer`.

    Args:
        optimizer: The compiled optimizer.
        steps: None (nothing to set) or an integer >= 2, as `StepState`
            checked.

    Raises:
        ValueError: Under more than one replica, or for an optimizer that is
            already built or accumulates over another count.
    """
    if steps is None:
        return
    # Keras's LossScaleOptimizer accumulates in its inner optimizer.
    optimizer = getattr(optimizer, "inner_optimizer", optimizer)
    if step_parts.replicas() > 1:
        raise ValueError(
            "CustomModel.compile supports `gradient_accumulation_steps` "
            "on one replica only: Keras's optimizer accumulation fails "
            "under MirroredStrategy (its update, inside a tf.cond, needs "
            "merge_call). Received: gradient_accumulation_steps="
            f"{steps} with {step_parts.replicas()} replicas"
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


class StepState:
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
    def non_finite_counters(self):
        """The guard's counters, or `()` when the guard is off."""
        if not self.max_consecutive_non_finite:
            return ()
        return (
            self.variables["non_finite_steps"],
            self.variables["consecutive_non_finite"],
        )

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

    def clip_and_measure(self, optimizer, gradients, variables, mean=False):
        """Global-norm clipping and gradient norms, as configured.

        `mean`: whether `gradients` are already the mean over replicas
        (`step_parts.mean_over_replicas`) rather than each replica's part.
        Returns the gradients to apply and the logs to add.
        """
        if not (
            self.global_clipnorm or self.log_grad_norm or self.layer_grad_norms
        ):
            return gradients, {}
        # The tape's loss was multiplied by this (mixed_float16), and each
        # replica holds a partial gradient: norms are of the unscaled sum.
        scale = optimizer.scale_loss(tf.constant(1.0))
        if mean:  # The sum is the mean times the replica count.
            scale = scale / step_parts.replicas()
            summed = gradients
        else:
            summed = step_parts.all_reduced(list(gradients))
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
        return gradients, logs

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

    def guarded_apply(self, optimizer, loss, gradients, apply):
        """`apply(gradients)` unless the step is non-finite; counts it.

        Returns whether the step was finite, and the logs to add.
        """
        # A LossScaleOptimizer skips gradient overflow itself and lowers its
        # scale; guarding it here would stop the scale from ever falling.
        scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
        finite = step_parts.is_finite(loss, () if scaled else gradients)
        step_parts.apply_if(finite, apply, list(gradients))
        bad = tf.cast(tf.logical_not(finite), tf.int64)
        total = self.variables["non_finite_steps"]
        run = self.variables["consecutive_non_finite"]
        new_run = (run + bad) * bad
        total.assign_add(bad)
        run.assign(new_run)
        limit = self.max_consecutive_non_finite
        tf.debugging.assert_less(
            new_run, tf.constant(limit, tf.int64), non_finite_message(limit)
        )
        return finite, {"non_finite_steps": total.read_value()}

    def check_non_finite(self):
        """Raises `FloatingPointError` once the limit is reached."""
        limit = self.max_consecutive_non_finite
        if (
            limit
            and int(self.variables["consecutive_non_finite"].read_value())
            >= limit
        ):
            raise FloatingPointError(non_finite_message(limit))
