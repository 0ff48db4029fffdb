"""Tests for `mylayers.GradientCheckpoint`."""

import collections
import gc
import glob
import tempfile
import weakref

import keras
import numpy as np
import pytest
import tensorflow as tf

import mylayers

try:
    from tensorflow.tsl.profiler.protobuf import xplane_pb2
except ImportError:  # Where a TensorFlow release moves it, say so.
    xplane_pb2 = None

# Left padding in the first row, right padding in the second.
MASK = np.array([[False, False, True, True], [True, True, True, False]])


def _x(shape=(2, 4, 8), seed=0):
    return tf.constant(
        np.random.default_rng(seed).normal(size=shape), tf.float32
    )


def _outputs_and_gradients(call, layer, x, **kwargs):
    """`[y, dL/dx, dL/dw for each trainable weight of layer]` for
    `L = sum(y * u)`, u fixed."""
    upstream = np.random.default_rng(1).normal(size=x.shape)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = call(x, **kwargs)
        loss = tf.reduce_sum(tf.cast(y, tf.float32) * upstream)
    return [y, *tape.gradient(loss, [x, *layer.trainable_weights])]


def _state(layer):
    """The values of `layer`'s non-trainable variables (dropout seeds)."""
    return [v.numpy().copy() for v in layer.non_trainable_variables]


def _set_state(layer, values):
    for variable, value in zip(layer.non_trainable_variables, values):
        variable.assign(value)


def test_basics():
    block = mylayers.TransformerBlock(2, 16)
    layer = mylayers.GradientCheckpoint(block)
    x = _x()
    np.testing.assert_array_equal(layer(x).numpy(), block(x).numpy())
    # The wrapper has no weights of its own: they are the block's 10.
    assert len(layer.trainable_weights) == 10
    assert [w.path for w in layer.weights] == [w.path for w in block.weights]
    assert layer.compute_output_shape((None, 5, 8)) == (None, 5, 8)
    restored = mylayers.GradientCheckpoint.from_config(layer.get_config())
    assert isinstance(restored.layer, mylayers.TransformerBlock)
    assert restored.get_config() == layer.get_config()

    # One training step: the Linear below must learn, so the gradient
    # crosses the wrapper; the block's own weights must move too.
    inputs = keras.Input((4, 8))
    below = mylayers.Linear(8)
    wrapped = mylayers.GradientCheckpoint(mylayers.TransformerBlock(2, 16))
    model = keras.Model(inputs, wrapped(below(inputs)))
    model.compile(keras.optimizers.SGD(0.1), "mse")
    before = [w.numpy().copy() for w in model.trainable_weights]
    assert len(before) == 2 + 10
    model.fit(_x((8, 4, 8)), np.ones((8, 4, 8)), verbose=0)
    for old, new in zip(before, model.trainable_weights):
        assert not np.allclose(old, new.numpy()), new.path


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "function"])
def test_same_outputs_and_gradients_with_dropout(compiled):
    """Training, with dropout on: the wrapper gives the block's outputs and
    gradients, so the backward rerun drew the forward pass's mask; and it
    advances the seed as the block does."""
    block = mylayers.TransformerBlock(2, 16, dropout=0.3)
    layer = mylayers.GradientCheckpoint(block)
    x = _x()
    layer(x)  # Builds, and creates the dropout seeds.
    assert block.non_trainable_variables  # The seeds.
    wrapped = lambda x: _outputs_and_gradients(  # noqa: E731
        layer, layer, x, mask=MASK, training=True
    )
    plain = lambda x: _outputs_and_gradients(  # noqa: E731
        block, block, x, mask=MASK, training=True
    )
    if compiled:
        wrapped, plain = tf.function(wrapped), tf.function(plain)
    seeds = _state(block)
    got = wrapped(x)
    seeds_after = _state(block)
    _set_state(block, seeds)
    expected = plain(x)
    for a, b in zip(seeds_after, _state(block)):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(seeds_after[0], seeds[0])
    assert len(got) == len(expected) == 2 + 10
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g.numpy(), e.numpy(), atol=1e-6, rtol=1e-6)
    # Dropout was on: the training outputs are not the inference ones.
    assert not np.allclose(got[0], block(x, mask=MASK, training=False))


class _Counting(mylayers.MLPBlock):
    """`MLPBlock` that counts its calls (in `tf.function`, its traces)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = 0

    def call(self, inputs, training=None):
        self.calls += 1
        return super().call(inputs, training=training)


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "function"])
def test_backward_pass_reruns_the_layer(compiled):
    """The activations are recomputed, not kept: the backward pass calls
    the wrapped layer a second time; autodiff of the plain layer calls it
    once."""
    x = _x((2, 3))

    def forward_backward(layer):
        def run(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                loss = tf.reduce_sum(layer(x) ** 2)
            return tape.gradient(loss, [x, *layer.trainable_weights])

        return tf.function(run) if compiled else run

    # Named "__counting" by Keras: the backward rerun, at the root name
    # scope in tf.function, must still give it a valid scope.
    inner = _Counting(4)
    assert inner.name.startswith("_")
    layer = mylayers.GradientCheckpoint(inner)
    layer.build(x.shape)
    forward = tf.function(layer) if compiled else layer
    forward(x)
    assert inner.calls == 1
    inner.calls = 0
    forward_backward(layer)(x)
    assert inner.calls == 2
    # Keras cannot call a layer named "_..." at the root of a tf.function.
    plain = _Counting(4, name="counting")
    plain.build(x.shape)
    forward_backward(plain)(x)
    assert plain.calls == 1


def _executed_op_types(function):
    """{op type: times run} in one call of the traced `function`, read
    from a `tf.profiler` trace: what ran after TensorFlow's graph
    optimizer, which traced names and call counts do not show."""
    function()  # Trace and optimize first.
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        try:
            function()
        finally:
            tf.profiler.experimental.stop()
        (path,) = glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True)
        space = xplane_pb2.XSpace()
        with open(path, "rb") as f:
            space.ParseFromString(f.read())
    counts = collections.Counter()
    for plane in space.planes:
        for line in plane.lines:
            if line.name.startswith("tf_Compute"):  # the executor's ops
                for event in line.events:
                    name = plane.event_metadata[event.metadata_id].name
                    counts[name.rpartition(":")[2]] += 1
    return counts


@pytest.mark.skipif(xplane_pb2 is None, reason="no profiler protobufs")
def test_graph_optimizer_keeps_the_rerun():
    """In a `tf.function`, TensorFlow's graph optimizer merges ops that
    compute the same thing from the same inputs: unless the rerun waits
    for the backward pass, it merges it into the forward pass and keeps
    every activation (as the first version of this layer did). The
    trace counts RMSNorm's Rsqrt: once per forward pass, so the
    checkpointed block runs it twice, the plain block once."""
    x = _x((4, 8))
    counts = {}
    for wrap in (False, True):
        block = mylayers.MLPBlock(16)
        layer = mylayers.GradientCheckpoint(block) if wrap else block
        layer.build(x.shape)

        @tf.function
        def step(layer=layer):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(layer(x) ** 2)
            return loss, tape.gradient(loss, layer.trainable_weights)

        counts[wrap] = _executed_op_types(step)["Rsqrt"]
    assert counts == {False: 1, True: 2}


class _Probe(keras.layers.Layer):
    """`tanh(x W1) W2`, keeping a weak reference to its activation."""

    def build(self, input_shape):
        self.w1 = self.add_weight(shape=(input_shape[-1], 16))
        self.w2 = self.add_weight(shape=(16, input_shape[-1]))
        self.activations = []

    def call(self, inputs):
        hidden = tf.tanh(tf.matmul(inputs, self.w1))
        self.activations.append(weakref.ref(hidden))
        return tf.matmul(hidden, self.w2)


@pytest.mark.parametrize("wrap", [False, True])
def test_eager_tape_keeps_no_activation(wrap):
    """Eagerly, the tape keeps what autodiff will read (here the tanh
    output) until the gradient is taken; under the wrapper it keeps
    nothing of the layer's, and the gradient is still right."""
    probe = _Probe()
    layer = mylayers.GradientCheckpoint(probe) if wrap else probe
    x = _x((2, 3))
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(layer(x) ** 2)
        gc.collect()
        kept = probe.activations[0]() is not None
    assert kept is not wrap
    grads = tape.gradient(loss, [x, *probe.trainable_weights])
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(probe(x) ** 2)
    expected = tape.gradient(loss, [x, *probe.trainable_weights])
    for g, e in zip(grads, expected):
        np.testing.assert_allclose(g.numpy(), e.numpy(), rtol=1e-6)


def test_mask_is_passed_on_and_through():
    block = mylayers.TransformerBlock(2, 16)
    layer = mylayers.GradientCheckpoint(block)
    x = _x()
    y = layer(x, mask=MASK).numpy()
    np.testing.assert_array_equal(y, block(x, mask=MASK).numpy())
    assert not np.allclose(y[MASK], block(x).numpy()[MASK])
    assert layer.compute_mask(x, MASK) is MASK

    # In a model, the embedding's mask reaches the block, and the next layer.
    seen = []

    class Spy(keras.layers.Layer):
        def __init__(self):
            super().__init__()
            self.supports_masking = True

        def call(self, inputs, mask=None):
            seen.append(mask)
            return inputs

    ids = keras.Input((None,), dtype="int32")
    h = mylayers.TokenEmbedding(6, 8, positions="none", mask_zero=True)(ids)
    model = keras.Model(ids, Spy()(layer(h)))
    tokens = np.array([[0, 0, 3, 1], [2, 4, 1, 0]])
    model(tokens)
    np.testing.assert_array_equal(seen[-1].numpy(), tokens != 0)
    embedded = model.layers[1](tokens)
    np.testing.assert_allclose(
        model(tokens).numpy()[tokens != 0],
        block(embedded, mask=tokens != 0).numpy()[tokens != 0],
        atol=1e-6,
    )


def test_saving_round_trip(tmp_path):
    ids = keras.Input((None,), dtype="int32")
    h = mylayers.TokenEmbedding(6, 8, positions="none", mask_zero=True)(ids)
    h = mylayers.GradientCheckpoint(mylayers.TransformerBlock(2, 16))(h)
    model = keras.Model(ids, mylayers.Linear(6)(h))
    model.save(tmp_path / "m.keras")
    reloaded = keras.models.load_model(tmp_path / "m.keras")
    wrapper = reloaded.layers[2]
    assert isinstance(wrapper, mylayers.GradientCheckpoint)
    assert isinstance(wrapper.layer, mylayers.TransformerBlock)
    tokens = np.array([[0, 0, 3, 1], [2, 4, 1, 0]])
    np.testing.assert_array_equal(
        model.predict(tokens, verbose=0), reloaded.predict(tokens, verbose=0)
    )


@pytest.fixture
def mixed_bfloat16():
    """The global policy the trainer sets for mixed precision."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    yield
    keras.config.set_dtype_policy(previous)


def test_mixed_bfloat16(mixed_bfloat16):
    block = mylayers.TransformerBlock(2, 16, dropout=0.3)
    layer = mylayers.GradientCheckpoint(block)
    assert layer.dtype_policy.name == "mixed_bfloat16"
    x = _x()
    layer(x)
    seeds = _state(block)
    got = _outputs_and_gradients(layer, layer, x, mask=MASK, training=True)
    _set_state(block, seeds)
    expected = _outputs_and_gradients(block, block, x, mask=MASK, training=True)
    assert got[0].dtype == tf.bfloat16
    for grad, weight in zip(got[2:], block.trainable_weights):
        assert grad.dtype == weight.dtype == tf.float32
    for g, e in zip(got, expected):
        g, e = (np.asarray(tf.cast(t, tf.float32)) for t in (g, e))
        assert np.isfinite(g).all() and np.any(g)
        # The same ops on the same bfloat16 values: not just close.
        np.testing.assert_allclose(g, e, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("layer", ["dense", None, mylayers.Linear])
def test_invalid_arguments(layer):
    with pytest.raises(ValueError, match="Received: layer=") as caught:
        mylayers.GradientCheckpoint(layer)
    assert "\n" not in str(caught.value)


def test_gradcheck_in_float64():
    """gradcheck computes in float64 through weight values of that dtype:
    the wrapper must hand them on as they are, not round them to the
    variables' float32 (it was then checked in float32 only)."""
    layer = mylayers.GradientCheckpoint(mylayers.Linear(2, activation="tanh"))
    x = np.random.default_rng(0).uniform(-1, 1, size=(3, 2))
    report = mylayers.gradcheck(layer, x, modes=("eager",))
    assert report.ok
    assert report.precision.startswith("float64, every layer")
