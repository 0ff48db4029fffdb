"""Speed of the custom-gradient layers against their autodiff counterparts.

Run: `python benchmarks/layers_bench.py`. Prints a table, then the same
figures as JSON. Each pair is timed in interleaved rounds
(`harness.interleave`) so that drift on a shared machine hits both alike;
times are medians over rounds, and each ratio is the median of the
per-round ratios of one run.

- train step: one SGD step of a 2-layer MLP built from `ManualLinear` vs the
  same from `Linear`, in `tf.function` (target: ratio <= 1.05);
- softplus: forward and backward of `StableSoftplus` vs `tf.nn.softplus`
  (target: ratio <= 1.10).

`gradcheck_bench.py` times `mylayers.gradcheck` itself.
"""

import json
import statistics

import harness  # sets KERAS_BACKEND before Keras loads
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import mylayers  # noqa: E402

ROUNDS = 15


def interleaved(fn_a, fn_b, calls, rounds=ROUNDS):
    """Median wall seconds per call of `fn_a` and `fn_b` over interleaved
    rounds, and the median of the per-round ratios a / b."""
    walls = harness.walls(
        harness.interleave(
            {
                "a": harness.per_call(fn_a, calls),
                "b": harness.per_call(fn_b, calls),
            },
            rounds,
        )
    )
    return (
        statistics.median(walls["a"]),
        statistics.median(walls["b"]),
        harness.median_ratio(walls["a"], walls["b"]),
    )


def _train_step(layer_class, x, y):
    inputs = keras.Input(x.shape[1:])
    hidden = layer_class(512, activation="relu")(inputs)
    model = keras.Model(inputs, layer_class(10)(hidden))
    optimizer = keras.optimizers.SGD(1e-3)
    optimizer.build(model.trainable_variables)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables)
        return loss

    return step


def bench_train_step():
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(256, 784)), tf.float32)
    y = tf.constant(rng.integers(0, 10, size=(256,)))
    manual, auto, ratio = interleaved(
        _train_step(mylayers.ManualLinear, x, y),
        _train_step(mylayers.Linear, x, y),
        calls=20,
    )
    return {
        "name": "train step ManualLinear / Linear",
        "a_ms": manual * 1e3,
        "b_ms": auto * 1e3,
        "ratio": ratio,
        "target": "<= 1.05",
        "passed": ratio <= 1.05,
    }


def _softplus_step(activation, x):
    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = activation(x)
        # Return y too, or grappler prunes the forward pass as dead code.
        return y, tape.gradient(y, x)

    # x is an argument, not a captured constant that grappler would fold.
    return lambda: step(x)


def bench_softplus():
    x = tf.constant(
        np.random.default_rng(1).normal(scale=5, size=(1024, 1024)),
        tf.float32,
    )
    stable, reference, ratio = interleaved(
        _softplus_step(mylayers.StableSoftplus(), x),
        _softplus_step(tf.nn.softplus, x),
        calls=20,
    )
    return {
        "name": "fwd+bwd StableSoftplus / tf.nn.softplus (1M floats)",
        "a_ms": stable * 1e3,
        "b_ms": reference * 1e3,
        "ratio": ratio,
        "target": "<= 1.10",
        "passed": ratio <= 1.10,
    }


def main():
    results = [bench_train_step(), bench_softplus()]
    print(f"{'benchmark':58} {'A ms':>9} {'B ms':>9} {'A/B':>6}  target")
    for r in results:
        print(
            f"{r['name']:58} {r['a_ms']:9.3f} {r['b_ms']:9.3f} "
            f"{r['ratio']:6.3f}  {r['target']} "
            f"{'ok' if r['passed'] else 'MISSED'}"
        )
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
