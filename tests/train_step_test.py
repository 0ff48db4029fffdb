"""Tests of `CustomModel.train_step` against Keras's built-in step."""

import collections
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import models
import mylayers

HELPERS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "helpers")
# XLA compiles each step anew (~1 s a test): the fast lane runs the other
# two modes.
MODES = ["eager", "function", pytest.param("jit", marks=pytest.mark.slow)]


def _data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype("float32")
    y = (x[:, 0] + x[:, 1] > 0).astype("int64")
    w = rng.uniform(0.5, 1.5, size=(n,)).astype("float32")
    return x, y, w


def _batches(steps=20, batch=16, seed=0):
    """`steps` batches of (x, y, sample_weight), cycling over `_data`."""
    x, y, w = _data(seed=seed)
    n = len(x) // batch
    return [
        tuple(
            tf.constant(a[(i % n) * batch : (i % n + 1) * batch])
            for a in (x, y, w)
        )
        for i in range(steps)
    ]


def _build(model_class=models.CustomModel, dropout=False):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    hidden = mylayers.Linear(8, activation="tanh")(inputs)
    if dropout:
        hidden = keras.layers.Dropout(0.5)(hidden)
    return model_class(inputs, mylayers.Linear(2)(hidden))


def _compile(model, optimizer=None, **kwargs):
    model.compile(
        optimizer=optimizer or keras.optimizers.Adam(0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        **kwargs,
    )
    model.optimizer.build(model.trainable_variables)
    return model


def _step_fn(model, mode):
    if mode == "eager":
        return model.train_step
    return tf.function(model.train_step, jit_compile=mode == "jit")


def _run(model, batches, mode):
    step = _step_fn(model, mode)
    logs = None
    for batch in batches:
        logs = step(batch)
    return logs


def _state(model):
    """Copies of every weight and optimizer variable, as numpy arrays."""
    return [np.array(v) for v in model.weights + model.optimizer.variables]


def _assert_weights_close(a, b, atol):
    assert len(a.weights) == len(b.weights)
    for u, v in zip(a.weights, b.weights):
        np.testing.assert_allclose(np.array(u), np.array(v), atol=atol)


@pytest.mark.parametrize("mode", MODES)
def test_twenty_steps_equal_keras_builtin_step(mode):
    batches = _batches()
    ours = _compile(_build())
    theirs = _compile(_build(keras.Model))
    theirs.set_weights(ours.get_weights())
    start = ours.get_weights()
    _run(ours, batches, mode)
    _run(theirs, batches, mode)
    _assert_weights_close(ours, theirs, atol=1e-6)
    # Training moved the weights, so equality is not trivially true.
    assert max(np.abs(a - b).max() for a, b in zip(start, ours.get_weights()))
    for u, v in zip(ours.optimizer.variables, theirs.optimizer.variables):
        np.testing.assert_allclose(np.array(u), np.array(v), atol=1e-6)


def test_default_step_graph_has_the_ops_of_keras_builtin_step():
    # Why the default step costs what Keras's costs: the same graph, op
    # type for op type (benchmarks/train_step_bench.py times it).
    batch = _batches(steps=1)[0]
    graphs = [
        tf.function(_compile(_build(cls)).train_step)
        .get_concrete_function(batch)
        .graph
        for cls in (models.CustomModel, keras.Model)
    ]
    ours, theirs = (
        collections.Counter(op.type for op in g.get_operations())
        for g in graphs
    )
    assert ours == theirs


@pytest.mark.parametrize("mode", MODES)
def test_all_options_on_but_inactive_equal_keras_builtin_step(mode):
    # A clip norm no gradient reaches and a guard no step trips must leave
    # the update as Keras's.
    batches = _batches()
    ours = _compile(
        _build(),
        global_clipnorm=1e6,
        max_consecutive_non_finite=3,
        log_grad_norm=True,
        layer_grad_norms=True,
    )
    theirs = _compile(_build(keras.Model))
    theirs.set_weights(ours.get_weights())
    logs = _run(ours, batches, mode)
    _run(theirs, batches, mode)
    _assert_weights_close(ours, theirs, atol=1e-6)
    assert int(logs["non_finite_steps"]) == 0


@pytest.mark.parametrize("mode", MODES)
def test_global_clipnorm_equals_keras_optimizer_clipping(mode):
    batches = _batches(steps=5)
    ours = _compile(_build(), keras.optimizers.SGD(0.5), global_clipnorm=0.05)
    theirs = _compile(
        _build(keras.Model), keras.optimizers.SGD(0.5, global_clipnorm=0.05)
    )
    unclipped = _compile(
        _build(), keras.optimizers.SGD(0.5), log_grad_norm=True
    )
    logs = _run(unclipped, batches[:1], mode)
    assert float(logs["grad_norm"]) > 0.05  # clipping is active
    _run(ours, batches, mode)
    _run(theirs, batches, mode)
    _assert_weights_close(ours, theirs, atol=1e-6)
    _assert_weights_close(ours, _build(), atol=0.05 * 0.5 * 5 + 1e-6)


@pytest.mark.parametrize("mode", MODES)
def test_grad_norm_and_layer_norms_are_those_of_the_gradients(mode):
    x, y, w = _batches(steps=1)[0]
    model = _compile(
        _build(),
        keras.optimizers.SGD(0.0),
        log_grad_norm=True,
        layer_grad_norms=True,
    )
    with tf.GradientTape() as tape:
        loss = model.compute_loss(
            x=x, y=y, y_pred=model(x, training=True), sample_weight=w
        )
    gradients = tape.gradient(loss, model.trainable_variables)
    logs = _run(model, [(x, y, w)], mode)
    expected = np.sqrt(sum(np.sum(np.square(g)) for g in gradients))
    np.testing.assert_allclose(float(logs["grad_norm"]), expected, rtol=1e-5)
    state = {k: float(v) for k, v in model.step_state.items()}
    layers = {k for k in state if k.startswith("grad_norm/")}
    assert layers == {
        "grad_norm/" + v.path.rpartition("/")[0]
        for v in model.trainable_variables
    }
    for layer in layers:
        squares = [
            np.sum(np.square(g))
            for g, v in zip(gradients, model.trainable_variables)
            if "grad_norm/" + v.path.rpartition("/")[0] == layer
        ]
        np.testing.assert_allclose(state[layer], np.sqrt(sum(squares)), 1e-5)
    np.testing.assert_allclose(state["grad_norm"], expected, rtol=1e-5)


@pytest.mark.parametrize("mode", ["function", "jit"])
def test_accumulating_k_micro_batches_equals_one_big_batch(mode):
    k, b = 4, 8
    x, y, w = _data()
    accumulating = _compile(_build(), gradient_accumulation_steps=k)
    big = _compile(_build())
    big.set_weights(accumulating.get_weights())
    start = big.get_weights()
    micro = [(x[i * b : (i + 1) * b], y[i * b : (i + 1) * b]) for i in range(k)]
    step = _step_fn(accumulating, mode)
    for i, batch in enumerate(micro):
        for before, now in zip(start, accumulating.get_weights()):
            np.testing.assert_array_equal(before, now)  # no update yet
        step(tuple(map(tf.constant, batch)))
    _run(big, [(x[: k * b], y[: k * b])], mode)
    _assert_weights_close(accumulating, big, atol=1e-5)
    assert int(accumulating.optimizer.iterations) == 1


@pytest.fixture
def policy():
    """Sets a global dtype policy for one test, then restores float32."""
    yield keras.mixed_precision.set_dtype_policy
    keras.mixed_precision.set_dtype_policy("float32")


def _sgd_update(batches, unscaled=False):
    """The weight change of 3 SGD steps under the current dtype policy."""
    model = _compile(_build(), keras.optimizers.SGD(1.0))
    if unscaled:
        model.optimizer.scale_loss = lambda loss: loss
    start = model.get_weights()
    _run(model, batches, "function")
    return model, [b - a for a, b in zip(start, model.get_weights())]


def _assert_update_close(update, reference, rtol):
    """Each weight's change within `rtol` of its float32 size."""
    for u, r in zip(update, reference):
        np.testing.assert_allclose(u, r, atol=rtol * np.abs(r).max())


@pytest.mark.parametrize(
    "name, rtol", [("mixed_float16", 1e-2), ("mixed_bfloat16", 5e-2)]
)
def test_mixed_precision_update_matches_float32(policy, name, rtol):
    """The tolerance is that of the compute dtype's 11 (float16) or 8
    (bfloat16) significand bits, accumulated over a few layers and steps."""
    batches = _batches(steps=3)
    _, reference = _sgd_update(batches)
    policy(name)
    model, update = _sgd_update(batches)
    scaled = isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert scaled == (name == "mixed_float16")
    assert model.layers[1].compute_dtype == name.split("_")[1]
    assert all(w.dtype == "float32" for w in model.weights)
    _assert_update_close(update, reference, rtol)


def test_accumulation_under_loss_scaling_equals_one_big_batch(policy):
    policy("mixed_float16")
    x, y, _ = _data()
    accumulating = _compile(
        _build(), keras.optimizers.SGD(1.0), gradient_accumulation_steps=2
    )
    big = _compile(_build(), keras.optimizers.SGD(1.0))
    start = big.get_weights()
    _run(accumulating, [(x[:16], y[:16]), (x[16:32], y[16:32])], "function")
    _run(big, [(x[:32], y[:32])], "function")
    update = [b - a for a, b in zip(start, accumulating.get_weights())]
    reference = [b - a for a, b in zip(start, big.get_weights())]
    _assert_update_close(update, reference, 1e-2)


def test_mixed_float16_check_catches_missing_loss_scaling(policy):
    # Without `scale_loss` the optimizer still divides by the loss scale:
    # every update shrinks ~32768x, silently. The check above must see it.
    batches = _batches(steps=3)
    _, reference = _sgd_update(batches)
    policy("mixed_float16")
    _, update = _sgd_update(batches, unscaled=True)
    with pytest.raises(AssertionError):
        _assert_update_close(update, reference, 1e-2)
    ratio = np.abs(reference[0]).max() / np.abs(update[0]).max()
    assert ratio > 1_000


def _nan_batch():
    x, y, w = _batches(steps=1)[0]
    return (tf.tensor_scatter_nd_update(x, [[0, 0]], [np.nan]), y, w)


@pytest.mark.parametrize("mode", MODES)
def test_nan_batch_changes_no_weight_and_no_optimizer_state(mode):
    good = _batches(steps=3)
    model = _compile(_build(), max_consecutive_non_finite=3)
    step = _step_fn(model, mode)
    step(good[0])  # Adam's slots and iterations are no longer zero
    before = _state(model)
    logs = step(_nan_batch())
    for a, b in zip(before, _state(model)):
        np.testing.assert_array_equal(a, b)
    assert int(logs["non_finite_steps"]) == 1
    assert int(model.step_state["consecutive_non_finite"]) == 1
    logs = step(good[1])
    assert int(logs["non_finite_steps"]) == 1
    assert int(model.step_state["consecutive_non_finite"]) == 0
    assert int(model.optimizer.iterations) == 2
    assert any((a != b).any() for a, b in zip(before, _state(model)))


def test_nan_micro_batch_leaves_the_accumulation_untouched():
    k = 2
    batches = _batches(steps=2, batch=8)
    model = _compile(
        _build(), gradient_accumulation_steps=k, max_consecutive_non_finite=3
    )
    clean = _compile(_build(), gradient_accumulation_steps=k)
    step, clean_step = _step_fn(model, "function"), _step_fn(clean, "function")
    step(batches[0])
    clean_step(batches[0])
    before = _state(model)
    step(_nan_batch())
    for a, b in zip(before, _state(model)):
        np.testing.assert_array_equal(a, b)
    step(batches[1])
    clean_step(batches[1])
    _assert_weights_close(model, clean, atol=0)
    assert int(model.optimizer.iterations) == 1


def test_nan_batch_under_loss_scaling_changes_no_weight(policy):
    policy("mixed_float16")
    model = _compile(_build(), max_consecutive_non_finite=3)
    step = _step_fn(model, "function")
    step(_batches(steps=1)[0])
    before = _state(model)
    logs = step(_nan_batch())
    for a, b in zip(before, _state(model)):
        np.testing.assert_array_equal(a, b)
    assert int(logs["non_finite_steps"]) == 1


@pytest.mark.parametrize("mode", ["eager", "function"])
def test_consecutive_non_finite_steps_stop_a_step_loop(mode):
    model = _compile(_build(), max_consecutive_non_finite=2)
    step = _step_fn(model, mode)
    step(_nan_batch())
    model.check_non_finite()  # One in a row: under the limit.
    step(_nan_batch())
    with pytest.raises(
        FloatingPointError, match="max_consecutive_non_finite=2"
    ):
        model.check_non_finite()
    assert int(model.step_state["non_finite_steps"]) == 2
    # Stopped for good: a later step, a finite one too, changes nothing
    # and counts nothing, so a check after many steps still sees it.
    before = _state(model)
    step(_batches(steps=1)[0])
    for a, b in zip(before, _state(model)):
        np.testing.assert_array_equal(a, b)
    assert int(model.step_state["non_finite_steps"]) == 2
    with pytest.raises(FloatingPointError):
        model.check_non_finite()


def test_consecutive_non_finite_steps_stop_a_trainer_style_loop():
    # trainer.py runs many steps per call in a `tf.range` loop.
    x, y, w = _data()
    x[:] = np.nan
    dataset = tf.data.Dataset.from_tensor_slices((x, y, w)).batch(8).repeat()
    model = _compile(_build(), max_consecutive_non_finite=3)

    @tf.function
    def train_steps(iterator, num_steps):
        for _ in tf.range(num_steps):
            model.train_step(next(iterator))

    train_steps(iter(dataset), tf.constant(10))
    assert int(model.step_state["non_finite_steps"]) == 3
    with pytest.raises(FloatingPointError, match="3 consecutive"):
        model.check_non_finite()


@pytest.mark.parametrize("jit_compile", [False, True])
def test_consecutive_non_finite_steps_stop_fit(jit_compile):
    x, y, _ = _data()
    x[16:] = np.nan  # batches 2, 3 and 4 of 4
    model = _compile(
        _build(), max_consecutive_non_finite=2, jit_compile=jit_compile
    )
    with pytest.raises(
        FloatingPointError, match="2 consecutive training steps"
    ):
        model.fit(x, y, batch_size=16, shuffle=False, verbose=0)
    assert int(model.step_state["non_finite_steps"]) == 2
    assert all(np.isfinite(w).all() for w in model.get_weights())


def test_fit_logs_non_finite_steps_and_grad_norm():
    x, y, _ = _data()
    x[16:32] = np.inf
    model = _compile(_build(), max_consecutive_non_finite=2, log_grad_norm=True)
    history = model.fit(x, y, batch_size=16, shuffle=False, verbose=0)
    assert history.history["non_finite_steps"] == [1]
    assert np.isfinite(history.history["grad_norm"][0])
    # The skipped batch is left out of the epoch's metrics, not NaN.
    assert np.isfinite(history.history["loss"][0])
    assert history.history["accuracy"][0] > 0.0
    assert all(np.isfinite(w).all() for w in model.get_weights())


def test_logged_loss_equals_evaluate_with_every_option_on():
    x, y, w = _data()
    model = _compile(
        _build(),
        keras.optimizers.SGD(0.0),
        global_clipnorm=0.01,
        max_consecutive_non_finite=2,
        log_grad_norm=True,
        layer_grad_norms=True,
        jit_compile=True,
    )
    history = model.fit(x, y, sample_weight=w, batch_size=16, verbose=0)
    results = model.evaluate(
        x, y, sample_weight=w, batch_size=16, verbose=0, return_dict=True
    )
    assert results["loss"] > 0.0
    np.testing.assert_allclose(
        history.history["loss"][0], results["loss"], 1e-6
    )
    np.testing.assert_allclose(
        history.history["accuracy"][0], results["accuracy"], 1e-6
    )


class _Unused(models.CustomModel):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.used = mylayers.Linear(2, name="used")
        self.unused = mylayers.Linear(2, name="unused")

    def call(self, x):
        self.unused(x)  # built, but the output is dropped
        return self.used(x)


def _unused(**kwargs):
    model = _Unused()
    model(tf.zeros((1, 4)))
    return _compile(model, **kwargs)


def test_variables_without_gradient_raise_naming_them():
    model = _unused()
    with pytest.raises(ValueError, match=r"unused/kernel.*unused/bias"):
        model.train_step(_batches(steps=1)[0])


def test_variables_without_gradient_can_warn_and_train_the_rest(caplog):
    model = _unused(missing_gradients="warn")
    unused = [np.array(v) for v in model.unused.weights]
    used = [np.array(v) for v in model.used.weights]
    model.train_step(_batches(steps=1)[0])
    assert "unused/kernel" in caplog.text
    for a, v in zip(unused, model.unused.weights):
        np.testing.assert_array_equal(a, v)
    assert all(
        (a != np.array(v)).any() for a, v in zip(used, model.used.weights)
    )


def test_predict_step_runs_in_inference_mode():
    model = _compile(_build(dropout=True))
    x = _data()[0]
    expected = model(x, training=False)
    np.testing.assert_array_equal(model.predict_step((x,)), expected)
    np.testing.assert_allclose(model.predict(x, verbose=0), expected, atol=1e-6)


def test_compile_options_survive_saving(tmp_path):
    model = models.MLPClassifier((4,), 2, hidden_units=(8,))
    _compile(model, global_clipnorm=0.5, max_consecutive_non_finite=4)
    model.fit(*_data()[:2], verbose=0)
    model.save(tmp_path / "m.keras")
    reloaded = keras.models.load_model(tmp_path / "m.keras")
    config = reloaded.get_compile_config()
    assert config["global_clipnorm"] == 0.5
    assert config["max_consecutive_non_finite"] == 4
    assert set(reloaded.step_state) == {
        "non_finite_steps",
        "consecutive_non_finite",
    }


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"global_clipnorm": 0.0}, "global_clipnorm=0.0"),
        ({"global_clipnorm": -1}, "global_clipnorm=-1"),
        ({"gradient_accumulation_steps": 1}, "gradient_accumulation_steps=1"),
        ({"gradient_accumulation_steps": 2.0}, "gradient_accumulation_steps"),
        ({"max_consecutive_non_finite": 0}, "max_consecutive_non_finite=0"),
        ({"max_consecutive_non_finite": True}, "max_consecutive_non_finite"),
        ({"missing_gradients": "ignore"}, "missing_gradients='ignore'"),
    ],
)
def test_invalid_compile_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _build().compile(optimizer="sgd", loss="mse", **kwargs)


def test_accumulation_on_an_already_accumulating_optimizer_raises():
    optimizer = keras.optimizers.SGD(gradient_accumulation_steps=3)
    with pytest.raises(ValueError, match="gradient_accumulation_steps=2"):
        _build().compile(
            optimizer=optimizer, loss="mse", gradient_accumulation_steps=2
        )
