"""`mylayers.gradcheck` on layers written the way the Keras guides write
them ("Making new layers and models via subclassing", "Understanding
masking & padding"): no `**kwargs`, no `get_config`, weights from
`__init__` or `build`. Each is checked with no arguments beyond its inputs
and the call arguments its pattern is about, in float64 (the default) and
in float32 (`dtype=None`, as it is), and passes; each has a twin with one
deliberate mistake in its gradient that is caught in both precisions.

The checks run in eager mode only: what the modes add is tested in
gradcheck_test.py; here the point is the patterns.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

import mylayers
from mylayers.gradcheck import CallError, Status

PRECISIONS = ["float64", None]  # None: as it is, float32
RNG = np.random.default_rng(0)
X = RNG.normal(size=(2, 4)).astype("float32")


@pytest.fixture(autouse=True)
def _seeded():
    # Weights come from the guides' unseeded initializers.
    keras.utils.set_random_seed(0)


def _check(layer, inputs, dtype, **kwargs):
    return mylayers.gradcheck(
        layer, inputs, dtype=dtype, modes=["eager"], **kwargs
    )


def _scaled_backward(factor):
    """Identity whose backward pass multiplies by `factor`: -1 is a wrong
    sign, 2 a wrong scale."""

    @tf.custom_gradient
    def identity(y):
        return tf.identity(y), lambda dy: factor * dy

    return identity


flip_gradient = _scaled_backward(-1.0)
double_gradient = _scaled_backward(2.0)


# 1. The guide's first example, unchanged: weights made in __init__.
class GuideLinear(keras.layers.Layer):
    def __init__(self, units=32, input_dim=32):
        super().__init__()
        self.w = self.add_weight(
            shape=(input_dim, units),
            initializer="random_normal",
            trainable=True,
        )
        self.b = self.add_weight(
            shape=(units,), initializer="zeros", trainable=True
        )

    def call(self, inputs):
        return ops.matmul(inputs, self.w) + self.b


class FlippedGuideLinear(GuideLinear):
    def call(self, inputs):
        return flip_gradient(super().call(inputs))


# 2. Weights made in build(), from the input shape.
class Linear(keras.layers.Layer):
    def __init__(self, units=32):
        super().__init__()
        self.units = units

    def build(self, input_shape):
        self.w = self.add_weight(
            shape=(input_shape[-1], self.units),
            initializer="random_normal",
            trainable=True,
        )
        self.b = self.add_weight(
            shape=(self.units,), initializer="random_normal", trainable=True
        )

    def call(self, inputs):
        return ops.matmul(inputs, self.w) + self.b


@tf.custom_gradient
def _affine_batch_mean(x, w, b):
    """x w + b whose weight gradients average over the batch instead of
    summing: the slip of porting a per-sample numpy backward."""

    def grad(dy):
        n = tf.cast(tf.shape(x)[0], x.dtype)
        return (
            dy @ tf.transpose(w),
            tf.transpose(x) @ dy / n,
            tf.reduce_sum(dy, 0) / n,
        )

    return x @ w + b, grad


class BatchMeanLinear(Linear):
    def call(self, inputs):
        return _affine_batch_mean(inputs, self.w.value, self.b.value)


# 3. Layers nested in a layer (the guide's MLPBlock), with relu kinks.
class MLPBlock(keras.layers.Layer):
    def __init__(self, inner=Linear):
        super().__init__()
        self.linear_1 = inner(8)
        self.linear_2 = Linear(8)
        self.linear_3 = Linear(1)

    def call(self, inputs):
        x = self.linear_1(inputs)
        x = ops.relu(x)
        x = self.linear_2(x)
        x = ops.relu(x)
        return self.linear_3(x)


class DoubledLinear(Linear):
    def call(self, inputs):
        return double_gradient(super().call(inputs))


# 4. add_loss (the guide's ActivityRegularizationLayer).
class ActivityRegularization(keras.layers.Layer):
    def __init__(self, rate=1e-2):
        super().__init__()
        self.rate = rate

    def call(self, inputs):
        self.add_loss(self.rate * ops.mean(inputs**2))
        return ops.tanh(inputs)


class FlippedLossRegularization(ActivityRegularization):
    def call(self, inputs):
        self.add_loss(self.rate * flip_gradient(ops.mean(inputs**2)))
        return ops.tanh(inputs)


# 5. training=True with random numbers from a seed generator (the guide's
# CustomDropout).
class CustomDropout(keras.layers.Layer):
    def __init__(self, rate=0.5):
        super().__init__()
        self.rate = rate
        self.seed_generator = keras.random.SeedGenerator(1337)

    def call(self, inputs, training=None):
        if training:
            return keras.random.dropout(
                inputs, rate=self.rate, seed=self.seed_generator
            )
        return inputs


class MaskIgnoringDropout(CustomDropout):
    """Its backward scales every unit, dropped ones included."""

    def call(self, inputs, training=None):
        if not training:
            return inputs
        kept = keras.random.dropout(
            inputs, rate=self.rate, seed=self.seed_generator
        )

        @tf.custom_gradient
        def dropout(x):
            return tf.identity(kept), lambda dy: dy / (1 - self.rate)

        return dropout(inputs)


# 6. Non-trainable state updated in call (a BatchNorm-like running mean).
class RunningCenter(keras.layers.Layer):
    def __init__(self, momentum=0.9):
        super().__init__()
        self.momentum = momentum

    def build(self, input_shape):
        self.mean = self.add_weight(
            shape=input_shape[-1:], initializer="zeros", trainable=False
        )
        self.scale = self.add_weight(shape=input_shape[-1:], initializer="ones")

    def call(self, inputs, training=False):
        if training:
            mean = self.batch_mean(inputs)
            self.mean.assign(
                self.momentum * self.mean + (1 - self.momentum) * mean
            )
        else:
            mean = self.mean
        return (inputs - mean) * self.scale

    def batch_mean(self, inputs):
        return ops.mean(inputs, axis=0)


class ConstantMeanCenter(RunningCenter):
    """Treats the batch mean as a constant in the backward pass."""

    def batch_mean(self, inputs):
        return ops.stop_gradient(ops.mean(inputs, axis=0))


# 7. A mask passed by the caller: a softmax over time that leaves out the
# masked steps (written after the masking guide's TemporalSoftmax).
class TemporalSoftmax(keras.layers.Layer):
    def __init__(self):
        super().__init__()
        self.supports_masking = True

    def call(self, inputs, mask=None):
        assert mask is not None
        broadcast_float_mask = ops.expand_dims(ops.cast(mask, inputs.dtype), -1)
        inputs_exp = ops.exp(inputs) * broadcast_float_mask
        inputs_sum = ops.sum(inputs_exp, axis=1, keepdims=True)
        return inputs_exp / inputs_sum


class LeakyMaskSoftmax(TemporalSoftmax):
    """Its backward is that of a softmax over every step, masked or not."""

    def call(self, inputs, mask=None):
        y = super().call(inputs, mask)

        @tf.custom_gradient
        def leak(x):
            def grad(dy):
                z = tf.nn.softmax(x, axis=1)
                return z * (dy - tf.reduce_sum(dy * z, 1, keepdims=True))

            return tf.identity(y), grad

        return leak(inputs)


MASK = np.array([[True, True, False], [True, False, True]])
X_SEQUENCE = RNG.normal(size=(2, 3, 2)).astype("float32")


# 8. Integer inputs (token ids): the masking guide's CustomEmbedding.
class CustomEmbedding(keras.layers.Layer):
    def __init__(self, input_dim, output_dim, mask_zero=False):
        super().__init__()
        self.input_dim = input_dim
        self.output_dim = output_dim
        self.mask_zero = mask_zero

    def build(self, input_shape):
        self.embeddings = self.add_weight(
            shape=(self.input_dim, self.output_dim),
            initializer="random_normal",
            dtype="float32",
        )

    def call(self, inputs):
        inputs = ops.cast(inputs, "int32")
        return ops.take(self.embeddings, inputs, axis=0)

    def compute_mask(self, inputs, mask=None):
        if not self.mask_zero:
            return None
        return ops.not_equal(inputs, 0)


class LastWriteEmbedding(CustomEmbedding):
    """A hand-written backward that writes, not adds, the gradient of each
    token: a repeated token keeps only one of its gradients."""

    def call(self, inputs):
        ids = ops.cast(inputs, "int32")

        @tf.custom_gradient
        def lookup(table):
            def grad(dy):
                return tf.tensor_scatter_nd_update(
                    tf.zeros_like(table),
                    tf.reshape(ids, (-1, 1)),
                    tf.reshape(dy, (-1, self.output_dim)),
                )

            return tf.gather(table, ids), grad

        return lookup(self.embeddings.value)


TOKENS = np.array([[1, 3, 1], [2, 0, 3]], dtype="int32")  # 1 and 3 repeat


# 9. A mask made by one layer (compute_mask) and used by the next, in a
# Functional model.
class MaskedMean(keras.layers.Layer):
    def __init__(self):
        super().__init__()
        self.supports_masking = True

    def call(self, inputs, mask=None):
        weights = ops.expand_dims(ops.cast(mask, inputs.dtype), -1)
        return ops.sum(inputs * weights, axis=1) / ops.sum(weights, axis=1)

    def compute_mask(self, inputs, mask=None):
        return None


class FullLengthMean(MaskedMean):
    """Its backward divides by the full length, not the unmasked count."""

    def call(self, inputs, mask=None):
        y = super().call(inputs, mask)

        @tf.custom_gradient
        def mean(x):
            def grad(dy):
                weights = tf.cast(mask, x.dtype)[..., None]
                return weights * dy[:, None, :] / x.shape[1]

            return tf.identity(y), grad

        return mean(inputs)


def masked_model(pool):
    tokens = keras.Input(shape=(3,), dtype="int32")
    x = CustomEmbedding(5, 2, mask_zero=True)(tokens)
    return keras.Model(tokens, Linear(2)(pool()(x)))


# 10. Several inputs.
class Bilinear(keras.layers.Layer):
    def __init__(self, units=2):
        super().__init__()
        self.units = units

    def build(self, a_shape, b_shape):
        self.w = self.add_weight(
            shape=(self.units, a_shape[-1], b_shape[-1]),
            initializer="random_normal",
        )

    def call(self, a, b):
        return ops.einsum("bi,uij,bj->bu", a, self.w, self.b_side(b))

    def b_side(self, b):
        return b


class FlippedBilinear(Bilinear):
    def b_side(self, b):
        return flip_gradient(b)


# 11. A dict input.
class DictGate(keras.layers.Layer):
    def build(self, input_shape):
        self.w = self.add_weight(
            shape=(input_shape["gate"][-1], input_shape["x"][-1]),
            initializer="random_normal",
        )

    def call(self, inputs):
        gate = ops.sigmoid(self.project(inputs["gate"]))
        return inputs["x"] * gate

    def project(self, gate):
        return ops.matmul(gate, self.w)


class DoubledDictGate(DictGate):
    def project(self, gate):
        return double_gradient(super().project(gate))


DICT_INPUTS = {"x": X, "gate": RNG.normal(size=(2, 3)).astype("float32")}


# 12. Several outputs, and random numbers in inference too (the guide's VAE
# Encoder and its Sampling layer).
class Sampling(keras.layers.Layer):
    def __init__(self):
        super().__init__()
        self.seed_generator = keras.random.SeedGenerator(1337)

    def call(self, inputs):
        z_mean, z_log_var = inputs
        epsilon = keras.random.normal(
            shape=ops.shape(z_mean), seed=self.seed_generator
        )
        return z_mean + ops.exp(self.half(z_log_var)) * epsilon

    def half(self, z_log_var):
        return 0.5 * z_log_var


class Encoder(keras.layers.Layer):
    def __init__(self, latent_dim=2, intermediate_dim=4, sampling=Sampling):
        super().__init__()
        self.dense_proj = keras.layers.Dense(intermediate_dim, "tanh")
        self.dense_mean = keras.layers.Dense(latent_dim)
        self.dense_log_var = keras.layers.Dense(latent_dim)
        self.sampling = sampling()

    def call(self, inputs):
        x = self.dense_proj(inputs)
        z_mean = self.dense_mean(x)
        z_log_var = self.dense_log_var(x)
        z = self.sampling((z_mean, z_log_var))
        return z_mean, z_log_var, z


class NoHalfSampling(Sampling):
    """Its backward forgets the 0.5 of exp(0.5 log var)."""

    def half(self, z_log_var):
        return double_gradient(super().half(z_log_var))


# 13. keras.ops only, with dict outputs.
class GatedSoftplus(keras.layers.Layer):
    def __init__(self, units=3, flip=False):
        super().__init__()
        self.units = units
        self.flip = flip

    def build(self, input_shape):
        self.kernel = self.add_weight(
            shape=(input_shape[-1], 2 * self.units),
            initializer="glorot_uniform",
        )

    def call(self, inputs):
        value, gate = ops.split(ops.matmul(inputs, self.kernel), 2, axis=-1)
        gate = ops.sigmoid(gate)
        if self.flip:
            gate = flip_gradient(gate)
        return {"value": ops.softplus(value) * gate, "gate": gate}


# 14. Layers inside a subclassed model.
class TinyModel(keras.Model):
    def __init__(self, block=MLPBlock):
        super().__init__()
        self.block = block()
        self.regularization = ActivityRegularization()

    def call(self, inputs):
        return self.regularization(self.block(inputs))


# 15. A layer that cannot run in float64 (a constant made in float32):
# checked in float32, and the report says why.
class ScaledTanh(keras.layers.Layer):
    def __init__(self, flip=False):
        super().__init__()
        self.scale = tf.constant(1.7159)
        self.flip = flip

    def call(self, inputs):
        y = tf.tanh(inputs) * self.scale
        return flip_gradient(y) if self.flip else y


# (name, correct layer, broken twin, inputs, call arguments); the guide's
# first example, GuideLinear, has tests of its own below.
GALLERY = [
    ("build_linear", lambda: Linear(3), lambda: BatchMeanLinear(3), X, {}),
    ("nested_mlp", MLPBlock, lambda: MLPBlock(DoubledLinear), X, {}),
    ("add_loss", ActivityRegularization, FlippedLossRegularization, X, {}),
    (
        "seeded_dropout",
        CustomDropout,
        MaskIgnoringDropout,
        X,
        {"training": True},
    ),
    ("running_mean", RunningCenter, ConstantMeanCenter, X, {"training": True}),
    (
        "user_mask",
        TemporalSoftmax,
        LeakyMaskSoftmax,
        X_SEQUENCE,
        {"mask": MASK},
    ),
    (
        "int_inputs",
        lambda: CustomEmbedding(4, 2),
        lambda: LastWriteEmbedding(4, 2),
        TOKENS,
        {},
    ),
    (
        "compute_mask",
        lambda: masked_model(MaskedMean),
        lambda: masked_model(FullLengthMean),
        TOKENS,
        {},
    ),
    ("two_inputs", Bilinear, FlippedBilinear, [X, X[:, :3]], {}),
    ("dict_input", DictGate, DoubledDictGate, DICT_INPUTS, {}),
    ("tuple_outputs", Encoder, lambda: Encoder(sampling=NoHalfSampling), X, {}),
    (
        "keras_ops_dict_outputs",
        GatedSoftplus,
        lambda: GatedSoftplus(flip=True),
        X,
        {},
    ),
    (
        "subclassed_model",
        TinyModel,
        lambda: TinyModel(lambda: MLPBlock(DoubledLinear)),
        X,
        {},
    ),
    ("float32_only", ScaledTanh, lambda: ScaledTanh(flip=True), X, {}),
]
IDS = [case[0] for case in GALLERY]

# What the report must say for a pattern, besides passing.
SAYS = {
    "add_loss": "1 added loss(es)",
    "seeded_dropout": "same seed state",
    "running_mean": "updated non-trainable state",
    "int_inputs": "skipped (int32 input: no gradient",
    "compute_mask": "skipped (int32 input: no gradient",
    "tuple_outputs": "same seed state",
    "subclassed_model": "1 added loss(es)",
    "float32_only": "float64 failed (InvalidArgumentError",
}


# Checked as it is (dtype=None), float32_only has no float64 to fail.
SAYS_AS_IS = {**SAYS, "float32_only": "dtype=None: checked as it is"}


def _says(report):
    return "\n".join(
        [report.precision, *report.notes, *(r.label for r in report.rows)]
    )


def _expected_precision(name, dtype):
    return "float64" if dtype and name != "float32_only" else "float32"


def _held_weights(layer):
    """`(attribute, variable)` for the weights that `layer` and the layers
    in it hold (the gallery holds no weight in a list)."""
    for attribute, value in vars(layer).items():
        if isinstance(value, keras.Variable):
            yield attribute, value
        elif isinstance(value, keras.layers.Layer):
            yield from _held_weights(value)
    for inner in layer.layers if isinstance(layer, keras.Model) else []:
        yield from _held_weights(inner)


def _weight_names(layer):
    """The trainable weights' names: a weight made without `name=` as
    `my_layer/w` (not Keras's `my_layer/variable_3`); a named one (a
    `Dense`'s kernel, held in `_kernel`) by its path."""
    return {
        v.path
        if not v.name.startswith("variable")
        else f"{v.path.rpartition('/')[0]}/{attribute}"
        for attribute, v in _held_weights(layer)
        if v.trainable
    }


def _passes(name, make, inputs, kwargs, dtype):
    layer = make()
    report = _check(layer, inputs, dtype, **kwargs)
    assert report.ok
    assert report.precision.startswith(_expected_precision(name, dtype))
    says = (SAYS if dtype else SAYS_AS_IS).get(name)
    if says:
        assert says in _says(report)
    else:
        # A plain pattern: nothing held fixed, restored or skipped.
        assert not report.notes, report.notes
        assert not any(r.status is Status.SKIPPED for r in report.rows)
    # Every trainable weight was checked, and passed, named by the path of
    # its layer and the attribute that holds it.
    checked = {row.tensor for row in report.rows if row.label == "ok"}
    expected = _weight_names(layer)
    assert len(expected) == len(layer.trainable_variables)
    assert expected <= checked, report


def _fails(name, make_broken, inputs, kwargs, dtype):
    with pytest.raises(mylayers.GradcheckError) as caught:
        _check(make_broken(), inputs, dtype, **kwargs)
    report = caught.value.report
    assert report.worst().failed
    assert report.precision.startswith(_expected_precision(name, dtype))


@pytest.mark.parametrize("name, make, _, inputs, kwargs", GALLERY, ids=IDS)
def test_gallery_layer_passes_in_float64(name, make, _, inputs, kwargs):
    _passes(name, make, inputs, kwargs, "float64")


@pytest.mark.parametrize("name, _, broken, inputs, kwargs", GALLERY, ids=IDS)
def test_gallery_broken_twin_fails_in_float64(name, _, broken, inputs, kwargs):
    _fails(name, broken, inputs, kwargs, "float64")


@pytest.mark.slow
@pytest.mark.parametrize("name, make, broken, inputs, kwargs", GALLERY, ids=IDS)
def test_gallery_in_float32(name, make, broken, inputs, kwargs):
    """Each layer passes and its twin fails when checked as it is, in
    float32 (`dtype=None`). Slow (6-7 s in all): float32 is where a
    finite-difference checker cries wolf or goes blind, so every pattern
    is run there once more; the fast lane keeps the guide's first example
    and float32_only in float32."""
    _passes(name, make, inputs, kwargs, None)
    _fails(name, broken, inputs, kwargs, None)


def test_float32_only_layer_in_float32():
    case = GALLERY[IDS.index("float32_only")]
    _passes(*case[:2], *case[3:], None)
    _fails(case[0], *case[2:], None)


@pytest.mark.parametrize("dtype", ["float64", None])
def test_guide_first_example_unchanged(dtype):
    """The acceptance of issue #12: the guide's first layer passes with no
    arguments beyond its inputs, in every mode; its gradient with the sign
    flipped fails, in float64 and in float32."""
    kwargs = {} if dtype else {"dtype": None}
    layer = GuideLinear(3, 4)
    report = mylayers.gradcheck(layer, X, **kwargs)
    assert report.ok
    # Its unnamed weights, by the attributes that hold them.
    assert {r.tensor for r in report.rows} == {
        "inputs",
        f"{layer.name}/w",
        f"{layer.name}/b",
    }
    assert {r.mode for r in report.rows} == {"eager", "function", "jit"}
    assert report.precision.startswith("float64" if dtype else "float32")
    with pytest.raises(mylayers.GradcheckError) as caught:
        _check(FlippedGuideLinear(3, 4), X, dtype)
    worst = caught.value.report.worst()
    # The sign flip: actual and expected are opposite.
    np.testing.assert_allclose(worst.actual, -worst.expected, rtol=1e-2)
    assert f"actual {worst.actual:.6g}" in str(caught.value).splitlines()[0]


def test_state_and_policies_are_left_as_they_were():
    layer = RunningCenter()
    layer.build(X.shape)
    dropout = CustomDropout()
    seed = dropout.seed_generator.state.numpy()
    for target in (layer, dropout):
        _check(target, X, "float64", training=True)
    np.testing.assert_array_equal(layer.mean.numpy(), np.zeros(4))
    np.testing.assert_array_equal(dropout.seed_generator.state.numpy(), seed)
    assert layer.dtype_policy.name == "float32"
    assert layer.mean.dtype == "float32"


class UnseededNoise(keras.layers.Layer):
    """Random numbers from TensorFlow's global generator: new ones at each
    call, which gradcheck cannot fix."""

    def call(self, inputs, training=False):
        if training:
            return inputs + tf.random.normal(tf.shape(inputs), 0, 0.1)
        return inputs


def test_unfixable_randomness_is_skipped_with_the_reason():
    report = _check(UnseededNoise(), X, "float64", training=True)
    (row,) = report.rows
    assert row.label.startswith("skipped (two calls at the same point")
    assert "keras.random.SeedGenerator" in row.detail
    # The deterministic path is checked.
    assert _check(UnseededNoise(), X, "float64").rows[0].label == "ok"


@pytest.mark.parametrize(
    "layer, kwargs, says",
    [
        (
            Linear(3),
            {"training": None, "mask": MASK},
            "keyword argument 'mask'",
        ),
        (GuideLinear(3, 5), {}, "could not build"),
        (TemporalSoftmax(), {}, "AssertionError"),
    ],
    ids=["mask_not_accepted", "wrong_shape", "mask_missing"],
)
def test_a_target_that_cannot_run_is_one_line(layer, kwargs, says):
    with pytest.raises(CallError) as caught:
        _check(layer, X, "float64", **kwargs)
    message = str(caught.value)
    assert "\n" not in message
    assert says in message and "nothing was checked" in message
