"""Times `CustomModel.train_step` against Keras's built-in `train_step`.

  python benchmarks/train_step_bench.py [--repeats=15]

Both models have the same `mylayers.Linear` layers, weights, optimizer
(Adam) and batch. Each variant runs a shape's step count (about 0.3 s of
work) inside one `tf.function` (as the trainer does), `--repeats` times,
the variants interleaved in a fresh random order each round so drift on a
shared machine hits them alike. The table gives the median time per step
and the median of the per-round ratios to Keras's step; the last line is
the same as JSON.
"""

import json
import random

import harness  # sets KERAS_BACKEND before Keras loads
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

import models  # noqa: E402
import mylayers  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("repeats", 15, "Timed runs of each variant.")

# name: (input size, hidden sizes, batch size, steps per timed run). The
# small shape is the digits MLP, where fixed per-step costs show most.
SHAPES = {
    "mlp-784-1024x2-b512": (784, (1024, 1024), 512, 12),
    "mlp-64-256x2-b32": (64, (256, 256), 32, 500),
}
# name: (model class, CustomModel.compile options)
VARIANTS = {
    "keras": (keras.Model, {}),
    "custom": (models.CustomModel, {}),
    "custom+guard": (models.CustomModel, {"max_consecutive_non_finite": 10}),
    "custom+all": (
        models.CustomModel,
        {
            "global_clipnorm": 1.0,
            "max_consecutive_non_finite": 10,
            "log_grad_norm": True,
            "layer_grad_norms": True,
        },
    ),
}


def _model(model_class, options, inputs, hidden):
    keras.utils.set_random_seed(0)
    x = tensor = keras.Input((inputs,))
    for units in hidden:
        x = mylayers.Linear(units, activation="relu")(x)
    model = model_class(tensor, mylayers.Linear(10)(x))
    model.compile(
        optimizer=keras.optimizers.Adam(1e-4),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        **options,
    )
    model.optimizer.build(model.trainable_variables)
    return model


def _runner(model, batch, steps):
    @tf.function
    def run():
        for _ in tf.range(steps):
            model.train_step(batch)

    return run


def _bench(shape):
    inputs, hidden, batch_size, steps = SHAPES[shape]
    batch = (
        tf.random.stateless_normal((batch_size, inputs), seed=(0, 1)),
        tf.random.stateless_uniform(
            (batch_size,), seed=(0, 2), maxval=10, dtype=tf.int32
        ),
    )
    runners = {}
    for name, (model_class, options) in VARIANTS.items():
        runners[name] = _runner(
            _model(model_class, options, inputs, hidden), batch, steps
        )
    times = harness.interleave(
        {name: harness.per_call(runner, 1) for name, runner in runners.items()},
        FLAGS.repeats,
    )
    result = {}
    for name, summary in harness.summarize(times).items():
        result[name] = {
            "ms_per_step": summary["ms"] / steps,
            "ratio_to_keras": harness.pair_ratio(times, name, "keras")["wall"],
        }
    return result


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    random.seed(0)
    results = {shape: _bench(shape) for shape in SHAPES}
    print(f"{'shape':<22}{'variant':<14}{'ms/step':>10}{'x keras':>10}")
    for shape, variants in results.items():
        for name, r in variants.items():
            print(
                f"{shape:<22}{name:<14}{r['ms_per_step']:>10.3f}"
                f"{r['ratio_to_keras']:>10.3f}"
            )
    print(
        json.dumps(
            {
                "repeats": FLAGS.repeats,
                "steps": {shape: SHAPES[shape][3] for shape in SHAPES},
                "tf": tf.__version__,
                "keras": keras.__version__,
                "results": results,
            }
        )
    )


if __name__ == "__main__":
    app.run(main)
