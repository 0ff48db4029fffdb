"""What a run tells the user: TensorBoard scalars and `metrics.jsonl`."""

import json
import os

import tensorflow as tf
from tensorboard.plugins.hparams import api as hp

from template_trainer import errors


def read_records(path):
    """The records of a `metrics.jsonl`, without a line cut off mid-write."""
    records = []
    with open(path) as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:
                continue  # A write the process did not live to finish.
            if isinstance(record, dict) and "step" in record:
                records.append(record)
    return records


def hparams_of(config):
    """A config (nested dicts) as TensorBoard HParams: one value per field,
    nested names joined by dots (`model.hidden_units`); numbers, strings
    and booleans as they are, anything else (a tuple, None) as its text."""
    flat = {}
    for name, value in config.items():
        if isinstance(value, dict):
            for inner, v in hparams_of(value).items():
                flat[f"{name}.{inner}"] = v
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        else:
            flat[name] = str(value)
    return flat


class Writer:
    """Writes scalars to TensorBoard (`workdir/tensorboard`) and to
    `workdir/metrics.jsonl`, one JSON object per call, for scripts; and
    `hparams`, the run's config as a dict, to TensorBoard's HParams.

    `start_step` is the step the run starts or resumes at: records of later
    steps in `metrics.jsonl`, written after the checkpoint the run resumes
    from and about to be trained again, are dropped, so the file holds each
    step once, in order. (TensorBoard shows the earlier attempt's points
    beside the new ones.)
    """

    def __init__(self, workdir, start_step=0, hparams=None):
        self._tb_path = os.path.join(workdir, "tensorboard")
        self._jsonl_path = os.path.join(workdir, "metrics.jsonl")
        with errors.writing("TensorBoard summaries", self._tb_path):
            self._tb = tf.summary.create_file_writer(self._tb_path)
            if hparams:
                with self._tb.as_default():
                    hp.hparams(hparams_of(hparams))
        if os.path.exists(self._jsonl_path):
            kept = [
                r
                for r in read_records(self._jsonl_path)
                if r["step"] <= start_step
            ]
            self._rewrite(kept)

    def write(self, step, scalars):
        """Writes `scalars` at `step` to both.

        Raises:
            errors.WriteError: either could not be written.
        """
        self._tensorboard(step, scalars)
        with errors.writing("metrics", self._jsonl_path):
            with open(self._jsonl_path, "a") as f:
                f.write(json.dumps({"step": step, **scalars}) + "\n")

    def add_to_last(self, step, scalars):
        """Adds `scalars` to the record of `step`, the last one, so the file
        keeps each step once (a resumed run that had already finished adds
        them again, to the same record).

        Raises:
            errors.WriteError: either could not be written.
        """
        self._tensorboard(step, scalars)
        records = read_records(self._jsonl_path)
        if records and records[-1]["step"] == step:
            records[-1].update(scalars)
        else:
            records.append({"step": step, **scalars})
        self._rewrite(records)

    def _tensorboard(self, step, scalars):
        with errors.writing("TensorBoard summaries", self._tb_path):
            with self._tb.as_default(step=step):
                for name, value in scalars.items():
                    tf.summary.scalar(name, value)
            self._tb.flush()

    def _rewrite(self, records):
        """Replaces `metrics.jsonl` with `records`, in one step."""
        temporary = self._jsonl_path + ".tmp"
        with errors.writing("metrics", self._jsonl_path):
            with open(temporary, "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in records)
            os.replace(temporary, self._jsonl_path)

    def close(self):
        self._tb.close()


# What `curves.png` draws, one panel each: training value and validation
# value, if the run logged them.
PANELS = ("loss", "accuracy", "bpc")


def panels(records):
    """`(title, names)` of each panel `curves.png` draws for `records`:
    loss, accuracy and the task's own metric (bits per character for the
    LM), training and validation, and the learning rate."""
    logged = {name for record in records for name in record}
    drawn = []
    for kind in PANELS:
        names = [n for n in (kind, f"val_{kind}") if n in logged]
        if names:
            drawn.append((kind, names))
    if "learning_rate" in logged:
        drawn.append(("learning rate", ["learning_rate"]))
    return drawn


def plot_curves(workdir):
    """Draws `metrics.jsonl` to `workdir/curves.png` (see `panels`);
    returns its path."""
    # matplotlib costs ~1 s to import and only this end-of-run plot uses it.
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    records = read_records(os.path.join(workdir, "metrics.jsonl"))
    drawn = panels(records)
    figure, axes = plt.subplots(
        1, len(drawn), figsize=(4.5 * len(drawn), 4), squeeze=False
    )
    for axis, (title, names) in zip(axes[0], drawn):
        for name in names:
            points = [(r["step"], r[name]) for r in records if name in r]
            axis.plot(
                *zip(*points),
                label=name,
                marker="." if name.startswith("val_") else None,
            )
        axis.set_xlabel("step")
        axis.set_title(title)
        axis.legend()
    path = os.path.join(workdir, "curves.png")
    figure.tight_layout()
    try:
        with errors.writing("training curves", path):
            figure.savefig(path, dpi=100)
    finally:
        plt.close(figure)
    return path
