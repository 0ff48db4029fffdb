"""Turns a numpy forward and its numpy backward into a differentiable TF op."""

import numpy as np
import tensorflow as tf

try:
    # No public API tells whether a trace is being compiled by XLA; this
    # helper is what TensorFlow's own ops use. Without it the bridge still
    # fails under XLA, with TensorFlow's less specific "EagerPyFunc" error.
    from tensorflow.python.ops.control_flow_util import (
        GraphOrParentsInXlaContext as _in_xla_context,
    )
except ImportError:  # pragma: no cover - depends on the TF version

    def _in_xla_context(graph):
        return False


def _numpy_dtype(dtype):
    """numpy has no fast half-precision math: compute in float32 instead."""
    return np.float32 if dtype in (tf.float16, tf.bfloat16) else None


def _as_numpy_call(fn, dtypes, single):
    """Wraps `fn` so half-precision arrays reach it as float32 and its results
    come back in the dtypes TensorFlow declared (one array if `single`)."""

    def call(*arrays):
        arrays = [
            a.astype(_numpy_dtype(tf.as_dtype(a.dtype)) or a.dtype)
            for a in arrays
        ]
        results = fn(*arrays)
        if not isinstance(results, (tuple, list)):
            results = (results,)
        results = [
            np.asarray(r).astype(d.as_numpy_dtype)
            for r, d in zip(results, dtypes)
        ]
        return results[0] if single else results

    return call


def numpy_op(forward, backward, output_shape, name="numpy_op"):
    """Makes a differentiable TF op from numpy forward and backward functions.

    `forward(*arrays) -> array` computes the output; `backward(upstream,
    *arrays) -> tuple of arrays` returns the gradient of the loss with
    respect to each input, given the loss's gradient `upstream` with respect
    to the output. Both are stateless: anything the backward pass needs from
    the forward pass, it recomputes from the inputs. Weights are inputs like
    any other, so gradients reach them too.

    The op runs in eager mode, in `tf.function`, in `model.fit` and in the
    Functional API (the output's static shape comes from `output_shape`).
    It has limits that come from `tf.numpy_function`, and fails with a
    `NotImplementedError` rather than a wrong or `None` gradient:

    - under XLA (`jit_compile=True`), which cannot run Python; a layer built
      on it should set `self.supports_jit = False`, so that Keras falls back
      to `jit_compile=False`;
    - when a second derivative is requested: the numpy backward is not
      differentiable by TensorFlow.

    Half-precision inputs reach numpy as float32; results are cast back.
    The numpy code is not saved in a SavedModel.

    Args:
        forward: `forward(*arrays) -> array`.
        backward: `backward(upstream, *arrays) -> tuple of arrays`, one per
            input, each of that input's shape.
        output_shape: `output_shape(*input_shapes) -> shape`, the output's
            static shape (entries may be `None`) from the inputs' shapes.
        name: Name of the op, used in error messages.

    Returns:
        A function `op(*tensors) -> tensor`, differentiable with respect to
        every input, whose output has the first input's dtype.

    Example:

    >>> square = numpy_op(
    ...     lambda x: x**2, lambda dy, x: (2 * x * dy,), lambda s: s
    ... )
    >>> x = tf.constant([1.0, 3.0])
    >>> with tf.GradientTape() as tape:
    ...     tape.watch(x)
    ...     y = square(x)
    >>> tape.gradient(y, x).numpy()
    array([2., 6.], dtype=float32)
    """

    def check_not_xla():
        if _in_xla_context(tf.compat.v1.get_default_graph()):
            raise NotImplementedError(
                f"numpy_op '{name}' cannot run under XLA (jit_compile=True): "
                "numpy code has no XLA kernel. Use jit_compile=False."
            )

    @tf.custom_gradient
    def backward_op(upstream, *inputs):
        check_not_xla()
        dtypes = [t.dtype for t in inputs]
        grads = tf.numpy_function(
            _as_numpy_call(backward, dtypes, single=False),
            [upstream, *inputs],
            Tout=dtypes,
            stateful=False,
            name=f"{name}_backward",
        )
        if not isinstance(grads, (list, tuple)):  # Tout had one entry
            grads = [grads]
        for grad, tensor in zip(grads, inputs):
            grad.set_shape(tensor.shape)

        def second_order(*unused):
            raise NotImplementedError(
                f"numpy_op '{name}' has no second derivative: its backward "
                "pass is numpy code, which TensorFlow cannot differentiate. "
                "Write the backward pass with TF ops to get one."
            )

        return grads, second_order

    @tf.custom_gradient
    def op(*inputs):
        check_not_xla()
        dtype = inputs[0].dtype
        y = tf.numpy_function(
            _as_numpy_call(forward, [dtype], single=True),
            list(inputs),
            Tout=dtype,
            stateful=False,
            name=name,
        )
        y.set_shape(output_shape(*[t.shape for t in inputs]))

        def grad(upstream):
            # Positional call: keywords would bypass the custom gradient.
            return backward_op(upstream, *inputs)

        return y, grad

    def call(*tensors):
        return op(*[tf.convert_to_tensor(t) for t in tensors])

    return call
