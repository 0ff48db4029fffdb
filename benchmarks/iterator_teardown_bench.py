"""How long freeing a tf.data iterator takes, by how long it ran, with
tf.data's autotuning model (TensorFlow's default) and without it (the
trainer's training streams, `template_trainer/data/pipeline.py`).

    python benchmarks/iterator_teardown_bench.py [--lives=35,45,55,65]

Each setting runs in a child process of its own, all at once: an iterator
over a parallel map (the shape of the trainer's augmentation) is read
every few milliseconds for `life` seconds (mostly asleep, so the children
barely compete for the cores), then dropped; the child reports the seconds
the drop took. About as long as the longest life plus a minute.
"""

import argparse
import concurrent.futures
import os
import sys
import time

import harness


def child(life, autotune):
    import gc

    import tensorflow as tf

    dataset = (
        tf.data.Dataset.range(10**9)
        .map(lambda x: x * 2, num_parallel_calls=tf.data.AUTOTUNE)
        .batch(8)
        .prefetch(tf.data.AUTOTUNE)
    )
    options = tf.data.Options()
    options.autotune.enabled = autotune
    iterator = iter(dataset.with_options(options))
    start = time.perf_counter()
    while time.perf_counter() - start < life:
        next(iterator)
        time.sleep(0.005)
    start = time.perf_counter()
    del iterator
    gc.collect()
    harness.report({"teardown_s": time.perf_counter() - start})


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lives", default="35,45,55,65")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(float(args.child[0]), args.child[1] == "on")
        return
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    lives = [float(life) for life in args.lives.split(",")]
    settings = [(life, mode) for mode in ("on", "off") for life in lives]
    with concurrent.futures.ThreadPoolExecutor(len(settings)) as pool:
        futures = {
            setting: pool.submit(
                harness.run_child,
                __file__,
                ["--child", str(setting[0]), setting[1]],
                env,
            )
            for setting in settings
        }
    print("autotune  life (s)  teardown (s)")
    for (life, mode), future in futures.items():
        print(f"{mode:>8}  {life:8.0f}  {future.result()['teardown_s']:12.2f}")


if __name__ == "__main__":
    main(sys.argv[1:])
