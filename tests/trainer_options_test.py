"""Every trainer-level option of `configs/default.py` has an effect.

Each test asserts what the option changes, so it fails if the trainer
ignores the option. (Options of the data pipeline are in
`input_pipeline_test.py`; the step cadence, keep-K, `steps_per_loop`,
`val_every_epochs` and the default best metric in `train_test.py`;
distribution in `distribution_test.py`.)
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from run_helpers import tiny_config

import template_trainer
from template_trainer import checkpoints, setup
from template_trainer.data import pipeline

INFO = pipeline.DatasetInfo((8, 8, 1), 10, 1302, 140, 355, "train")


@pytest.fixture(autouse=True)
def _float32_afterwards():
    yield
    keras.mixed_precision.set_global_policy("float32")


def _model(total_steps=100, **overrides):
    config = tiny_config(**overrides)
    strategy = tf.distribute.get_strategy()
    return setup.compiled_model(config, INFO, strategy, total_steps)


def _apply_constant_gradient(model, value, times):
    """Applies a gradient of `value` everywhere; returns the first kernel's
    change."""
    variables = model.trainable_variables
    before = variables[0].numpy()
    for _ in range(times):
        model.optimizer.apply(
            [tf.fill(v.shape, value) for v in variables], variables
        )
    return variables[0].numpy() - before


@pytest.mark.parametrize(
    "options, expected",
    [
        # Keras's SGD: m = 0.9 m - 0.1 g; w += m (nesterov: 0.9 m - 0.1 g).
        ({"optimizer": "sgd", "momentum": 0.0}, -0.4),
        ({"optimizer": "sgd", "momentum": 0.9}, -0.58),
        ({"optimizer": "sgd", "momentum": 0.9, "nesterov": True}, -0.922),
        # Adam's first steps move by the learning rate whatever g is.
        ({"optimizer": "adam"}, -0.2),
    ],
    ids=["sgd", "momentum", "nesterov", "adam"],
)
def test_optimizer_options_decide_the_update(options, expected):
    model = _model(learning_rate=0.1, **options)
    change = _apply_constant_gradient(model, 2.0, times=2)
    np.testing.assert_allclose(change, expected, rtol=1e-5)


def test_adamw_decays_the_weights():
    model = _model(optimizer="adamw", learning_rate=0.1, weight_decay=0.5)
    before = model.trainable_variables[0].numpy()
    change = _apply_constant_gradient(model, 2.0, times=1)
    # Decay by lr * weight_decay * w, then Adam's step of the learning rate.
    np.testing.assert_allclose(change, -0.05 * before - 0.1, atol=1e-6)


def _learning_rates(model, updates):
    """The model's learning rate after each number of `updates`."""
    rate = model.optimizer.get_config()["learning_rate"]
    if not isinstance(rate, dict):
        return [rate] * len(updates)
    schedule = keras.optimizers.schedules.deserialize(rate)
    return [float(schedule(u)) for u in updates]


@pytest.mark.parametrize("accumulation", [1, 2])
def test_warmup_cosine_spans_the_run(accumulation):
    """Warm-up to the peak, then cosine to 0 at the last update (with
    accumulation, the optimizer updates once per k steps)."""
    model = _model(
        total_steps=110 * accumulation,
        schedule="warmup_cosine",
        learning_rate=1.0,
        warmup_steps=10,
        gradient_accumulation_steps=accumulation,
    )
    np.testing.assert_allclose(
        _learning_rates(model, [0, 5, 10, 60, 110]),
        [0.0, 0.5, 1.0, 0.5, 0.0],
        atol=1e-6,
    )


def test_piecewise_and_constant_schedules():
    model = _model(
        schedule="piecewise",
        learning_rate=1.0,
        boundaries=(10, 20),
        decay_factor=0.1,
    )
    np.testing.assert_allclose(
        _learning_rates(model, [0, 10, 11, 20, 21]),
        [1.0, 1.0, 0.1, 0.1, 0.01],
        rtol=1e-6,
    )
    model = _model(schedule="constant", learning_rate=0.25)
    assert _learning_rates(model, [0, 99]) == [0.25, 0.25]


@pytest.mark.parametrize(
    "policy, compute, scaled",
    [
        ("float32", "float32", False),
        ("mixed_bfloat16", "bfloat16", False),
        ("mixed_float16", "float16", True),
    ],
)
def test_mixed_precision_sets_the_compute_dtype(policy, compute, scaled):
    model = _model(mixed_precision=policy)
    dense = [layer for layer in model.layers if layer.weights][0]
    assert dense.compute_dtype == compute
    assert dense.weights[0].dtype == "float32"
    is_scaled = isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert is_scaled == scaled


def _run(**overrides):
    config = tiny_config(optimizer="sgd", momentum=0.0, **overrides)
    return setup.create_run(config, None, tf.distribute.get_strategy())


def _weights(model):
    return [v.numpy() for v in model.trainable_variables]


def test_steps_are_traced_without_autograph_as_fit_traces_them(monkeypatch):
    """Keras's `fit` traces `train_step` and `test_step` without AutoGraph;
    the trainer's loops do too (converting Keras's source cost each start
    seconds), and trace each step once, as `fit` does (the loop calls the
    step twice). Each step records the AutoGraph status it is traced
    under."""
    # No public getter for the status: TensorFlow's own module for it.
    from tensorflow.python.autograph.core import ag_ctx

    import models

    seen = []
    for name in ("train_step", "test_step"):
        original = getattr(models.CustomModel, name)

        def recording(self, data, original=original, name=name):
            seen.append((name, ag_ctx.control_status_ctx().status))
            return original(self, data)

        monkeypatch.setattr(models.CustomModel, name, recording)
    run = _run()
    run.train_steps(run.iterator, 1)
    batch = (np.zeros((4, 8, 8, 1), "float32"), np.zeros(4, "int64"))
    dataset = tf.data.Dataset.from_tensor_slices(batch).batch(2)
    setup.make_evaluate(run.model, tf.distribute.get_strategy(), dataset)()
    ours = list(seen)
    seen.clear()
    run.model.fit(*batch, epochs=1, verbose=0)
    run.model.evaluate(*batch, verbose=0)
    assert seen == ours  # one trace of each step, in the same order
    assert dict(seen) == {
        "train_step": ag_ctx.Status.DISABLED,
        "test_step": ag_ctx.Status.DISABLED,
    }


@pytest.mark.slow
def test_global_clipnorm_bounds_the_update():
    """Slow: a run built for one step; the fast
    lane checks the step's clipping against Keras's in train_step_test."""
    run = _run(learning_rate=1.0, global_clipnorm=1e-3)
    before = _weights(run.model)
    run.train_steps(run.iterator, 1)
    change = [a - b for a, b in zip(_weights(run.model), before)]
    norm = np.sqrt(sum(np.sum(np.square(c)) for c in change))
    # SGD with lr 1 moves by the clipped gradient: its norm is the clip.
    assert norm == pytest.approx(1e-3, rel=1e-3)


@pytest.mark.slow
def test_gradient_accumulation_updates_once_per_k_steps():
    run = _run(gradient_accumulation_steps=2)
    before = _weights(run.model)
    run.train_steps(run.iterator, 1)
    for a, b in zip(_weights(run.model), before):
        np.testing.assert_array_equal(a, b)
    run.train_steps(run.iterator, 1)
    assert any((a != b).any() for a, b in zip(_weights(run.model), before))


@pytest.mark.slow
def test_non_finite_guard_skips_a_nan_batch():
    run = _run(max_consecutive_non_finite=3)
    before = _weights(run.model)
    x = np.full((4, 8, 8, 1), np.nan, "float32")
    logs = run.model.train_step((x, np.zeros(4, "int64")))
    assert int(logs["non_finite_steps"]) == 1
    for a, b in zip(_weights(run.model), before):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
@pytest.mark.parametrize("on", [True, False])
def test_gradient_norm_logging(on):
    run = _run(log_grad_norm=on, layer_grad_norms=on)
    logs = run.train_steps(run.iterator, 1)
    assert ("grad_norm" in logs) == on
    layer_norms = [
        k for k in run.model.step_state if k.startswith("grad_norm/")
    ]
    assert bool(layer_norms) == on


def test_missing_gradients_reaches_compile():
    for value in ("raise", "warn"):
        model = _model(missing_gradients=value)
        assert model.get_compile_config()["missing_gradients"] == value


def _xla_calls(run):
    """Ops of the train loop's graph that XLA must compile."""
    function = run.train_steps.function.get_concrete_function(
        run.iterator, tf.constant(1, tf.int64)
    )
    library = function.graph.as_graph_def().library.function
    return [f for f in library if f.attr["_XlaMustCompile"].b]


@pytest.mark.slow
@pytest.mark.parametrize("jit", [True, False])
def test_jit_compile_compiles_the_step_with_xla(jit):
    assert bool(_xla_calls(_run(jit_compile=jit))) == jit


@pytest.mark.slow
def test_seed_decides_the_weights_and_the_data():
    def start(seed):
        run = _run(seed=seed)
        images, _ = next(run.iterator)
        return _weights(run.model)[0], images.numpy()

    first, again, other = start(0), start(0), start(1)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(first, other):
        assert not np.array_equal(a, b)


@pytest.mark.slow
def test_best_metric_and_mode_choose_the_best_step(tmp_path):
    """An odd choice on purpose: the highest validation loss, which is the
    first epoch's. A trainer that ignored `best_metric` (keeping the
    highest accuracy) or `best_mode` (keeping the lowest loss) would keep
    a later step, the last one here."""
    metric, mode = "val_loss", "max"
    config = tiny_config(num_epochs=3, best_metric=metric, best_mode=mode)
    metrics = template_trainer.train_and_evaluate(config, str(tmp_path))
    records = template_trainer.summaries.read_records(
        tmp_path / "metrics.jsonl"
    )
    values = {r["step"]: r[metric] for r in records if metric in r}
    pick = min if mode == "min" else max
    assert metrics["best_step"] == pick(values, key=values.get)
    assert metrics["best_step"] != 123
    assert metrics[f"best_{metric}"] == pytest.approx(pick(values.values()))
    # An earlier model: tested and exported of its own.
    assert metrics["best_test_loss"] != metrics["test_loss"]
    final = (tmp_path / "model.keras").read_bytes()
    assert (tmp_path / "best_model.keras").read_bytes() != final


@pytest.mark.parametrize(
    "metric, mode, expected",
    [
        ("val_loss", "auto", "min"),
        ("val_accuracy", "auto", "max"),
        ("val_loss", "max", "max"),
    ],
)
def test_best_mode_auto_suits_the_metric(metric, mode, expected):
    """The default, "auto", keeps the lowest loss and the highest accuracy
    (a fixed "max" once kept the worst model by `val_loss`)."""
    assert setup.best_mode(metric, mode) == expected


class _Clock:
    """`time` for `checkpoints`, whose `monotonic()` moves by `tick`."""

    def __init__(self, tick):
        self.now, self.tick = 0.0, tick

    def monotonic(self):
        self.now += self.tick
        return self.now


@pytest.mark.slow
def test_checkpoint_every_secs_saves_by_time(tmp_path, monkeypatch):
    """With a clock that moves a second each time it is read, every loop
    call saves. (Without time passing, only the step cadence and the end
    save: `train_test.py`'s run, under the default 600 s.)"""
    monkeypatch.setattr(checkpoints, "time", _Clock(1.0))
    config = tiny_config(
        num_epochs=3,
        steps_per_loop=20,
        checkpoint_every_secs=1,
        max_checkpoints_to_keep=100,
    )
    template_trainer.train_and_evaluate(config, str(tmp_path))
    index = tf.train.get_checkpoint_state(str(tmp_path / "checkpoints"))
    steps = [int(p.rsplit("-", 1)[1]) for p in index.all_model_checkpoint_paths]
    # Loop calls end at 20, 40, 41, 61, 81, 82, 102, 122, 123.
    assert steps == [20, 40, 41, 61, 81, 82, 102, 122, 123]


def test_loop_calls_of_any_length_share_one_trace():
    """The loop is traced once, whatever the number of steps per call (the
    last call of an epoch is shorter; a save splits a call): a trace of the
    step costs seconds."""
    run = _run()
    for num_steps in (1, 2, 3):
        run.train_steps(run.iterator, num_steps)
    assert run.train_steps.function.experimental_get_tracing_count() == 1
    assert int(run.step) == 6
