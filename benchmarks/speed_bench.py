"""Speed of the trainer against Keras's own path and the CPU's limit.

  python benchmarks/speed_bench.py            # prints a table, then JSON

Every comparison is a median over interleaved rounds (every variant once
a round, in a fresh random order: `harness.interleave`) in one process,
reported as a ratio, because the machines this runs on are shared and
noisy: a ratio measured side by side holds where absolute times drift.
"""

import contextlib
import io
import json
import os
import statistics
import sys
import tempfile
import time

import harness  # sets KERAS_BACKEND before Keras loads
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

import models  # noqa: E402
from configs import default  # noqa: E402
from template_trainer import loop as trainer  # noqa: E402
from template_trainer import setup  # noqa: E402
from template_trainer.data import pipeline  # noqa: E402

ROUNDS = 7


def matmul_gflops(n=2048, calls=20):
    """GFLOP/s of an n x n fp32 matmul: the CPU's practical peak."""
    run = harness.per_call(_reference_matmul(tf.float32, n), calls)
    return 2 * n**3 / statistics.median(run().wall for _ in range(ROUNDS)) / 1e9


def _compile(model, optimizer="adam"):
    model.compile(
        optimizer=keras.optimizers.get(
            {"class_name": optimizer, "config": {"learning_rate": 1e-3}}
        ),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        **(
            {"log_grad_norm": True}
            if isinstance(model, models.CustomModel)
            else {}
        ),
    )
    return model


def _data(input_shape, batch):
    x = tf.random.uniform((batch, *input_shape))
    y = tf.random.uniform((batch,), maxval=10, dtype=tf.int64)
    return tf.data.Dataset.from_tensors((x, y)).repeat()


def _ours(
    model_fn, input_shape, batch, steps, jit_compile=False, optimizer="adam"
):
    model = _compile(model_fn(), optimizer)
    step = tf.Variable(0, dtype=tf.int64)
    train_steps = setup.make_train_steps(
        model, tf.distribute.get_strategy(), step, jit_compile
    )
    iterator = iter(_data(input_shape, batch))
    train_steps(iterator, tf.constant(steps, tf.int64))  # trace

    def run():
        clock = harness.Clock()
        train_steps(iterator, tf.constant(steps, tf.int64))
        float(model.metrics[0].result())
        return clock.per_step(steps)

    return run


def _keras_fit(model_fn, input_shape, batch, steps):
    model = _compile(model_fn())
    data = _data(input_shape, batch)

    def run():
        timer = harness.step_timer(5)
        model.fit(
            data,
            steps_per_epoch=steps + 5,
            epochs=1,
            verbose=0,
            callbacks=[timer],
        )
        return timer.per_step()

    return run


def _keras_mlp(input_shape, hidden, num_classes=10):
    inputs = keras.Input(input_shape)
    x = keras.layers.Flatten()(inputs)
    for units in hidden:
        x = keras.layers.Dense(units, activation="relu")(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes)(x))


def _keras_cnn(input_shape, filters=(32, 64), hidden=(128,)):
    inputs = keras.Input(input_shape)
    x = inputs
    for channels in filters:
        x = keras.layers.Conv2D(channels, 3, padding="same", activation="relu")(
            x
        )
        x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Flatten()(x)
    for units in hidden:
        x = keras.layers.Dense(units, activation="relu")(x)
    return keras.Model(inputs, keras.layers.Dense(10)(x))


def _walls(runs):
    """`harness.interleave` over `ROUNDS` rounds: wall seconds per call (or
    step) of each run, by name."""
    return harness.walls(harness.interleave(runs, ROUNDS))


def bench_steps():
    """Trainer + CustomModel + mylayers vs plain Keras layers + fit."""
    results = {}
    shapes = {
        "mlp_784-1024-1024-10_b512": (
            (784,),
            512,
            20,
            lambda: models.MLPClassifier((784,), 10, hidden_units=(1024, 1024)),
            lambda: _keras_mlp((784,), (1024, 1024)),
        ),
        "mlp_digits_64-256-256-10_b32": (
            (8, 8, 1),
            32,
            400,
            lambda: models.MLPClassifier((8, 8, 1), 10),
            lambda: _keras_mlp((8, 8, 1), (256, 256)),
        ),
        "cnn_digits_b32": (
            (8, 8, 1),
            32,
            200,
            lambda: models.CNNClassifier((8, 8, 1), 10),
            lambda: _keras_cnn((8, 8, 1)),
        ),
    }
    for name, (shape, batch, steps, ours_fn, theirs_fn) in shapes.items():
        keras.utils.set_random_seed(0)
        times = _walls(
            {
                "ours": _ours(ours_fn, shape, batch, steps),
                "ours_xla": _ours(
                    ours_fn, shape, batch, steps, jit_compile=True
                ),
                "keras_fit": _keras_fit(theirs_fn, shape, batch, steps),
            }
        )
        results[name] = {
            "ours_ms": 1e3 * statistics.median(times["ours"]),
            "ours_xla_ms": 1e3 * statistics.median(times["ours_xla"]),
            "keras_fit_ms": 1e3 * statistics.median(times["keras_fit"]),
            "ours_over_keras_fit": harness.median_ratio(
                times["ours"], times["keras_fit"]
            ),
            "xla_over_no_xla": harness.median_ratio(
                times["ours_xla"], times["ours"]
            ),
        }
    return results


def _reference_matmul(dtype, n=2048):
    a = tf.cast(tf.random.normal((n, n)), dtype)
    b = tf.cast(tf.random.normal((n, n)), dtype)
    return tf.function(
        lambda: tf.reduce_sum(tf.cast(tf.matmul(a, b), tf.float32))
    )


def _step_matmuls(batch=512, sizes=(784, 1024, 1024, 10)):
    """The eight matmuls of one MLP training step, and nothing else.

    The forward pass, the weight gradients and the input gradients of the
    second and third layers, in the transposes `mylayers.Linear` (kernel
    stored as (units, in)) and its autodiff gradient use.
    """
    x = tf.random.normal((batch, sizes[0]))
    kernels = [
        tf.random.normal((units, fan_in))
        for fan_in, units in zip(sizes, sizes[1:])
    ]
    upstream = tf.random.normal((batch, sizes[-1]))

    @tf.function
    def matmuls():
        inputs = [x]
        for kernel in kernels:  # forward: y = x W^T
            inputs.append(tf.matmul(inputs[-1], kernel, transpose_b=True))
        total, grad = tf.constant(0.0), upstream
        for i in reversed(range(len(kernels))):
            # dL/dW = g^T x; dL/dx = g W (none for the data).
            total += tf.reduce_sum(tf.matmul(grad, inputs[i], transpose_a=True))
            if i:
                grad = tf.matmul(grad, kernels[i])
        return total + tf.reduce_sum(inputs[-1])

    return matmuls


def bench_matmul_shapes(batch=512, sizes=(784, 1024, 1024, 10)):
    """Each of the MLP step's eight matmuls alone, as used and at its best.

    "As used" is in the transposes `mylayers.Linear` and its autodiff
    gradient use; "best" is the fastest of the four transpose variants of
    the same product, so the best total is what any kernel layout could
    hope for. Fractions are of the 2048^2 fp32 matmul, interleaved.
    """
    products = []  # (name, m, k, n, transpose_a, transpose_b) as used
    for i, (fan_in, units) in enumerate(zip(sizes, sizes[1:]), 1):
        products.append((f"forward {i}", batch, fan_in, units, False, True))
        products.append((f"dW {i}", units, batch, fan_in, True, False))
        if i > 1:
            products.append((f"dx {i}", batch, units, fan_in, False, False))

    def product(m, k, n, transpose_a, transpose_b):
        a = tf.random.normal((k, m) if transpose_a else (m, k))
        b = tf.random.normal((n, k) if transpose_b else (k, n))
        return tf.function(
            lambda: tf.reduce_sum(
                tf.matmul(
                    a, b, transpose_a=transpose_a, transpose_b=transpose_b
                )
            )
        )

    runs = {"reference": harness.per_call(_reference_matmul(tf.float32), 20)}
    for name, m, k, n, *_ in products:
        for ta in (False, True):
            for tb in (False, True):
                runs[(name, ta, tb)] = harness.per_call(
                    product(m, k, n, ta, tb), 30
                )
    times = {
        key: statistics.median(values) for key, values in _walls(runs).items()
    }
    peak = 2 * 2048**3 / times.pop("reference") / 1e9
    shapes, used_total, best_total = [], 0.0, 0.0
    for name, m, k, n, ta, tb in products:
        used = times[(name, ta, tb)]
        best = min(
            times[(name, a, b)] for a in (False, True) for b in (False, True)
        )
        used_total, best_total = used_total + used, best_total + best
        shapes.append(
            {
                "product": f"{name}: {m}x{k}x{n}",
                "as_used_ms": 1e3 * used,
                "as_used_fraction": 2 * m * k * n / used / 1e9 / peak,
                "best_fraction": 2 * m * k * n / best / 1e9 / peak,
            }
        )
    return {
        "matmul_2048_gflops": peak,
        "shapes": shapes,
        "as_used_fraction": _mlp_gflops(1e3 * used_total) / peak,
        "best_fraction": _mlp_gflops(1e3 * best_total) / peak,
    }


def bench_mlp_limits():
    """What bounds the MLP 784-1024-1024-10 step at batch 512.

    Interleaved in the same rounds: the 2048^2 reference matmul in float32
    and bfloat16; the step's eight matmuls alone (its ceiling: no ReLU,
    softmax, bias or optimizer work can make the step faster than its
    matmuls); the trainer's step with Adam, with SGD instead (no optimizer
    state to update), and with Adam under `mixed_bfloat16` (bf16 matmuls,
    which this CPU runs natively where it has AVX512_BF16 or AMX).
    """

    def mlp():
        return models.MLPClassifier((784,), 10, hidden_units=(1024, 1024))

    runs = {
        "matmul_fp32": harness.per_call(_reference_matmul(tf.float32), 20),
        "matmul_bf16": harness.per_call(_reference_matmul(tf.bfloat16), 20),
        "step_matmuls": harness.per_call(_step_matmuls(), 20),
        "adam_step": _ours(mlp, (784,), 512, 20),
        "sgd_step": _ours(mlp, (784,), 512, 20, optimizer="sgd"),
    }
    # The policy is read when layers are built and when `compile` picks the
    # optimizer; the traced step keeps it.
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        runs["adam_step_bf16"] = _ours(mlp, (784,), 512, 20)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    times = _walls(runs)
    n = 2048
    peaks = {
        dtype: [2 * n**3 / t / 1e9 for t in times[f"matmul_{dtype}"]]
        for dtype in ("fp32", "bf16")
    }

    def fraction(name, dtype="fp32"):
        return statistics.median(
            _mlp_gflops(1e3 * t) / p for t, p in zip(times[name], peaks[dtype])
        )

    results = {
        f"matmul_2048_{dtype}_gflops": statistics.median(peaks[dtype])
        for dtype in peaks
    }
    for name in ("step_matmuls", "adam_step", "sgd_step", "adam_step_bf16"):
        results[f"{name}_ms"] = 1e3 * statistics.median(times[name])
    for name in ("step_matmuls", "adam_step", "sgd_step"):
        results[f"{name}_fraction_of_matmul"] = fraction(name)
    results["adam_step_bf16_fraction_of_bf16_matmul"] = fraction(
        "adam_step_bf16", "bf16"
    )
    results["bf16_over_fp32_step"] = harness.median_ratio(
        times["adam_step_bf16"], times["adam_step"]
    )
    return results


def bench_pipeline(step_ms):
    """Digits batches per second from the input pipeline alone.

    Drained inside a `tf.function`, as the trainer's loop consumes it, so
    Python's per-batch cost is not counted.
    """

    @tf.function
    def drain(iterator, count):
        total = tf.constant(0.0)
        for _ in tf.range(count):
            images, _ = next(iterator)
            total += images[0, 0, 0, 0]
        return total

    with tempfile.TemporaryDirectory() as data_dir:
        train = pipeline.create_datasets(
            "digits", data_dir, False, 0.1, 32, 512, 10_000, 0, max_shift=1
        ).train
        iterator = iter(train)
        drain(iterator, tf.constant(200))
        batches, rates = 5000, []
        for _ in range(ROUNDS):
            start = time.perf_counter()
            drain(iterator, tf.constant(batches)).numpy()
            rates.append(batches / (time.perf_counter() - start))
    per_second = statistics.median(rates)
    consumed = 1e3 / step_ms
    return {
        "pipeline_batches_per_s": per_second,
        "train_steps_per_s": consumed,
        "pipeline_over_consumption": per_second / consumed,
    }


def _train(workdir, allow_config_change=False, **overrides):
    config = default.get_config()
    config.update(overrides)
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # the progress bars
        trainer.train_and_evaluate(config, workdir, allow_config_change)
    return time.perf_counter() - start


def bench_default_run():
    """Time to 98% validation accuracy, checkpoint overhead, resume cost."""
    results = {}
    with tempfile.TemporaryDirectory() as root:
        # Time to 98%: validate every epoch, read the loop's clock.
        _train(os.path.join(root, "curve"), val_every_epochs=1)
        with open(os.path.join(root, "curve", "metrics.jsonl")) as f:
            records = [json.loads(line) for line in f]
        reached = [r for r in records if r.get("val_accuracy", 0) >= 0.98]
        results["seconds_to_98pct"] = (
            reached[0]["elapsed_s"] if reached else None
        )
        results["final_val_accuracy"] = records[-1]["val_accuracy"]

        # Checkpoint overhead against only the final save: the default
        # cadence (every 600 s: none in a ~4 s run) and, for scale, a save
        # every 10 epochs (410 steps).
        none = {"checkpoint_every_secs": 0, "checkpoint_every_steps": 0}
        every_10_epochs = {
            "checkpoint_every_secs": 0,
            "checkpoint_every_steps": 410,
        }
        runs = {"default": {}, "every_10_epochs": every_10_epochs, "none": none}
        seconds = {name: [] for name in runs}
        for i in range(3):
            for name, overrides in runs.items():
                workdir = os.path.join(root, f"{name}{i}")
                seconds[name].append(_train(workdir, **overrides))
        for name in ("default", "every_10_epochs"):
            results[f"checkpoint_overhead_{name}"] = (
                harness.median_ratio(seconds[name], seconds["none"]) - 1
            )
        results["run_seconds"] = statistics.median(seconds["default"])

        # Resume: the finished run one epoch longer, against a fresh
        # one-epoch run. Both build, trace, train one epoch and export; the
        # difference is what resuming costs.
        pairs = []
        for i in range(3):
            resumed = _train(
                os.path.join(root, f"default{i}"), True, num_epochs=101
            )
            fresh = _train(os.path.join(root, f"f{i}"), num_epochs=1)
            pairs.append((resumed, fresh))
        results["resume_extra_seconds"] = statistics.median(
            r - f for r, f in pairs
        )
    return results


def _mlp_gflops(step_ms):
    # Forward 2*B*P, weight gradients 2*B*P, and input gradients for the
    # second and third layers only (the data needs none).
    params = 784 * 1024 + 1024 * 1024 + 1024 * 10
    flops = 2 * 512 * (2 * params + params - 784 * 1024)
    return flops / (step_ms / 1e3) / 1e9


def _print_table(results):
    print(f"machine: {results['machine']}")
    print(f"matmul 2048^2 fp32: {results['matmul_2048_gflops']:.0f} GFLOP/s")
    print(
        f"{'model':30} {'ours ms':>8} {'XLA ms':>8} {'fit ms':>8} "
        f"{'ours/fit':>8} {'XLA/ours':>8}"
    )
    for name, r in results["steps"].items():
        print(
            f"{name:30} {r['ours_ms']:8.3f} {r['ours_xla_ms']:8.3f} "
            f"{r['keras_fit_ms']:8.3f} {r['ours_over_keras_fit']:8.3f} "
            f"{r['xla_over_no_xla']:8.3f}"
        )
    print(
        f"MLP step: {results['mlp_gflops']:.0f} GFLOP/s, "
        f"{100 * results['mlp_fraction_of_matmul']:.0f}% of the matmul's "
        f"(XLA: {100 * results['mlp_xla_fraction_of_matmul']:.0f}%)"
    )
    c = results["mlp_limits"]
    print(
        f"MLP step, same rounds, against the {c['matmul_2048_fp32_gflops']:.0f}"
        f" GFLOP/s fp32 matmul: its eight matmuls alone "
        f"{c['step_matmuls_ms']:.2f} ms = "
        f"{100 * c['step_matmuls_fraction_of_matmul']:.0f}% (the ceiling); "
        f"Adam {c['adam_step_ms']:.2f} ms = "
        f"{100 * c['adam_step_fraction_of_matmul']:.0f}%; SGD "
        f"{c['sgd_step_ms']:.2f} ms = "
        f"{100 * c['sgd_step_fraction_of_matmul']:.0f}%"
    )
    print(
        f"MLP step under mixed_bfloat16: {c['adam_step_bf16_ms']:.2f} ms, "
        f"{c['bf16_over_fp32_step']:.2f}x the float32 step's time; "
        f"{100 * c['adam_step_bf16_fraction_of_bf16_matmul']:.0f}% of the "
        f"{c['matmul_2048_bf16_gflops']:.0f} GFLOP/s bf16 matmul"
    )
    m = results["matmul_shapes"]
    print("the MLP step's matmuls one by one, % of the fp32 matmul:")
    for shape in m["shapes"]:
        print(
            f"  {shape['product']:24} {shape['as_used_ms']:6.3f} ms "
            f"{100 * shape['as_used_fraction']:4.0f}% as used, "
            f"{100 * shape['best_fraction']:4.0f}% in the best transposes"
        )
    print(
        f"  all eight: {100 * m['as_used_fraction']:.0f}% as used, "
        f"{100 * m['best_fraction']:.0f}% in the best transposes"
    )
    p = results["pipeline"]
    print(
        f"input pipeline: {p['pipeline_batches_per_s']:.0f} batches/s, "
        f"{p['pipeline_over_consumption']:.1f}x what the digits step uses"
    )
    d = results["default_run"]
    print(
        f"default digits run: 98% validation accuracy after "
        f"{d['seconds_to_98pct']:.1f} s of training; checkpoint overhead "
        f"{100 * d['checkpoint_overhead_default']:.1f}% at the default "
        f"cadence, {100 * d['checkpoint_overhead_every_10_epochs']:.1f}% "
        f"saving every 410 steps, of a {d['run_seconds']:.1f} s run; "
        f"resuming costs {d['resume_extra_seconds']:.2f} s"
    )


def main():
    results = {
        "machine": f"{os.cpu_count()} CPU cores, TensorFlow {tf.__version__},"
        f" Keras {keras.__version__}, TF_ENABLE_ONEDNN_OPTS="
        f"{os.environ.get('TF_ENABLE_ONEDNN_OPTS', 'unset')}",
        "matmul_2048_gflops": matmul_gflops(),
        "steps": bench_steps(),
    }
    mlp = results["steps"]["mlp_784-1024-1024-10_b512"]
    results["mlp_gflops"] = _mlp_gflops(mlp["ours_ms"])
    peak = results["matmul_2048_gflops"]
    results["mlp_fraction_of_matmul"] = results["mlp_gflops"] / peak
    results["mlp_xla_fraction_of_matmul"] = (
        _mlp_gflops(mlp["ours_xla_ms"]) / peak
    )
    if "--steps-only" not in sys.argv:  # run_all.py's oneDNN comparison
        results["mlp_limits"] = bench_mlp_limits()
        results["matmul_shapes"] = bench_matmul_shapes()
        digits = results["steps"]["mlp_digits_64-256-256-10_b32"]
        results["pipeline"] = bench_pipeline(digits["ours_ms"])
        results["default_run"] = bench_default_run()
        _print_table(results)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
