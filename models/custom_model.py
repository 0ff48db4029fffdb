"""`CustomModel`: a `keras.Model` whose training step is written out."""

import functools

import keras
import tensorflow as tf

from models import step_parts


def _is_functional_call(args, kwargs):
    """Keras's rule for `Model(inputs, outputs)`-style arguments."""
    return (
        len(args) == 2
        or (len(args) == 1 and "outputs" in kwargs)
        or ("inputs" in kwargs and "outputs" in kwargs)
    )


@functools.cache
def _functional_base():
    """Keras's Functional model class (private, so found through a model)."""
    tensor = keras.Input((1,))
    return type(keras.Model(tensor, tensor))


@functools.cache
def _functional_twin(cls):
    """`cls` with Keras's Functional class mixed in.

    `keras.Model(inputs, outputs)` on a subclass makes it Functional by
    rewriting the `__bases__` of every class up to `keras.Model`, for good:
    after one Functional `CustomModel`, a subclassed one breaks. Building
    Functional instances from this twin instead leaves `cls` untouched.
    """
    twin = type(
        cls.__name__,
        (cls, _functional_base()),
        {"__module__": cls.__module__, "__qualname__": cls.__qualname__},
    )
    # Saved models name the twin as they would name `cls`.
    package, _, name = keras.saving.get_registered_name(cls).rpartition(">")
    if package:
        keras.saving.register_keras_serializable(package, name)(twin)
    return twin


def _batch_size(x):
    return tf.shape(tf.nest.flatten(x)[0])[0]


def _layer_path(variable):
    return variable.path.rpartition("/")[0] or variable.path


def _positive_int_or_none(name, value, minimum=1):
    ok = value is None or (
        isinstance(value, int) and not isinstance(value, bool)
    )
    if not ok or (value is not None and value < minimum):
        raise ValueError(
            f"CustomModel.compile expected None or an integer >= {minimum} "
            f"for `{name}`. Received: {name}={value!r}"
        )


def _non_finite_message(limit):
    return (
        f"{limit} consecutive training steps had a NaN or Inf loss or "
        f"gradients (max_consecutive_non_finite={limit}); none of them "
        "changed the weights. Lower the learning rate, check the data for "
        "NaN/Inf, or clip gradients (global_clipnorm)."
    )


class _StepState:
    """What `train_step` reads and writes besides weights and metrics.

    A plain object, so neither Keras nor `tf.train.Checkpoint` tracks its
    variables: the model's weights and `.keras` files stay as they were, and
    the trainer checkpoints the counters explicitly (`model.step_state`).
    """

    def __init__(self):
        self.global_clipnorm = None
        self.max_consecutive_non_finite = None
        self.log_grad_norm = False
        self.layer_grad_norms = False
        self.missing_gradients = "raise"
        self.variables = {}
        self.compile_config = {}


@keras.saving.register_keras_serializable(package="models")
class CustomModel(keras.Model):
    """A `keras.Model` with `train_step`/`test_step` written with GradientTape.

    Use it as a Functional model, `CustomModel(inputs, outputs)`, or as a base
    class. `fit`, `evaluate` and `predict` work as for `keras.Model`, and the
    trainer in `trainer.py` drives the same `train_step` in its own loop.

    With `compile`'s defaults the update is Keras's built-in step, to float
    rounding (the tests check 20 steps to 1e-6, eagerly, in `tf.function`,
    under XLA and under `MirroredStrategy`). The step is spelled out so it
    can be read and changed; it feeds its own loss tracker (Keras's is fed
    only by Keras's own step, so a bare override logs `loss: 0.0`), and
    `compile` adds what Keras's step lacks: global-norm clipping that is
    correct under distribution, a non-finite guard, gradient norms, and an
    error for variables that get no gradient.

    After `compile`, `model.step_state` maps names to the `tf.Variable`s the
    step writes: `grad_norm`, `grad_norm/<layer path>`, `non_finite_steps`
    and `consecutive_non_finite`, whichever `compile` enabled.

    Example:

    >>> import mylayers
    >>> inputs = keras.Input((4,))
    >>> model = CustomModel(inputs, mylayers.Linear(2, name="out")(inputs))
    >>> model.compile(
    ...     optimizer="sgd",
    ...     loss="mse",
    ...     layer_grad_norms=True,
    ...     max_consecutive_non_finite=3,
    ... )
    >>> sorted(model.step_state)  # doctest: +NORMALIZE_WHITESPACE
    ['consecutive_non_finite', 'grad_norm', 'grad_norm/out',
     'non_finite_steps']
    """

    def __init__(self, *args, **kwargs):
        if _is_functional_call(args, kwargs):
            functional = _functional_base()
            if not isinstance(self, functional):
                self.__class__ = _functional_twin(type(self))
            functional.__init__(self, *args, **kwargs)
        else:
            super().__init__(*args, **kwargs)
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self._step_state = _StepState()

    def compile(
        self,
        *args,
        global_clipnorm=None,
        gradient_accumulation_steps=None,
        max_consecutive_non_finite=None,
        log_grad_norm=False,
        layer_grad_norms=False,
        missing_gradients="raise",
        **kwargs,
    ):
        """Keras's `compile`, plus the training-step options below.

        They are `compile` arguments, not constructor ones, because they
        decide how the model trains, not what it computes: a saved model
        keeps them in its compile config, and a Functional model built from
        inputs and outputs takes them as any subclass does. The defaults give
        Keras's update; only `missing_gradients` changes a default
        behaviour, turning Keras's warning into an error.

        Args:
            *args: `keras.Model.compile` arguments.
            global_clipnorm: If set, gradients are scaled so their global
                norm (over all replicas, after loss-scale unscaling) is at
                most this. Unlike the optimizer's own `global_clipnorm`,
                which clips each replica's partial gradient before the
                all-reduce, it is correct under `tf.distribute`. With
                accumulation it clips each micro-batch's gradient.
            gradient_accumulation_steps: If an integer k >= 2, the optimizer
                applies the mean gradient of k consecutive `train_step`
                calls (micro-batches) once every k calls: Keras's optimizer
                option of that name, set here (its `iterations`, which
                learning-rate schedules read, counts updates, not calls).
                Single-replica only: Keras's accumulation fails under
                MirroredStrategy.
            max_consecutive_non_finite: If set (M >= 1), a step whose loss
                or gradients hold NaN or Inf changes no weight and no
                optimizer state; `non_finite_steps` counts such steps, and
                the step that makes M in a row raises (see
                `check_non_finite`). Skipped steps update no metric. Under
                `mixed_float16`, gradient overflow is left to the
                `LossScaleOptimizer` (which skips it and lowers its scale);
                only a non-finite loss counts.
            log_grad_norm: Adds `grad_norm`, the global norm of the
                unscaled, all-reduced gradients, to the logs.
            layer_grad_norms: Keeps `step_state["grad_norm/<layer path>"]`
                up to date with each layer's gradient norm.
            missing_gradients: `"raise"` (default) or `"warn"`, for
                trainable variables the loss does not reach.
            **kwargs: `keras.Model.compile` keyword arguments.
        """
        if global_clipnorm is not None and not global_clipnorm > 0:
            raise ValueError(
                "CustomModel.compile expected None or a positive number for "
                f"`global_clipnorm`. Received: global_clipnorm="
                f"{global_clipnorm!r}"
            )
        _positive_int_or_none(
            "gradient_accumulation_steps", gradient_accumulation_steps, 2
        )
        _positive_int_or_none(
            "max_consecutive_non_finite", max_consecutive_non_finite
        )
        if missing_gradients not in ("raise", "warn"):
            raise ValueError(
                "CustomModel.compile expected 'raise' or 'warn' for "
                "`missing_gradients`. Received: missing_gradients="
                f"{missing_gradients!r}"
            )
        super().compile(*args, **kwargs)
        if gradient_accumulation_steps:
            self._set_accumulation(gradient_accumulation_steps)
        state = self._step_state
        state.global_clipnorm = global_clipnorm
        state.max_consecutive_non_finite = max_consecutive_non_finite
        state.log_grad_norm = log_grad_norm
        state.layer_grad_norms = layer_grad_norms
        state.missing_gradients = missing_gradients
        state.variables = {}
        if log_grad_norm or layer_grad_norms:
            state.variables["grad_norm"] = self._state_variable(
                "grad_norm", 0.0, tf.float32
            )
        if layer_grad_norms:
            for layer in dict.fromkeys(
                map(_layer_path, self.trainable_variables)
            ):
                name = f"grad_norm/{layer}"
                state.variables[name] = self._state_variable(
                    name, 0.0, tf.float32
                )
        if max_consecutive_non_finite:
            for name in ("non_finite_steps", "consecutive_non_finite"):
                state.variables[name] = self._state_variable(name, 0, tf.int64)
        state.compile_config = dict(
            global_clipnorm=global_clipnorm,
            gradient_accumulation_steps=gradient_accumulation_steps,
            max_consecutive_non_finite=max_consecutive_non_finite,
            log_grad_norm=log_grad_norm,
            layer_grad_norms=layer_grad_norms,
            missing_gradients=missing_gradients,
        )

    def get_compile_config(self):
        config = super().get_compile_config()
        if config:
            config.update(self._step_state.compile_config)
        return config

    def compile_from_config(self, config):
        # Keras skips recompiling a model whose `compile` is overridden
        # unless this is too; ours takes the same dict back.
        self.compile(**keras.saving.deserialize_keras_object(config))
        if self.built:
            self.optimizer.build(self.trainable_variables)

    @property
    def step_state(self):
        """The step's `tf.Variable`s by name (see the class docstring)."""
        return dict(self._step_state.variables)

    @property
    def metrics(self):
        # Our tracker replaces Keras's, which shares its name "loss".
        others = [m for m in super().metrics if m.name != "loss"]
        return [self.loss_tracker, *others]

    def train_step(self, data):
        """Keras's step, with these differences.

        - The loss tracker is ours and is fed after the tape (Keras feeds
          its own, inside the tape); the logged value is the same.
        - Variables the loss does not reach raise (Keras warns), unless
          `compile(missing_gradients="warn")`.
        - What `compile`'s options add: norms and clipping of the unscaled,
          all-reduced gradients, and the non-finite guard around `apply`.
        """
        state = self._step_state
        # Unpack: (x,), (x, y) or (x, y, sample_weight).
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        # Forward pass and loss, recorded by the tape. `scale_loss` multiplies
        # by the loss scale under mixed_float16 (identity otherwise); the
        # optimizer divides it out again in `apply`.
        with tf.GradientTape() as tape:
            y_pred = self(x, training=True)
            loss = self.compute_loss(
                x=x, y=y, y_pred=y_pred, sample_weight=sample_weight
            )
            scaled_loss = self.optimizer.scale_loss(loss)
        # Backward pass: the tape derives every gradient.
        variables = self.trainable_variables
        gradients = tape.gradient(scaled_loss, variables)
        step_parts.check_missing_gradients(
            gradients, variables, state.missing_gradients
        )
        gradients, variables = zip(
            *[(g, v) for g, v in zip(gradients, variables) if g is not None]
        )
        # Norms and clipping, as `compile` asked.
        gradients, logs = self._clip_and_measure(gradients, variables)

        def apply(gradients):
            self.optimizer.apply(gradients, variables)

        def update_metrics():
            return self._update_metrics(loss, x, y, y_pred, sample_weight)

        if state.max_consecutive_non_finite:
            # Apply unless non-finite; a skipped step updates no metric
            # either, or its NaN loss would make the epoch's mean loss NaN.
            finite, guard_logs = self._guarded_apply(loss, gradients, apply)
            metrics = tf.cond(finite, update_metrics, self._metric_results)
            logs.update(guard_logs)
        else:
            # Apply, as Keras does, and update the metrics.
            apply(gradients)
            metrics = update_metrics()
        return {**metrics, **logs}

    def make_train_function(self, force=False):
        """Keras's, plus the non-finite check where XLA drops the step's.

        XLA compiles `tf.debugging` asserts away, so under `jit_compile`
        `fit` checks the counter after each call instead.
        """
        if self.train_function is not None and not force:
            return self.train_function
        super().make_train_function(force)
        train_function = self.train_function
        if not (
            self._step_state.max_consecutive_non_finite and self.jit_compile
        ):
            return train_function

        def checked_train_function(iterator):
            logs = train_function(iterator)
            self.check_non_finite()
            return logs

        self.train_function = checked_train_function
        return checked_train_function

    def check_non_finite(self):
        """Raises if the last steps reached `max_consecutive_non_finite`.

        The step itself raises `tf.errors.InvalidArgumentError` with the same
        message, except under XLA; loops that run the step under XLA call
        this after each call.

        Raises:
            FloatingPointError: `consecutive_non_finite` reached the limit.
        """
        limit = self._step_state.max_consecutive_non_finite
        if not limit:
            return
        run = int(self._step_state.variables["consecutive_non_finite"])
        if run >= limit:
            raise FloatingPointError(_non_finite_message(limit))

    def predict_step(self, data):
        """Keras's `predict_step`: the forward pass in inference mode."""
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        return self(x, training=False)

    def test_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        y_pred = self(x, training=False)
        loss = self.compute_loss(
            x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=False
        )
        return self._update_metrics(loss, x, y, y_pred, sample_weight)

    def _state_variable(self, name, value, dtype):
        # One value for all replicas, written identically by each of them.
        return tf.Variable(
            value,
            dtype=dtype,
            trainable=False,
            name=name.replace("/", "_"),
            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
        )

    def _set_accumulation(self, steps):
        # Keras's LossScaleOptimizer accumulates in its inner optimizer.
        optimizer = getattr(self.optimizer, "inner_optimizer", self.optimizer)
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

    def _clip_and_measure(self, gradients, variables):
        """Global-norm clipping and gradient norms, as `compile` asked.

        Returns the gradients to apply and the logs to add.
        """
        state = self._step_state
        if not (
            state.global_clipnorm
            or state.log_grad_norm
            or state.layer_grad_norms
        ):
            return gradients, {}
        # The tape's loss was multiplied by this (mixed_float16), and each
        # replica holds a partial gradient: norms are of the unscaled sum.
        scale = self.optimizer.scale_loss(tf.constant(1.0))
        squares = [
            tf.reduce_sum(tf.square(tf.cast(g, tf.float32)))
            for g in step_parts.all_reduced(list(gradients))
        ]
        norm = tf.sqrt(tf.add_n(squares)) / scale
        logs = {}
        if state.log_grad_norm:
            logs["grad_norm"] = norm
        if "grad_norm" in state.variables:
            state.variables["grad_norm"].assign(norm)
        if state.layer_grad_norms:
            self._assign_layer_norms(squares, variables, scale)
        if state.global_clipnorm:
            clip = state.global_clipnorm
            # Keras's formula: a no-op for a finite norm below `clip`, NaN
            # (so the step is caught as non-finite) for a non-finite norm.
            factor = clip * tf.minimum(1.0 / norm, 1.0 / clip) + (norm - norm)
            gradients = [g * tf.cast(factor, g.dtype) for g in gradients]
        return gradients, logs

    def _assign_layer_norms(self, squares, variables, scale):
        per_layer = {}
        for square, variable in zip(squares, variables):
            per_layer.setdefault(_layer_path(variable), []).append(square)
        store = self._step_state.variables
        for layer, layer_squares in per_layer.items():
            name = f"grad_norm/{layer}"
            if name not in store:
                # `compile` creates these for a built model; a subclassed
                # one gets them on the first trace, outside the graph.
                with tf.init_scope():
                    store[name] = self._state_variable(name, 0.0, tf.float32)
            store[name].assign(tf.sqrt(tf.add_n(layer_squares)) / scale)

    def _guarded_apply(self, loss, gradients, apply):
        """`apply(gradients)` unless the step is non-finite; counts it.

        Returns whether the step was finite, and the logs to add.
        """
        state = self._step_state
        # A LossScaleOptimizer skips gradient overflow itself and lowers its
        # scale; guarding it here would stop the scale from ever falling.
        scaled = isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer)
        finite = step_parts.is_finite(loss, () if scaled else gradients)
        step_parts.apply_if(finite, apply, list(gradients))
        bad = tf.cast(tf.logical_not(finite), tf.int64)
        total = state.variables["non_finite_steps"]
        run = state.variables["consecutive_non_finite"]
        new_run = (run + bad) * bad
        total.assign_add(bad)
        run.assign(new_run)
        limit = state.max_consecutive_non_finite
        tf.debugging.assert_less(
            new_run, tf.constant(limit, tf.int64), _non_finite_message(limit)
        )
        return finite, {"non_finite_steps": total.read_value()}

    def _metric_results(self):
        """`get_metrics_result()` without the metrics not yet built.

        Compile metrics are built by their first update, which an eager
        run whose first step is skipped has not made yet.
        """
        results = {}
        for metric in self.metrics:
            if not getattr(metric, "built", True):
                continue
            result = metric.result()
            if isinstance(result, dict):
                results.update(result)
            else:
                results[metric.name] = result
        return results

    def _update_metrics(self, loss, x, y, y_pred, sample_weight):
        # The loss is divided by the replica count under tf.distribute;
        # undo that so the logged loss is the per-example mean, weighted by
        # batch size like Keras's own tracker. On one replica the graph is
        # then op for op Keras's, with no multiplication by 1.
        replicas = step_parts.replicas()
        if replicas > 1:
            loss = loss * replicas
        self.loss_tracker.update_state(loss, sample_weight=_batch_size(x))
        return self.compute_metrics(x, y, y_pred, sample_weight)
