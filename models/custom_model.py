"""`CustomModel`: a `keras.Model` whose training step is written out."""

import functools

import keras
import tensorflow as tf


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


def _replicas():
    """Replicas in sync: Keras losses divide by it under `tf.distribute`."""
    return tf.distribute.get_strategy().num_replicas_in_sync


@keras.saving.register_keras_serializable(package="models")
class CustomModel(keras.Model):
    """A `keras.Model` with `train_step`/`test_step` written with GradientTape.

    Use it as a Functional model, `CustomModel(inputs, outputs)`, or as a base
    class. `fit`, `evaluate` and `predict` work as for `keras.Model`, and the
    trainer in `trainer.py` drives the same `train_step` in its own loop.

    What differs from Keras's built-in step: nothing in the maths. The step is
    spelled out so it can be read and changed, and it feeds its own loss
    tracker (Keras's tracker is fed only by Keras's own step, so a bare
    override logs `loss: 0.0`).
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

    @property
    def metrics(self):
        # Our tracker replaces Keras's, which shares its name "loss".
        others = [m for m in super().metrics if m.name != "loss"]
        return [self.loss_tracker, *others]

    def train_step(self, data):
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
        gradients = tape.gradient(scaled_loss, self.trainable_variables)
        # Apply.
        self.optimizer.apply(gradients, self.trainable_variables)
        # Metrics.
        return self._update_metrics(loss, x, y, y_pred, sample_weight)

    def test_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        y_pred = self(x, training=False)
        loss = self.compute_loss(
            x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=False
        )
        return self._update_metrics(loss, x, y, y_pred, sample_weight)

    def _update_metrics(self, loss, x, y, y_pred, sample_weight):
        # The loss is divided by the replica count under tf.distribute;
        # undo that so the logged loss is the per-example mean, weighted by
        # batch size like Keras's own tracker.
        self.loss_tracker.update_state(
            loss * _replicas(), sample_weight=_batch_size(x)
        )
        return self.compute_metrics(x, y, y_pred, sample_weight)
