"""Tests for the layers of `mylayers` beyond `Linear` and `ManualLinear`, and
the saving, export and mixed-precision behaviour of every layer."""

import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from run_helpers import same_threads_env

import mylayers
from mylayers.examples import inputs_of, public_layers

# Every example each public layer declares (`mylayers.examples`), by
# `Class-i`: adding a layer to `mylayers.__all__` adds it to these tests.
EXAMPLES = {
    f"{cls.__name__}-{i}": (cls, i)
    for cls in public_layers()
    for i in range(len(cls.examples()))
}


def _example(key, **kwargs):
    """A fresh copy of example `key`, its layer made with `kwargs`."""
    cls, i = EXAMPLES[key]
    return cls.examples(**kwargs)[i]


def _float_inputs(example, dtype="float32"):
    """The example's inputs, if they are floats (not token ids)."""
    x = np.asarray(inputs_of(example))
    return x.astype(dtype) if np.issubdtype(x.dtype, np.floating) else None


def _call(example, x):
    mask = {} if example.mask is None else {"mask": example.mask}
    return example.layer(x, **mask)


def _x(shape=(5, 4), seed=0):
    return np.random.default_rng(seed).uniform(-0.9, 0.9, shape).astype("f4")


def test_every_public_layer_declares_examples():
    for cls in public_layers():
        assert "examples" in vars(cls), cls
    assert {cls.__name__ for cls, _ in EXAMPLES.values()} >= {
        "Linear",
        "TokenEmbedding",
        "TransformerBlock",
    }


@pytest.mark.parametrize("key", sorted(EXAMPLES))
def test_basics(key, tmp_path):
    """Every example: its output shape as `compute_output_shape` says, its
    config round trip, a training step that moves every weight and the
    layer below (so the gradient crosses the layer), and a save and load
    that predicts the same."""
    example = _example(key)
    layer, x = example.layer, inputs_of(example)
    y = _call(example, x)
    assert tuple(layer.compute_output_shape(np.shape(x))) == tuple(y.shape)
    restored = type(layer).from_config(layer.get_config())
    assert restored.get_config() == layer.get_config()

    fresh = _example(key)
    floats = _float_inputs(fresh)
    if floats is None:  # Token ids: nothing below the layer to learn.
        inputs = keras.Input(np.shape(x)[1:], dtype="int32")
        below = keras.layers.Identity()
    else:
        inputs = keras.Input(floats.shape[1:])
        below = mylayers.Linear(floats.shape[-1])
    model = keras.Model(inputs, fresh.layer(below(inputs)))
    model.compile(keras.optimizers.SGD(0.5), "mse")
    data = np.asarray(x) if floats is None else floats
    target = np.random.default_rng(1).normal(size=y.shape).astype("f4")
    before = [w.numpy().copy() for w in model.trainable_weights]
    assert before, "a model with nothing to train tests nothing"
    model.fit(data, target, verbose=0)
    for old, new in zip(before, model.trainable_weights):
        assert not np.allclose(old, new.numpy()), new.path
    model.save(tmp_path / "m.keras")
    reloaded = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_array_equal(
        model(data, training=False), reloaded(data, training=False)
    )


@pytest.mark.parametrize(
    "kwargs, output_shape",
    [
        ({}, (5, 4, 5, 3)),
        ({"padding": "same"}, (5, 6, 7, 3)),
        ({"strides": 2, "padding": "same"}, (5, 3, 4, 3)),
        ({"kernel_size": (1, 2), "strides": (2, 3)}, (5, 3, 2, 3)),
    ],
)
def test_conv2d_basics(kwargs, output_shape, tmp_path):
    kwargs = {"kernel_size": 3, **kwargs}
    layer = mylayers.Conv2D(3, **kwargs)
    y = layer(_x((5, 6, 7, 4)))
    assert y.shape == output_shape
    assert [tuple(w.shape) for w in layer.trainable_weights] == [
        (*layer.kernel_size, 4, 3),
        (3,),
    ]
    assert layer.compute_output_shape((None, 6, 7, 4)) == (
        None,
        *output_shape[1:],
    )
    assert layer.compute_output_shape((2, None, 7, 4))[1:3] == (
        None,
        output_shape[2],
    )
    restored = type(layer).from_config(layer.get_config())
    assert restored.get_config() == layer.get_config()

    # One training step, as in `test_basics`: the Linear below (acting on the
    # channel axis) must learn, so the gradient crosses the convolution.
    inputs = keras.Input((6, 7, 4))
    below = mylayers.Linear(4)
    model = keras.Model(inputs, mylayers.Conv2D(3, **kwargs)(below(inputs)))
    model.compile(keras.optimizers.SGD(0.1), "mse")
    assert model.output_shape == (None, *output_shape[1:])
    before = [w.numpy().copy() for w in model.trainable_weights]
    model.fit(_x((16, 6, 7, 4)), np.ones((16, *output_shape[1:])), verbose=0)
    for old, new in zip(before, model.trainable_weights):
        assert not np.allclose(old, new.numpy()), new.path
    model.save(tmp_path / "m.keras")
    reloaded = keras.models.load_model(tmp_path / "m.keras")
    x = _x((2, 6, 7, 4))
    np.testing.assert_array_equal(
        model.predict(x, verbose=0), reloaded.predict(x, verbose=0)
    )


@pytest.mark.parametrize(
    "padding, strides, expected",
    [
        # Each output sums a 3x3 window of x = 1..16 (4x4), e.g.
        # 1 + 2 + 3 + 5 + 6 + 7 + 9 + 10 + 11 = 54.
        ("valid", 1, [[54, 63], [90, 99]]),
        # ceil(4 / 2) = 2 outputs a side need one padding row and column,
        # which TensorFlow puts at the bottom and right: the top-right
        # window is [[3 4 0] [7 8 0] [11 12 0]], summing to 45.
        ("same", 2, [[54, 45], [72, 54]]),
    ],
)
def test_conv2d_correctness_by_hand(padding, strides, expected):
    layer = mylayers.Conv2D(
        1, 3, strides=strides, padding=padding, kernel_initializer="ones"
    )
    x = tf.reshape(tf.range(1.0, 17.0), (1, 4, 4, 1))
    np.testing.assert_array_equal(layer(x).numpy()[0, :, :, 0], expected)


def _numpy_conv2d(x, kernel, bias, strides, padding):
    """Direct loops over the definition in `Conv2D`'s docstring."""
    kh, kw = kernel.shape[:2]
    sh, sw = strides
    if padding == "same":
        # TensorFlow's rule: ceil(n / s) outputs, any odd padding pixel at
        # the bottom/right.
        pads = []
        for n, k, s in ((x.shape[1], kh, sh), (x.shape[2], kw, sw)):
            total = max((-(-n // s) - 1) * s + k - n, 0)
            pads.append((total // 2, total - total // 2))
        x = np.pad(x, [(0, 0), *pads, (0, 0)])
    rows = (x.shape[1] - kh) // sh + 1
    cols = (x.shape[2] - kw) // sw + 1
    y = np.zeros((x.shape[0], rows, cols, kernel.shape[3]))
    for n in range(x.shape[0]):
        for i in range(rows):
            for j in range(cols):
                for f in range(kernel.shape[3]):
                    window = x[n, i * sh : i * sh + kh, j * sw : j * sw + kw]
                    y[n, i, j, f] = np.sum(window * kernel[..., f]) + bias[f]
    return y


@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize("strides", [1, 2, (2, 1)])
def test_conv2d_correctness(padding, strides):
    rng = np.random.default_rng(1)
    kernel = rng.normal(size=(3, 2, 3, 4))
    bias = rng.normal(size=(4,))
    x = rng.normal(size=(2, 7, 6, 3))
    layer = mylayers.Conv2D(4, (3, 2), strides=strides, padding=padding)
    layer.build((None, 7, 6, 3))
    layer.set_weights([kernel, bias])
    expected = _numpy_conv2d(x, kernel, bias, layer.strides, padding).astype(
        "f4"
    )
    y = layer(tf.constant(x, tf.float32)).numpy()
    assert y.shape == expected.shape
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def test_rms_norm_correctness():
    layer = mylayers.RMSNorm()
    layer.build((None, 2))
    layer.set_weights([np.array([1.0, 2.0])])
    # rms([3, 4]) = sqrt(12.5) = 3.5355339
    y = layer(tf.constant([[3.0, 4.0], [0.0, 0.0]]))
    np.testing.assert_allclose(
        y.numpy(), [[0.8485281, 2.2627417], [0.0, 0.0]], rtol=1e-5
    )


def test_mlp_block_correctness():
    block = mylayers.MLPBlock(1, activation="relu")
    block.build((None, 2))
    block.set_weights(
        [
            np.ones(2),  # norm scale
            np.array([[1.0, 0.0]]),  # hidden kernel (1, 2)
            np.zeros(1),  # hidden bias
            np.array([[2.0], [-1.0]]),  # out kernel (2, 1)
            np.array([0.5, 0.0]),  # out bias
        ]
    )
    # norm([3, 4]) = [0.8485281, 1.1313708]; hidden = relu(0.8485281);
    # out = [2 * 0.8485281 + 0.5, -0.8485281]; y = x + out.
    y = block(tf.constant([[3.0, 4.0]]))
    np.testing.assert_allclose(y.numpy(), [[5.1970563, 3.1514719]], rtol=1e-6)


def test_stable_softplus_correctness_at_large_inputs():
    x = tf.constant([-1e4, -20.0, 0.0, 1.0, 1e4])
    with tf.GradientTape() as outer:
        outer.watch(x)
        with tf.GradientTape() as inner:
            inner.watch(x)
            y = mylayers.StableSoftplus()(x)
        dy = inner.gradient(y, x)
    d2y = outer.gradient(dy, x)
    np.testing.assert_allclose(
        y.numpy(), [0.0, 2.0611537e-9, 0.6931472, 1.3132616, 1e4], rtol=1e-6
    )
    np.testing.assert_allclose(
        dy.numpy(), [0.0, 2.0611537e-9, 0.5, 0.7310586, 1.0], rtol=1e-6
    )
    np.testing.assert_allclose(
        d2y.numpy(), [0.0, 2.0611537e-9, 0.25, 0.19661193, 0.0], rtol=1e-5
    )
    # What the layer exists to avoid: the naive formula and its gradient.
    with tf.GradientTape() as tape:
        tape.watch(x)
        naive = tf.math.log(1 + tf.exp(x))
    assert np.isinf(naive.numpy()[-1])
    assert np.isnan(tape.gradient(naive, x).numpy()[-1])


def test_gradient_reversal_correctness():
    x = tf.constant([[1.0, -2.0]])
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = mylayers.GradientReversal(scale=0.25)(x)
        loss = tf.reduce_sum(y * [[4.0, 8.0]])
    np.testing.assert_array_equal(y.numpy(), x.numpy())
    np.testing.assert_array_equal(tape.gradient(loss, x).numpy(), [[-1, -2]])


@pytest.mark.parametrize(
    "bits, expected",
    [
        (1, [-1.0, 1.0, 1.0, 1.0, 1.0]),
        # n = 3 levels apart: y = 2 round((clip(x) + 1) * 1.5) / 3 - 1
        (2, [-1.0, 1 / 3, 1 / 3, 1.0, 1.0]),
    ],
)
def test_straight_through_quantize_correctness(bits, expected):
    x = tf.constant([-0.7, 0.0, 0.3, 0.9, 2.0])
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = mylayers.StraightThroughQuantize(bits)(x)
        loss = tf.reduce_sum(y * [1.0, 2.0, 3.0, 4.0, 5.0])
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-6)
    # Straight through inside [-1, 1], zero outside.
    np.testing.assert_array_equal(
        tape.gradient(loss, x).numpy(), [1, 2, 3, 4, 0]
    )


@pytest.mark.parametrize(
    "max_norm, expected", [(1.0, [[0.6, 0.8]]), (10.0, [[3.0, 4.0]])]
)
def test_clip_gradient_correctness(max_norm, expected):
    x = tf.constant([[1.0, 2.0]])
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = mylayers.ClipGradient(max_norm)(x)
        loss = tf.reduce_sum(y * [[3.0, 4.0]])  # upstream norm 5
    np.testing.assert_array_equal(y.numpy(), x.numpy())
    np.testing.assert_allclose(tape.gradient(loss, x).numpy(), expected)


@pytest.mark.parametrize(
    "make, argument",
    [
        (lambda: mylayers.RMSNorm(epsilon=0), "epsilon"),
        (lambda: mylayers.RMSNorm(epsilon=-1e-3), "epsilon"),
        (lambda: mylayers.RMSNorm(epsilon="1e-6"), "epsilon"),
        (lambda: mylayers.MLPBlock(0), "hidden_units"),
        (lambda: mylayers.MLPBlock(2.5), "hidden_units"),
        (lambda: mylayers.MLPBlock(True), "hidden_units"),
        (lambda: mylayers.MLPBlock(4, epsilon=0), "epsilon"),
        (lambda: mylayers.GradientReversal(-1.0), "scale"),
        (lambda: mylayers.GradientReversal(float("nan")), "scale"),
        (lambda: mylayers.GradientReversal("1"), "scale"),
        (lambda: mylayers.StraightThroughQuantize(0), "bits"),
        (lambda: mylayers.StraightThroughQuantize(17), "bits"),
        (lambda: mylayers.StraightThroughQuantize(2.0), "bits"),
        (lambda: mylayers.ClipGradient(0.0), "max_norm"),
        (lambda: mylayers.ClipGradient(float("inf")), "max_norm"),
        (lambda: mylayers.ClipGradient(True), "max_norm"),
        (lambda: mylayers.NumpyLinear(0), "units"),
        (lambda: mylayers.NumpyLinear("3"), "units"),
        (lambda: mylayers.Conv2D(0, 3), "filters"),
        (lambda: mylayers.Conv2D(2.0, 3), "filters"),
        (lambda: mylayers.Conv2D(True, 3), "filters"),
        (lambda: mylayers.Conv2D(4, 0), "kernel_size"),
        (lambda: mylayers.Conv2D(4, (3,)), "kernel_size"),
        (lambda: mylayers.Conv2D(4, (3, 0)), "kernel_size"),
        (lambda: mylayers.Conv2D(4, 2.5), "kernel_size"),
        (lambda: mylayers.Conv2D(4, 3, strides=0), "strides"),
        (lambda: mylayers.Conv2D(4, 3, strides=(1, 1, 1)), "strides"),
        (lambda: mylayers.Conv2D(4, 3, padding="causal"), "padding"),
        (lambda: mylayers.Conv2D(4, 3, padding="SAME"), "padding"),
    ],
)
def test_invalid_arguments(make, argument):
    with pytest.raises(ValueError, match=f"Received: {argument}="):
        make()


def _has_weights_of_its_own(key):
    """Whether example `key` takes floats and its layer, built, has weights
    of its own (a wrapper's errors come from the layer it wraps, which has
    its own name)."""
    example = _example(key)
    x = _float_inputs(example)
    if x is None or isinstance(example.layer, keras.layers.Wrapper):
        return False
    example.layer(x)
    return bool(example.layer.trainable_weights)


WITH_WEIGHTS = [key for key in EXAMPLES if _has_weights_of_its_own(key)]


@pytest.mark.parametrize("key", WITH_WEIGHTS)
def test_wrong_input_names_layer(key):
    example = _example(key, name="my_layer")
    x = _float_inputs(example)
    example.layer(x)
    wider = np.concatenate([x, x[..., :1]], axis=-1)
    with pytest.raises(ValueError, match="my_layer"):
        example.layer(wider)
    with pytest.raises(ValueError, match="my_layer"):
        _example(key, name="my_layer").layer(x[0])  # one rank short


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
@pytest.mark.parametrize("key", sorted(EXAMPLES))
def test_mixed_precision(key, policy):
    example = _example(key, dtype=policy)
    floats = _float_inputs(example)
    x = tf.constant(inputs_of(example) if floats is None else floats)
    with tf.GradientTape() as tape:
        if floats is not None:
            tape.watch(x)
        y = _call(example, x)
        loss = tf.reduce_sum(tf.cast(y, tf.float32) ** 2)
    compute = policy.split("_")[1]
    assert y.dtype == compute
    weights = example.layer.trainable_weights
    grads = tape.gradient(loss, [x, *weights])
    if floats is None:
        assert grads[0] is None  # Token ids have no gradient.
    else:
        assert grads[0].dtype == tf.float32  # the float32 input was autocast
    for grad, weight in zip(grads[1:], weights):
        assert grad.dtype == weight.dtype == tf.float32
    for grad in grads[0 if floats is not None else 1 :]:
        grad = tf.convert_to_tensor(grad).numpy()  # An embedding's slices.
        assert np.all(np.isfinite(grad)) and np.any(grad)


def _every_layer_model(with_numpy=True):
    inputs = keras.Input((4,))
    # The 4 features as a 2x2 image, so that Conv2D is saved and exported too.
    h = keras.layers.Reshape((2, 2, 1))(inputs)
    h = mylayers.Conv2D(3, 2, padding="same", activation="tanh")(h)
    h = keras.layers.Flatten()(h)
    h = mylayers.ManualLinear(6, activation="tanh")(h)
    h = mylayers.RMSNorm()(h)
    h = mylayers.MLPBlock(8)(h)
    h = mylayers.GradientReversal(0.5)(h)
    h = mylayers.ClipGradient(0.3)(h)
    h = mylayers.StableSoftplus()(h)
    h = mylayers.StraightThroughQuantize(6)(h)
    if with_numpy:
        h = mylayers.NumpyLinear(5)(h)
    return keras.Model(inputs, mylayers.Linear(2)(h))


def _outputs_and_gradients(model, x):
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = model(x)
        loss = tf.reduce_sum(y * [[1.0, -2.0]])
    return [y, *tape.gradient(loss, [x, *model.trainable_weights])]


_FRESH_PROCESS_CHECK = """
import os, sys
os.environ["KERAS_BACKEND"] = "tensorflow"
import numpy as np, tensorflow as tf, keras, mylayers
d = sys.argv[1]
x = tf.constant(np.load(os.path.join(d, "x.npy")))
expected = np.load(os.path.join(d, "expected.npz"))
expected = [expected[f"arr_{i}"] for i in range(len(expected.files))]
model = keras.models.load_model(os.path.join(d, "m.keras"))
with tf.GradientTape() as tape:
    tape.watch(x)
    y = model(x)
    loss = tf.reduce_sum(y * [[1.0, -2.0]])
got = [y, *tape.gradient(loss, [x, *model.trainable_weights])]
assert len(got) == len(expected), (len(got), len(expected))
for g, e in zip(got, expected):
    np.testing.assert_array_equal(g.numpy(), e)
exported = tf.saved_model.load(os.path.join(d, "exported"))
weights = sorted(exported.trainable_variables, key=lambda v: v.name)
with tf.GradientTape() as tape:
    tape.watch(x)
    y = exported.serve(x)
    loss = tf.reduce_sum(y * [[1.0, -2.0]])
got = [y, *tape.gradient(loss, [x, *weights])]
expected = np.load(os.path.join(d, "exported.npz"))
for i, g in enumerate(got):
    np.testing.assert_allclose(
        g.numpy(), expected[f"arr_{i}"], rtol=1e-5, atol=1e-7
    )
print("ok", len(got))
"""


@pytest.mark.slow
def test_save_load_and_export_in_fresh_process(tmp_path):
    """Custom gradients survive `.keras` saving and `model.export()`.

    Slow (a second TensorFlow process, about 10 s) but it is the only way to
    see that nothing depends on objects living in the saving process.
    NumpyLinear is left out of the export: a SavedModel cannot hold numpy
    code (see its docstring); it is in the `.keras` model.
    """
    x = _x()
    np.save(tmp_path / "x.npy", x)
    model = _every_layer_model()
    model.save(tmp_path / "m.keras")
    np.savez(
        tmp_path / "expected.npz",
        *[t.numpy() for t in _outputs_and_gradients(model, x)],
    )
    exportable = _every_layer_model(with_numpy=False)
    exportable.export(str(tmp_path / "exported"), verbose=False)
    x_t = tf.constant(x)
    weights = sorted(exportable.trainable_weights, key=lambda v: v.path)
    with tf.GradientTape() as tape:
        tape.watch(x_t)
        y = exportable(x_t)
        loss = tf.reduce_sum(y * [[1.0, -2.0]])
    grads = tape.gradient(loss, [x_t, *weights])
    np.savez(tmp_path / "exported.npz", y.numpy(), *[g.numpy() for g in grads])
    result = subprocess.run(
        [sys.executable, "-c", _FRESH_PROCESS_CHECK, str(tmp_path)],
        capture_output=True,
        text=True,
        env=same_threads_env(TF_CPP_MIN_LOG_LEVEL="2"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # y, dx, and the 12 weights of the exportable model: Conv2D 2,
    # ManualLinear 2, RMSNorm 1, MLPBlock 5, Linear 2.
    assert result.stdout.split()[-2:] == ["ok", str(2 + 2 + 2 + 1 + 5 + 2)]
