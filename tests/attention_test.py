"""Tests for `mylayers.CausalSelfAttention`, `mylayers.rotary` and
`mylayers.TransformerBlock`."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import mylayers
from mylayers import rotary

# Left padding in the first row (its first query sees no key at all),
# right padding in the second.
MASK = np.array([[False, False, True, True], [True, True, True, False]])


def _x(shape=(2, 4, 8), seed=0):
    return np.random.default_rng(seed).normal(size=shape)


def _rotate(x, offset=0):
    """RoPE as complex multiplication: feature pair `(x[i], x[i + d/2])` is
    the number `x[i] + 1j x[i + d/2]`, turned by `t * 10000^(-2i/d)`."""
    half = x.shape[-1] // 2
    z = x[..., :half] + 1j * x[..., half:]
    t = np.arange(x.shape[1]) + offset
    angle = t[:, None] * 10_000.0 ** (-2 * np.arange(half) / x.shape[-1])
    z = z * np.exp(1j * angle)[None, :, None, :]
    return np.concatenate([z.real, z.imag], axis=-1)


def _attention(x, weights, heads, rotate, mask=None):
    """Causal attention by loops over batch, head and query, from the
    definition in `CausalSelfAttention`'s docstring."""
    qkv_kernel, qkv_bias, out_kernel, out_bias = weights
    batch, length, features = x.shape
    depth = features // heads
    qkv = (x @ qkv_kernel.T + qkv_bias).reshape(batch, length, 3, heads, -1)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    if rotate:
        q, k = _rotate(q), _rotate(k)
    out = np.zeros((batch, length, heads, depth))
    for b in range(batch):
        for h in range(heads):
            for t in range(length):
                keys = [s for s in range(t + 1) if mask is None or mask[b, s]]
                if keys:
                    scores = np.array(
                        [q[b, t, h] @ k[b, s, h] for s in keys]
                    ) / np.sqrt(depth)
                    p = np.exp(scores - scores.max())
                    p /= p.sum()
                else:  # Nothing to look at: uniform over every key.
                    keys = range(length)
                    p = np.full(length, 1.0 / length)
                out[b, t, h] = sum(w * v[b, s, h] for w, s in zip(p, keys))
    return out.reshape(batch, length, features) @ out_kernel.T + out_bias


def _set_random_weights(layer, features, seed=1):
    """Sets `layer`'s weights by hand; returns them as `_attention` takes
    them."""
    rng = np.random.default_rng(seed)
    weights = [
        rng.normal(size=(3 * features, features)) / np.sqrt(features),
        rng.normal(size=(3 * features,)),
        rng.normal(size=(features, features)) / np.sqrt(features),
        rng.normal(size=(features,)),
    ]
    if not layer.built:
        layer.build((None, None, features))
    for variable, value in zip(
        [
            layer.qkv_kernel,
            layer.qkv_bias,
            layer.output_kernel,
            layer.output_bias,
        ],
        weights,
    ):
        variable.assign(value)
    return weights


class _MaskSpy(keras.layers.Layer):
    """Records the mask it is called with."""

    def __init__(self):
        super().__init__()
        self.supports_masking = True
        self.masks = []

    def call(self, inputs, mask=None):
        self.masks.append(mask)
        return inputs


def _train_one_step_and_reload(layer, tmp_path):
    """Trains a model around `layer` one step (the Linear below must learn,
    so the gradient crosses `layer`; `layer`'s own weights must move too)
    and checks it saves and loads."""
    inputs = keras.Input((4, 8))
    model = keras.Model(inputs, layer(mylayers.Linear(8)(inputs)))
    model.compile(keras.optimizers.SGD(0.1), "mse")
    before = [w.numpy().copy() for w in model.trainable_weights]
    x = _x((8, 4, 8)).astype("f4")
    model.fit(x, np.ones((8, 4, 8)), verbose=0)
    for old, new in zip(before, model.trainable_weights):
        assert not np.allclose(old, new.numpy()), new.path
    model.save(tmp_path / "m.keras")
    reloaded = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_array_equal(model(x), reloaded(x))


@pytest.mark.parametrize(
    "kwargs, shapes",
    [
        ({}, [(24, 8), (8, 8), (24,), (8,)]),
        ({"use_bias": False, "rotary": False}, [(24, 8), (8, 8)]),
    ],
)
def test_attention_basics(kwargs, shapes, tmp_path):
    layer = mylayers.CausalSelfAttention(2, **kwargs)
    assert layer(_x()).shape == (2, 4, 8)
    assert [tuple(w.shape) for w in layer.trainable_weights] == shapes
    assert layer.compute_output_shape((None, 5, 8)) == (None, 5, 8)
    assert layer(_x((1, 9, 8))).shape == (1, 9, 8)  # any length
    restored = mylayers.CausalSelfAttention.from_config(layer.get_config())
    assert restored.get_config() == layer.get_config()
    if kwargs:  # The default trains and reloads in layers_test.test_basics.
        _train_one_step_and_reload(
            mylayers.CausalSelfAttention(2, **kwargs), tmp_path
        )


@pytest.mark.parametrize("rotate", [False, True])
@pytest.mark.parametrize("mask", [None, MASK])
def test_attention_correctness(rotate, mask):
    layer = mylayers.CausalSelfAttention(2, rotary=rotate, dtype="float64")
    weights = _set_random_weights(layer, 8)
    x = _x()
    expected = _attention(x, weights, 2, rotate, mask)
    # The angles are float32 (rotary's docstring): 1e-7 of each feature.
    atol = 1e-6 if rotate else 1e-12
    np.testing.assert_allclose(
        layer(x, mask=mask).numpy(), expected, atol=atol, rtol=0
    )


def test_attention_is_causal():
    layer = mylayers.CausalSelfAttention(2)
    x = _x().astype("f4")
    changed = x.copy()
    changed[:, 2:] += 10.0
    y, y_changed = layer(x).numpy(), layer(changed).numpy()
    np.testing.assert_array_equal(y[:, :2], y_changed[:, :2])
    assert not np.allclose(y[:, 2:], y_changed[:, 2:])


def test_padded_key_gets_zero_attention_weight():
    """With `q = k = 0` every visible key scores the same, and with `v` and
    the output projection the identity, query t returns the mean of the
    inputs it attends to: the padded ones must not be among them."""
    layer = mylayers.CausalSelfAttention(1, rotary=False, use_bias=False)
    layer.build((None, None, 2))
    kernel = np.zeros((6, 2))
    kernel[4:] = np.eye(2)  # q = k = 0, v = x
    layer.set_weights([kernel, np.eye(2)])
    x = np.array([[[1.0, 0.0], [3.0, 0.0], [5.0, 0.0], [7.0, 0.0]]] * 2)
    mask = np.array([[True, False, True, True], [True, True, True, False]])
    y = layer(x, mask=mask).numpy()[..., 0]
    # Row 0: key 1 is padding, so query 2 averages keys 0 and 2 only.
    np.testing.assert_allclose(y[0], [1.0, 1.0, 3.0, 13 / 3], rtol=1e-6)
    # Row 1: the padded key comes last; a causal query never sees it.
    np.testing.assert_allclose(y[1], [1.0, 2.0, 3.0, 3.0], rtol=1e-6)
    # Without a mask the padded key counts.
    np.testing.assert_allclose(
        layer(x).numpy()[0, :, 0], [1, 2, 3, 4], rtol=1e-6
    )


def test_padded_keys_do_not_reach_other_positions():
    layer = mylayers.CausalSelfAttention(2)
    x = _x().astype("f4")
    changed = x.copy()
    changed[~MASK] = 1e3  # Whatever sits at the padding.
    y = layer(x, mask=MASK).numpy()
    y_changed = layer(changed, mask=MASK).numpy()
    np.testing.assert_array_equal(y[MASK], y_changed[MASK])


def test_fully_masked_row_is_finite_and_uniform():
    """Row 0's queries 0 and 1 see no key: they attend uniformly to every
    key, with finite outputs and gradients."""
    layer = mylayers.CausalSelfAttention(2)
    x = tf.constant(_x(), tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, mask=MASK)
        loss = tf.reduce_sum(y**2)
    grads = tape.gradient(loss, [x, *layer.trainable_weights])
    assert np.isfinite(y.numpy()).all()
    for grad in grads:
        assert np.isfinite(grad.numpy()).all()
    weights = [
        w.numpy().astype("f8")
        for w in (
            layer.qkv_kernel,
            layer.qkv_bias,
            layer.output_kernel,
            layer.output_bias,
        )
    ]
    expected = _attention(x.numpy().astype("f8"), weights, 2, True, MASK)
    np.testing.assert_allclose(y.numpy(), expected, atol=1e-5, rtol=0)
    np.testing.assert_allclose(y.numpy()[0, 0], y.numpy()[0, 1], rtol=1e-6)


def test_mask_passes_through():
    ids = keras.Input((None,), dtype="int32")
    h = mylayers.TokenEmbedding(5, 8, positions="none", mask_zero=True)(ids)
    spy = _MaskSpy()
    h = spy(mylayers.CausalSelfAttention(2)(h))
    spy_after_block = _MaskSpy()
    spy_after_block(mylayers.TransformerBlock(2, 16)(h))
    model = keras.Model(ids, spy_after_block.output)
    tokens = np.array([[0, 0, 3, 1], [2, 4, 1, 0]])
    model(tokens)
    np.testing.assert_array_equal(spy.masks[-1].numpy(), tokens != 0)
    np.testing.assert_array_equal(
        spy_after_block.masks[-1].numpy(), tokens != 0
    )
    layer = mylayers.CausalSelfAttention(2)
    assert layer.compute_mask(_x(), MASK) is MASK


def test_rotate_matches_the_complex_formula():
    x = _x((2, 5, 3, 8))
    np.testing.assert_allclose(
        rotary.rotate(tf.constant(x)).numpy(), _rotate(x), atol=1e-6
    )
    np.testing.assert_allclose(
        rotary.rotate(tf.constant(x), offset=7).numpy(),
        _rotate(x, offset=7),
        atol=1e-6,
    )
    assert rotary.rotate(tf.constant(x, tf.float16)).dtype == tf.float16


def test_rotate_heads_first_is_the_same_rotation():
    """`sequence_axis=2` rotates `(batch, heads, length, d)` as the default
    rotates `(batch, length, heads, d)`: the layout attention uses."""
    x = _x((2, 5, 3, 8))
    heads_first = np.transpose(x, (0, 2, 1, 3))
    for offset in (0, 4):
        rotated = rotary.rotate(
            tf.constant(heads_first), offset=offset, sequence_axis=2
        )
        np.testing.assert_allclose(
            np.transpose(rotated.numpy(), (0, 2, 1, 3)),
            _rotate(x, offset=offset),
            atol=1e-6,
        )
    negative = rotary.rotate(tf.constant(heads_first), sequence_axis=-2)
    np.testing.assert_array_equal(
        negative.numpy(),
        rotary.rotate(tf.constant(heads_first), sequence_axis=2).numpy(),
    )


def test_rotate_makes_scores_depend_on_relative_position_only():
    """`q` at position t and `k` at position s: `rot(q, t) . rot(k, s)`
    is the same for every pair with the same `t - s`, and changes with it."""
    rng = np.random.default_rng(2)
    q, k = rng.normal(size=(2, 8))
    length = 12
    queries = rotary.rotate(tf.constant(np.tile(q, (1, length, 1, 1))))
    keys = rotary.rotate(tf.constant(np.tile(k, (1, length, 1, 1))))
    scores = (queries[0, :, 0].numpy()) @ keys[0, :, 0].numpy().T  # [t, s]
    for lag in range(-length + 1, length):
        diagonal = np.diagonal(scores, offset=-lag)  # entries with t - s = lag
        np.testing.assert_allclose(diagonal, diagonal[0], atol=1e-5)
    lags = [np.diagonal(scores, offset=-lag)[0] for lag in range(length)]
    assert np.ptp(lags) > 0.5  # Positions matter: not all the same.
    # An offset is the same shift of every position.
    shifted = rotary.rotate(tf.constant(np.tile(q, (1, 4, 1, 1))), offset=3)
    np.testing.assert_allclose(
        shifted.numpy()[0, :, 0], queries.numpy()[0, 3:7, 0], atol=1e-5
    )


def test_rotary_attention_sees_relative_positions_only():
    """The same inputs shifted right by two padded positions: rotary
    attention with the mask gives the same outputs at the real ones."""
    layer = mylayers.CausalSelfAttention(2)
    x = _x((1, 3, 8)).astype("f4")
    padded = np.concatenate([np.zeros((1, 2, 8), "f4"), x], axis=1)
    mask = np.array([[False, False, True, True, True]])
    np.testing.assert_allclose(
        layer(padded, mask=mask).numpy()[:, 2:], layer(x).numpy(), atol=1e-5
    )


def test_transformer_block_basics():
    block = mylayers.TransformerBlock(2, 16, dropout=0.1)
    assert block(_x()).shape == (2, 4, 8)
    # RMSNorm 1, attention 4, MLPBlock 5 (norm, two kernels, two biases).
    assert len(block.trainable_weights) == 10
    assert block.compute_output_shape((None, 5, 8)) == (None, 5, 8)
    restored = mylayers.TransformerBlock.from_config(block.get_config())
    assert restored.get_config() == block.get_config()
    x = _x().astype("f4")
    np.testing.assert_array_equal(
        block(x, training=False).numpy(), block(x, training=False).numpy()
    )
    assert not np.allclose(block(x, training=True), block(x, training=False))
    # It trains one step and reloads in layers_test.test_basics, from the
    # example it declares.


def _rms_norm(x, scale):
    return x / np.sqrt(np.mean(x**2, axis=-1, keepdims=True) + 1e-6) * scale


def test_transformer_block_correctness():
    block = mylayers.TransformerBlock(2, 6, activation="relu", dtype="float64")
    block.build((None, None, 8))
    attention = _set_random_weights(block.attention, 8)
    rng = np.random.default_rng(3)
    values = {}
    for variable in (
        block.norm.scale,
        block.mlp.norm.scale,
        block.mlp.hidden.kernel,
        block.mlp.hidden.bias,
        block.mlp.out.kernel,
        block.mlp.out.bias,
    ):
        values[variable.path.split("/", 1)[1]] = rng.normal(size=variable.shape)
        variable.assign(values[variable.path.split("/", 1)[1]])
    x = _x()
    # h = x + Attention(RMSNorm(x)); y = h + Linear(relu(Linear(RMSNorm(h)))).
    h = x + _attention(
        _rms_norm(x, values["norm/scale"]), attention, 2, True, MASK
    )
    branch = np.maximum(
        _rms_norm(h, values["mlp/norm/scale"]) @ values["mlp/hidden/kernel"].T
        + values["mlp/hidden/bias"],
        0.0,
    )
    expected = h + branch @ values["mlp/out/kernel"].T + values["mlp/out/bias"]
    np.testing.assert_allclose(
        block(x, mask=MASK).numpy(), expected, atol=1e-5, rtol=0
    )


def test_transformer_block_masks_padded_keys():
    block = mylayers.TransformerBlock(2, 16)
    x = _x().astype("f4")
    changed = x.copy()
    changed[~MASK] = -50.0
    y = block(x, mask=MASK).numpy()
    np.testing.assert_array_equal(y[MASK], block(changed, mask=MASK)[MASK])
    assert not np.allclose(y[MASK], block(changed).numpy()[MASK])
    assert block.compute_mask(x, MASK) is MASK


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
@pytest.mark.parametrize(
    "make",
    [
        lambda policy: mylayers.CausalSelfAttention(2, dtype=policy),
        lambda policy: mylayers.TransformerBlock(2, 16, dtype=policy),
    ],
    ids=["CausalSelfAttention", "TransformerBlock"],
)
def test_mixed_precision(make, policy):
    layer = make(policy)
    x = tf.constant(_x(), tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, mask=MASK)  # with a fully masked row
        loss = tf.reduce_sum(tf.cast(y, tf.float32) ** 2)
    assert y.dtype == policy.split("_")[1]
    grads = tape.gradient(loss, [x, *layer.trainable_weights])
    for grad, weight in zip(grads[1:], layer.trainable_weights):
        assert grad.dtype == weight.dtype == tf.float32
    for tensor in [y, *grads]:
        assert np.isfinite(tensor.numpy()).all()
        assert np.any(tensor.numpy())


@pytest.mark.parametrize(
    "make",
    [
        lambda: mylayers.CausalSelfAttention(2, name="my_layer"),
        lambda: mylayers.TransformerBlock(2, 4, name="my_layer"),
    ],
    ids=["CausalSelfAttention", "TransformerBlock"],
)
def test_wrong_input_names_layer(make):
    layer = make()
    layer(_x())
    with pytest.raises(ValueError, match="my_layer"):
        layer(_x((2, 4, 6)))
    with pytest.raises(ValueError, match="my_layer"):
        make()(_x((4, 8)))  # one rank short


@pytest.mark.parametrize(
    "make, argument",
    [
        (lambda: mylayers.CausalSelfAttention(0), "num_heads"),
        (lambda: mylayers.CausalSelfAttention(2.0), "num_heads"),
        (lambda: mylayers.CausalSelfAttention(2, dropout=1.0), "dropout"),
        (lambda: mylayers.CausalSelfAttention(2, dropout=-0.1), "dropout"),
        (lambda: mylayers.CausalSelfAttention(2, dropout="0"), "dropout"),
        (lambda: mylayers.TransformerBlock(0, 8), "num_heads"),
        (lambda: mylayers.TransformerBlock(2, 0), "hidden_units"),
        (lambda: mylayers.TransformerBlock(2, 8, dropout=1), "dropout"),
        (lambda: mylayers.TransformerBlock(2, 8, epsilon=0), "epsilon"),
        # Built on 8 features: 3 heads do not divide them, and rotary
        # needs an even width per head.
        (lambda: mylayers.CausalSelfAttention(3)(_x()), "input_shape"),
        (lambda: mylayers.CausalSelfAttention(8)(_x()), "input_shape"),
        (lambda: rotary.rotate(tf.ones((1, 2, 1, 3))), "x.shape"),
        # The features' axis, and an axis x does not have.
        (
            lambda: rotary.rotate(tf.ones((1, 2, 1, 4)), sequence_axis=3),
            "sequence_axis",
        ),
        (
            lambda: rotary.rotate(tf.ones((1, 2, 1, 4)), sequence_axis=-5),
            "sequence_axis",
        ),
    ],
)
def test_invalid_arguments(make, argument):
    with pytest.raises(ValueError, match=f"Received: {argument}=") as caught:
        make()
    assert "\n" not in str(caught.value)


def test_width_error_names_num_heads():
    with pytest.raises(ValueError, match="num_heads=3"):
        mylayers.CausalSelfAttention(3)(_x())
    # Without rotary an odd width per head is fine.
    assert mylayers.CausalSelfAttention(8, rotary=False)(_x()).shape[-1] == 8
