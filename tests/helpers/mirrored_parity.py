"""`CustomModel.train_step`, and the trainer's LM, under `MirroredStrategy`
on 2 logical CPUs.

Run by `tests/mirrored_test.py` in a process of its own, because logical
devices must be configured before TensorFlow initializes (one process for
every such check: each costs seconds of start-up). Prints one JSON line of
measurements for the tests to assert on:

  python tests/helpers/mirrored_parity.py
"""

import json
import os
import sys

# Keras 3 picks its backend when first imported; these checks are TF's.
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import models  # noqa: E402
import mylayers  # noqa: E402

# run_helpers (tests/) and configs/ (the repository root), as pytest has them.
_TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [_TESTS, os.path.dirname(_TESTS)]

from run_helpers import tiny_lm_config  # noqa: E402

from template_trainer import setup  # noqa: E402

GLOBAL_BATCH = 16
STEPS = 20


def _data(n=64):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 4)).astype("float32")
    y = (x[:, 0] + x[:, 1] > 0).astype("int64")
    w = rng.uniform(0.5, 1.5, size=(n,)).astype("float32")
    return x, y, w


def _dataset(x, y, w, steps):
    ds = tf.data.Dataset.from_tensor_slices((x, y, w)).batch(GLOBAL_BATCH)
    return ds.repeat().take(steps)


def _model(model_class, optimizer, **options):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    hidden = mylayers.Linear(8, activation="tanh")(inputs)
    model = model_class(inputs, mylayers.Linear(2)(hidden))
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        **options,
    )
    model.optimizer.build(model.trainable_variables)
    return model


def _mixed_model(model_class, **options):
    """Two mixed_float16 layers, float32 logits, a LossScaleOptimizer."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    hidden = mylayers.Linear(8, dtype="mixed_float16")(inputs)
    model = model_class(inputs, mylayers.Linear(2, dtype="float32")(hidden))
    model.compile(
        optimizer=keras.optimizers.LossScaleOptimizer(
            keras.optimizers.SGD(0.01)
        ),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        **options,
    )
    model.optimizer.build(model.trainable_variables)
    return model


def _train(strategy, model, dataset):
    """Runs `model.train_step` on each batch; returns the last logs."""
    if strategy is None:
        step = tf.function(model.train_step)
        logs = None
        for batch in dataset:
            logs = step(batch)
        return logs

    @tf.function
    def step(batch):
        return strategy.run(model.train_step, args=(batch,))

    logs = None
    for batch in strategy.experimental_distribute_dataset(dataset):
        logs = step(batch)
    return {
        k: strategy.experimental_local_results(v)[0] for k, v in logs.items()
    }


def _max_diff(a, b):
    return max(
        float(np.abs(u.numpy() - v.numpy()).max())
        for u, v in zip(a.weights, b.weights)
    )


def _local_copies(strategy, model):
    """Every replica's copy of every weight and optimizer variable."""
    copies = []
    for v in model.weights + model.optimizer.variables:
        for local in strategy.experimental_local_results(v.value):
            copies.append(local.numpy())
    return copies


def main():
    # The trainer's own way to it, as `--config.distribution=mirrored
    # --config.cpu_devices=2` takes it: two logical CPUs, one replica each.
    strategy = setup.create_strategy(
        tiny_lm_config(distribution="mirrored", cpu_devices=2)
    )
    x, y, w = _data()
    dataset = _dataset(x, y, w, STEPS)
    report = {"replicas": strategy.num_replicas_in_sync}

    with strategy.scope():
        ours = _model(models.CustomModel, keras.optimizers.Adam(0.01))
        theirs = _model(keras.Model, keras.optimizers.Adam(0.01))
    single = _model(models.CustomModel, keras.optimizers.Adam(0.01))
    start = single.get_weights()
    _train(strategy, ours, dataset)
    _train(strategy, theirs, dataset)
    _train(None, single, dataset)
    report["ours_vs_keras"] = _max_diff(ours, theirs)
    report["ours_vs_single_device"] = _max_diff(ours, single)
    report["moved"] = max(
        float(np.abs(a - b).max()) for a, b in zip(start, single.get_weights())
    )

    # The guard, with a NaN on the first replica's half of the batch only.
    with strategy.scope():
        guarded = _model(
            models.CustomModel,
            keras.optimizers.Adam(0.01),
            max_consecutive_non_finite=3,
        )
    _train(strategy, guarded, _dataset(x, y, w, 1))
    before = _local_copies(strategy, guarded)
    bad_x = x.copy()
    bad_x[0, 0] = np.nan
    logs = _train(strategy, guarded, _dataset(bad_x, y, w, 1))
    after = _local_copies(strategy, guarded)
    report["guard_unchanged"] = all(
        np.array_equal(a, b) for a, b in zip(before, after)
    )
    report["guard_counted"] = int(logs["non_finite_steps"])

    # Clipping and grad_norm are of the all-reduced gradient.
    options = {
        "global_clipnorm": 0.05,
        "log_grad_norm": True,
        "layer_grad_norms": True,
    }
    with strategy.scope():
        clipped = _model(
            models.CustomModel, keras.optimizers.SGD(0.5), **options
        )
    clipped_single = _model(
        models.CustomModel, keras.optimizers.SGD(0.5), **options
    )
    few = _dataset(x, y, w, 5)
    logs = _train(strategy, clipped, few)
    single_logs = _train(None, clipped_single, few)
    report["clip_vs_single_device"] = _max_diff(clipped, clipped_single)
    # Keras's own `global_clipnorm` clips each replica's partial gradient
    # before the all-reduce, so it differs from the single-device update.
    with strategy.scope():
        keras_clipped = _model(
            keras.Model, keras.optimizers.SGD(0.5, global_clipnorm=0.05)
        )
    _train(strategy, keras_clipped, few)
    report["keras_clip_vs_single_device"] = _max_diff(
        keras_clipped, clipped_single
    )
    # Same layers, auto-named apart: compare in creation order.
    report["layer_norms_vs_single_device"] = max(
        abs(float(a.numpy()) - float(b.numpy()))
        for a, b in zip(
            clipped.step_state.values(), clipped_single.step_state.values()
        )
    )
    report["num_norms"] = len(clipped.step_state)
    report["grad_norm"] = float(logs["grad_norm"])
    report["grad_norm_single"] = float(single_logs["grad_norm"])

    # Loss scaling (mixed_float16) with an overflow on the second replica's
    # half of the batch only: every replica must skip the step.
    x_big = np.ones((GLOBAL_BATCH, 4), "float32")
    x_big[GLOBAL_BATCH // 2 :] = 300.0
    overflow = tf.data.Dataset.from_tensors((x_big, y[:GLOBAL_BATCH]))
    for name, model_class in (
        ("ours", models.CustomModel),
        ("keras", keras.Model),
    ):
        with strategy.scope():
            scaled = _mixed_model(model_class)
        start = _local_copies(strategy, scaled)
        _train(strategy, scaled, overflow)
        report[f"{name}_overflow_weights_finite"] = all(
            bool(np.isfinite(w).all()) for w in scaled.get_weights()
        )
        report[f"{name}_overflow_skipped"] = all(
            np.array_equal(a, b)
            for a, b in zip(start, _local_copies(strategy, scaled))
            if a.ndim  # the weights and slots; not the scale or counters
        )
        report[f"{name}_overflow_scale"] = float(
            scaled.optimizer.scale_loss(1.0)
        )
    # And without overflow: the same update and grad_norm as one device.
    normal = _dataset(x, y, w, 5)
    with strategy.scope():
        scaled = _mixed_model(models.CustomModel, log_grad_norm=True)
    scaled_single = _mixed_model(models.CustomModel, log_grad_norm=True)
    logs = _train(strategy, scaled, normal)
    single_logs = _train(None, scaled_single, normal)
    report["mixed_vs_single_device"] = _max_diff(scaled, scaled_single)
    report["mixed_grad_norm"] = float(logs["grad_norm"])
    report["mixed_grad_norm_single"] = float(single_logs["grad_norm"])

    # Keras's accumulation fails under the strategy: compile refuses it.
    try:
        with strategy.scope():
            _model(
                models.CustomModel,
                keras.optimizers.SGD(0.1),
                gradient_accumulation_steps=2,
            )
        report["accumulation_refused"] = False
    except ValueError as e:
        report["accumulation_refused"] = "one replica only" in str(e)

    # `fit` under the strategy, with the guard and a NaN batch.
    with strategy.scope():
        fitted = _model(
            models.CustomModel,
            keras.optimizers.Adam(0.01),
            max_consecutive_non_finite=2,
            log_grad_norm=True,
        )
    history = fitted.fit(
        bad_x, y, batch_size=GLOBAL_BATCH, shuffle=False, verbose=0
    ).history
    report["fit_non_finite_steps"] = history["non_finite_steps"][-1]
    report["fit_weights_finite"] = all(
        bool(np.isfinite(w).all()) for w in fitted.get_weights()
    )
    report["devices"] = list(strategy.extended.worker_devices)
    report["lm"] = lm_report(strategy)
    print(json.dumps(report))


def lm_report(strategy):
    """The trainer's tiny LM (`run_helpers.tiny_lm_config`) on `strategy`'s
    two replicas against one device: four steps of the same global batch.
    (The strategy of the checks above: a second one in this process would
    reuse its collective keys.)"""
    config = tiny_lm_config(batch_size=32, distribution="mirrored")
    mirrored = setup.create_run(config, None, strategy)
    single = setup.create_run(
        tiny_lm_config(batch_size=32), None, tf.distribute.get_strategy()
    )
    start = single.model.get_weights()
    same_start = all(
        np.array_equal(a, b)
        for a, b in zip(mirrored.model.get_weights(), start)
    )
    mirrored.train_steps(mirrored.iterator, tf.constant(4, tf.int64))
    for _ in range(4):
        single.model.train_step(next(single.iterator))
    pairs = list(zip(mirrored.model.get_weights(), single.model.get_weights()))
    return {
        "replicas": mirrored.strategy.num_replicas_in_sync,
        "same_start": same_start,
        "max_diff": max(float(np.abs(a - b).max()) for a, b in pairs),
        "moved": max(
            float(np.abs(a - b).max())
            for a, b in zip(single.model.get_weights(), start)
        ),
    }


if __name__ == "__main__":
    main()
