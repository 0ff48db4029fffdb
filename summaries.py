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


def plot_curves(workdir):
    """Draws `metrics.jsonl` to `workdir/curves.png`; returns its path."""
    # matplotlib costs ~1 s to import and only this end-of-run plot uses it.
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for axis, kind in zip(axes, ("loss", "accuracy")):
        for name in (kind, f"eval_{kind}"):
            points = [(r["step"], r[name]) for r in records if name in r]
            if points:
                axis.plot(
                    *zip(*points),
                    label=name,
                    marker="." if "eval" in name else None,
                )
        axis.set_xlabel("step")
        axis.set_title(kind)
        axis.legend()
    path = os.path.join(workdir, "curves.png")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
