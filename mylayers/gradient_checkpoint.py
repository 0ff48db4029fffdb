"""Gradient checkpointing: a wrapper that recomputes its layer backward."""

import inspect

import keras
import tensorflow as tf

from mylayers import checks
from mylayers.examples import Example
from mylayers.mlp_block import MLPBlock


@keras.saving.register_keras_serializable(package="mylayers")
class GradientCheckpoint(keras.layers.Wrapper):
    """Runs `layer` forward keeping none of its activations; the backward
    pass runs `layer` again to get them, then differentiates that rerun.

    `y = layer(x)`, with the gradients autodiff would give, but the memory
    of `layer`'s intermediate activations (attention weights, MLP hidden
    units: often most of a transformer's training memory) is held for one
    wrapped layer at a time, during its own backward pass, instead of for
    every layer from the forward pass to the backward one. The price is one
    more forward pass of `layer` per step (`benchmarks/lm_memory_bench.py`
    measures both).

    Autodiff cannot do this by itself: it keeps whatever its backward pass
    will read. So the gradient is custom (`_checkpointed`): the forward
    pass runs `layer` off the tape, and the backward pass reruns it on a
    tape of its own. The rerun reads the weights and the random state
    (dropout's seed) as they were in the forward pass, so it recomputes
    the same activations and the same dropout mask; state the forward pass
    updates (the seed's next value) is applied once, after it.

    Args:
        layer: The layer to wrap, with one tensor input and one tensor
            output (`mask=` and `training=` are passed on if it takes them).
        **kwargs: Base layer arguments (`name`, ...).

    Call arguments:
        inputs: `layer`'s input.
        mask: Optional Keras mask, passed to `layer` and on.
        training: Passed to `layer`.

    Input shape:
        `layer`'s.

    Output shape:
        `layer`'s.

    Example:

    >>> from mylayers import Linear
    >>> layer = GradientCheckpoint(Linear(3))
    >>> x = tf.ones((2, 4))
    >>> with tf.GradientTape() as tape:
    ...     tape.watch(x)
    ...     y = tf.reduce_sum(layer(x) ** 2)
    >>> tape.gradient(y, x).shape
    TensorShape([2, 4])
    """

    def __init__(self, layer, **kwargs):
        # Keras's own error for this names no argument.
        checks.require(
            isinstance(layer, keras.layers.Layer),
            self,
            "layer",
            layer,
            "a keras.layers.Layer instance",
        )
        super().__init__(layer, **kwargs)
        parameters = inspect.signature(self.layer.call).parameters
        self._pass_mask = "mask" in parameters
        self._pass_training = "training" in parameters
        self.supports_masking = True

    def build(self, input_shape=None):
        if not self.layer.built:
            self.layer.build(input_shape)
        self.built = True

    def call(self, inputs, mask=None, training=None):
        kwargs = {}
        if self._pass_mask and mask is not None:
            kwargs["mask"] = mask
        if self._pass_training:
            kwargs["training"] = training
        weights = self.layer.trainable_variables
        state = [v for v in self.layer.variables if v.trainable is False]
        # Read once: the forward pass and the backward rerun see these.
        state_before = [tf.identity(v.value) for v in state]
        updates = []

        def run(x, weight_values):
            scope = keras.StatelessScope()
            # `add_update`, not `state_mapping`, which casts each value to
            # its variable's dtype: values in another dtype (float64 ones,
            # from gradcheck) would be rounded to float32.
            for variable, value in [
                *zip(weights, weight_values),
                *zip(state, state_before),
            ]:
                scope.add_update((variable, value))
            with scope:
                y = self.layer(x, **kwargs)
            return y, [scope.get_current_value(v) for v in state]

        @tf.custom_gradient
        def _checkpointed(x, *weight_values):
            """`layer(x)`, its activations recomputed for the backward pass;
            autodiff would keep them from the forward pass instead."""
            # Eagerly, `tf.custom_gradient` runs this with the tape on, and
            # the tape would hold every activation of `layer` until the
            # gradient is taken; from stopped copies it records none.
            y, new_state = run(
                tf.stop_gradient(x),
                [tf.stop_gradient(w) for w in weight_values],
            )
            updates.extend(new_state)

            def grad(dy):
                # The rerun's inputs wait for `dy`: otherwise TensorFlow's
                # graph optimizer finds the rerun identical to the forward
                # pass and merges them, keeping every activation from the
                # forward pass (seen: no memory saved, no op rerun).
                with tf.control_dependencies([dy]):
                    sources = [tf.identity(t) for t in (x, *weight_values)]
                # In tf.function the backward pass runs at the root name
                # scope, where `layer`'s own scope is invalid if its name
                # starts with "_" (Keras's name for a `_Private` class).
                with tf.GradientTape() as tape, tf.name_scope("recompute"):
                    tape.watch(sources)
                    y_again, _ = run(sources[0], sources[1:])
                grads = tape.gradient(y_again, sources, output_gradients=dy)
                return [
                    tf.zeros_like(t) if g is None else g
                    for t, g in zip(sources, grads)
                ]

            return tf.identity(y), grad

        # Positional: keyword arguments would bypass the custom gradient.
        outputs = _checkpointed(inputs, *[w.value for w in weights])
        for variable, value in zip(state, updates):
            if value is not None:
                variable.assign(value)
        return outputs

    def compute_mask(self, inputs, mask=None):
        return self.layer.compute_mask(inputs, mask)

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    @classmethod
    def examples(cls, **kwargs):
        """Small instances and inputs, for gradcheck and the tests
        (`mylayers.examples`)."""
        # The wrapped layer takes the dtype policy: the wrapper computes in
        # its dtype.
        return [Example(cls(MLPBlock(3, **kwargs)), (2, 3))]
