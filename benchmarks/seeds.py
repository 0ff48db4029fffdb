"""A config's figures over several seeds: validation accuracy of the final
and the best model, and wall time; with `--test`, test accuracy too.

Tune on what it prints without `--test`; add `--test` once, for the
settings you keep, to get the figures to report:

  python benchmarks/seeds.py --config configs/default.py --seeds 0-4
  python benchmarks/seeds.py --config configs/default.py --seeds 0-4 --test

Extra `--config.FIELD=VALUE` flags override the config, as for train.py.
Each seed runs in a fresh temporary workdir; prints a table, then JSON.
"""

import contextlib
import io
import json
import os
import statistics
import tempfile
import time

# Keras 3 picks its backend at import time; this project is TensorFlow's.
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

import template_trainer  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/default.py", "Config.")
flags.DEFINE_string("seeds", "0-4", "Seeds, as FIRST-LAST.")
flags.DEFINE_bool("test", False, "Also print the test split's figures.")


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    columns = ("val_accuracy", "best_val_accuracy")
    if FLAGS.test:
        columns += ("test_accuracy", "best_test_accuracy")
    first, last = map(int, FLAGS.seeds.split("-"))
    rows = []
    for seed in range(first, last + 1):
        config = FLAGS.config
        config.seed = seed
        with tempfile.TemporaryDirectory() as workdir:
            start = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):
                metrics = template_trainer.train_and_evaluate(config, workdir)
            seconds = time.perf_counter() - start
        rows.append(
            {
                "seed": seed,
                **{k: metrics[k] for k in columns},
                "best_step": metrics["best_step"],
                "seconds": seconds,
            }
        )
        print(
            f"seed {seed}: "
            + ", ".join(f"{k} {metrics[k]:.4f}" for k in columns)
            + f", best_step {metrics['best_step']}, {seconds:.1f} s",
            flush=True,
        )
    for name in columns:
        values = [r[name] for r in rows]
        print(
            f"{name}: {min(values):.4f}-{max(values):.4f} "
            f"(mean {statistics.mean(values):.4f})"
        )
    print(json.dumps(rows))


if __name__ == "__main__":
    app.run(main)
