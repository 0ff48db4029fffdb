"""What a run tells the user: TensorBoard scalars and `metrics.jsonl`."""

import json
import os

import tensorflow as tf


class Writer:
    """Writes scalars to TensorBoard (`workdir/tensorboard`) and to
    `workdir/metrics.jsonl`, one JSON object per call, for scripts."""

    def __init__(self, workdir):
        self._tb = tf.summary.create_file_writer(
            os.path.join(workdir, "tensorboard")
        )
        self._jsonl_path = os.path.join(workdir, "metrics.jsonl")

    def write(self, step, scalars):
        with self._tb.as_default(step=step):
            for name, value in scalars.items():
                tf.summary.scalar(name, value)
        self._tb.flush()
        with open(self._jsonl_path, "a") as f:
            f.write(json.dumps({"step": step, **scalars}) + "\n")

    def close(self):
        self._tb.close()
