"""The parts of `CustomModel.train_step` that Keras's own step does not have.

Each function works eagerly, inside `tf.function`, under XLA and in the
replica context of a `tf.distribute` strategy (`strategy.run`).
"""

import keras
import tensorflow as tf
from absl import logging


def replicas():
    """Replicas in sync: Keras losses divide by it under `tf.distribute`."""
    return tf.distribute.get_strategy().num_replicas_in_sync


def check_missing_gradients(gradients, variables, mode):
    """Raises or warns, at trace time, for variables the loss does not reach.

    Keras's optimizer only warns and trains the rest, so an upstream layer can
    silently stop learning; `mode="raise"` makes that an error.

    Args:
        gradients: `tape.gradient`'s result, `None` where there is no path.
        variables: The variables the gradients are for.
        mode: `"raise"` or `"warn"`.
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
        return gradients
    # One all-reduce of every gradient concatenated: a batch all-reduce of
    # the list beside the optimizer's own deadlocked two-worker
    # MultiWorkerMirroredStrategy runs (seen: thousands of threads spawned,
    # no step finished).
    context = tf.distribute.get_replica_context()
    present = [g for g in gradients if g is not None]
    flat = tf.concat([tf.reshape(g, [-1]) for g in present], axis=0)
    flat = context.all_reduce(tf.distribute.ReduceOp.SUM, flat)
    sizes = [tf.size(g) for g in present]
    pieces = tf.split(flat, sizes)
    summed = iter(tf.reshape(p, tf.shape(g)) for p, g in zip(pieces, present))
    return [None if g is None else next(summed) for g in gradients]


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


def mean_over_replicas(gradients):
    """The all-reduced gradients divided by the replica count.

    Equal on every replica; the optimizer's own sum over replicas turns them
    back into the all-reduced gradients.
    """
    count = replicas()
    return [None if g is None else g / count for g in all_reduced(gradients)]


def is_finite(loss, gradients):
    """Whether the loss and every gradient are finite, on every replica.

    All replicas must take the same branch, so a bad value on any one of
    them makes the step bad on all of them.
    """
    checks = [tf.reduce_all(tf.math.is_finite(loss))]
    checks += [
        tf.reduce_all(tf.math.is_finite(g)) for g in gradients if g is not None
    ]
    finite = tf.reduce_all(tf.stack(checks))
    if replicas() == 1:
        return finite
    bad = tf.cast(tf.logical_not(finite), tf.float32)
    context = tf.distribute.get_replica_context()
    return tf.equal(context.all_reduce(tf.distribute.ReduceOp.SUM, bad), 0.0)


def apply_if(finite, apply_fn, gradients):
    """Runs `apply_fn(gradients)` (an optimizer update) only if `finite`.

    Inside a strategy that needs `merge_call` (MirroredStrategy), the
    optimizer's own `merge_call` may not run inside a `tf.cond` in replica
    context, so the branch is taken in cross-replica context and the update
    re-entered per replica, as Keras's `LossScaleOptimizer` does. The
    gradients travel through `merge_call` so each replica applies its own.

    Args:
        finite: A boolean scalar, equal on every replica.
        apply_fn: Applies a list of gradients; returns nothing.
        gradients: This replica's gradients.
    """

    def skip():
        return tf.constant(False)

    if not tf.distribute.has_strategy():

        def apply():
            apply_fn(gradients)
            return tf.constant(True)

        tf.cond(finite, apply, skip)
        return

    def cross_replica(strategy, finite, gradients):
        finite = strategy.experimental_local_results(finite)[0]

        def apply_per_replica():
            strategy.extended.call_for_each_replica(apply_fn, args=(gradients,))
            return tf.constant(True)

        tf.cond(finite, apply_per_replica, skip)

    tf.distribute.get_replica_context().merge_call(
        cross_replica, args=(finite, gradients)
    )
