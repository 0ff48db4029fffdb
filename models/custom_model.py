"""`CustomModel`: a `keras.Model` whose training step is written out."""

import json
import os
import warnings

import keras
import tensorflow as tf

from models import functional, step_extras


def _learning_rates(optimizer):
    """The learning rate now and at the next iteration: a warm-up starts
    at 0, a finished cosine stays there. Keras exposes a schedule only
    through the optimizer's config."""
    optimizer = getattr(optimizer, "inner_optimizer", optimizer)
    # `convert_to_numpy`: under a strategy the variable is a mirrored one,
    # which `float()` does not take.
    now = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
    config = optimizer.get_config()["learning_rate"]
    if not isinstance(config, dict):  # A constant.
        return [now]
    try:
        schedule = keras.saving.deserialize_keras_object(config)
        upcoming = schedule(
            keras.ops.convert_to_numpy(optimizer.iterations) + 1
        )
        return [now, float(keras.ops.convert_to_numpy(upcoming))]
    except Exception:  # A schedule Keras cannot rebuild: now must do.
        return [now]


@keras.saving.register_keras_serializable(package="models")
class CustomModel(keras.Model):
    """A `keras.Model` with `train_step`/`test_step` written with GradientTape.

    Use it as a Functional model, `CustomModel(inputs, outputs)`, or as a base
    class. `fit`, `evaluate` and `predict` work as for `keras.Model`, and the
    trainer (`template_trainer`) drives the same `train_step` in its own loop.

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
        # Functional (`CustomModel(inputs, outputs)`) or subclassed, without
        # Keras's rewriting of the class (functional.py says why).
        functional.init_functional_or_subclassed(
            self, CustomModel, args, kwargs
        )
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.step_extras = step_extras.StepExtras()
        # What the model's outputs mean, when the data says: the class of
        # each logit, or the characters of a text model's ids (see
        # `save_assets`). The trainer sets them from the dataset.
        self.label_names = ()
        self.vocabulary = ""

    def save_assets(self, dir_path):
        """Keeps `label_names` and `vocabulary` inside the `.keras` file
        (Keras calls this while saving), so a model copied away from its
        run still says what its outputs are."""
        data = {"label_names": list(self.label_names)}
        data["vocabulary"] = self.vocabulary
        with open(os.path.join(dir_path, "data.json"), "w") as f:
            json.dump(data, f)

    def load_assets(self, dir_path):
        path = os.path.join(dir_path, "data.json")
        if os.path.exists(path):  # `.keras` files from before they were kept
            with open(path) as f:
                data = json.load(f)
            self.label_names = tuple(data["label_names"])
            self.vocabulary = data["vocabulary"]

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
                optimizer state; `non_finite_steps` counts such steps.
                At M in a row the guard stops for good (no later step
                applies), and `check_non_finite()` raises: `fit` and the
                trainer call it after each call of the step function.
                Skipped steps update no metric. Under
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
        # Made (and its options checked) before Keras's compile runs.
        extras = step_extras.StepExtras(
            global_clipnorm=global_clipnorm,
            gradient_accumulation_steps=gradient_accumulation_steps,
            max_consecutive_non_finite=max_consecutive_non_finite,
            log_grad_norm=log_grad_norm,
            layer_grad_norms=layer_grad_norms,
            missing_gradients=missing_gradients,
            trainable_variables=self.trainable_variables,
        )
        super().compile(*args, **kwargs)
        step_extras.set_accumulation(
            self.optimizer, gradient_accumulation_steps
        )
        self.step_extras = extras

    def get_compile_config(self):
        config = super().get_compile_config()
        if config:
            config.update(self.step_extras.config)
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
        return dict(self.step_extras.variables)

    @property
    def non_finite_counters(self):
        """The non-finite guard's `tf.Variable`s, for checkpoints:
        `(non_finite_steps, consecutive_non_finite)`, or `()` when
        `max_consecutive_non_finite` is off."""
        return self.step_extras.non_finite_counters

    @property
    def metrics(self):
        # Our tracker replaces Keras's, which shares its name "loss".
        others = [m for m in super().metrics if m.name != "loss"]
        return [self.loss_tracker, *others]

    def fit(self, *args, **kwargs):
        """Keras's `fit`, which first warns, in one line, if the learning
        rate is 0: a schedule at its end (as `keras.saving.load_model`
        restores a finished run, iteration count and all) trains nothing,
        and Keras says nothing. Read once, before the first step."""
        self._warn_if_no_learning()
        return super().fit(*args, **kwargs)

    def _warn_if_no_learning(self):
        optimizer = self.optimizer
        if optimizer is None:
            return  # Not compiled: Keras's fit says so.
        rates = _learning_rates(optimizer)
        if any(rate > 0 for rate in rates):
            return
        warnings.warn(
            f"fit: the learning rate is {rates[0]:g} at optimizer iteration "
            f"{int(optimizer.iterations)} and after (a schedule at its "
            "end?): this fit will not change the weights. To train on, "
            "compile again with a new optimizer (model.compile(optimizer="
            "keras.optimizers.Adam(1e-4), loss=..., metrics=...)), or "
            "resume the run with train.py and more epochs (the same "
            "--workdir, a larger --config.num_epochs).",
            stacklevel=3,  # The user's call of fit.
        )

    def train_step(self, data):
        """One step: Keras's, with `compile`'s extras (step_extras.py).

        - The loss tracker is ours and is fed after the tape (Keras feeds
          its own, inside the tape); the logged value is the same.
        - Variables the loss does not reach raise (Keras warns), unless
          `compile(missing_gradients="warn")`.
        - With `max_consecutive_non_finite`, a non-finite step applies
          nothing and updates no metric; call `check_non_finite()` after
          the step in a loop of your own (`fit` does).
        """
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
        gradients = tape.gradient(scaled_loss, self.trainable_variables)
        # What compile asked for: missing gradients checked, clipping, norms.
        extras = self.step_extras
        gradients, variables, logs = extras.prepare(
            self.optimizer, gradients, self.trainable_variables
        )
        # Update the weights (unless the non-finite guard skips the step),
        # then the metrics.
        applied = extras.apply(self.optimizer, loss, gradients, variables, logs)

        def update_metrics():
            return step_extras.update_metrics(
                self, loss, x, y, y_pred, sample_weight
            )

        if applied is None:
            return {**update_metrics(), **logs}
        # A skipped step updates no metric: its NaN loss would make the
        # epoch's mean loss NaN.
        metrics = tf.cond(
            applied, update_metrics, lambda: step_extras.metric_results(self)
        )
        return {**metrics, **logs}

    def make_train_function(self, force=False):
        """Keras's, then the non-finite check after each call (`fit`)."""
        if self.train_function is None or force:
            super().make_train_function(force)
            self.train_function = step_extras.checked_after_each_call(
                self, self.train_function
            )
        return self.train_function

    def check_non_finite(self):
        """Raises if `max_consecutive_non_finite` steps in a row were not
        finite: the one place the guard reports it. `fit` and the trainer
        call it after each call of the step function.

        Raises:
            FloatingPointError: `consecutive_non_finite` reached the limit.
        """
        self.step_extras.check_non_finite()

    def test_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        y_pred = self(x, training=False)
        loss = self.compute_loss(
            x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=False
        )
        return step_extras.update_metrics(
            self, loss, x, y, y_pred, sample_weight
        )
