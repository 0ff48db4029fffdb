"""`csv:PATH`: a CSV file of numeric feature columns and a label column.

The first row names the columns; `label_column` holds the labels
(integers or strings), every other column is a feature and must hold
finite numbers. Classes are the distinct labels, sorted (numerically for
integers), their names kept with the run.
"""

import csv
import math

import numpy as np
import tensorflow_datasets as tfds

from template_trainer.data import store
from template_trainer.data.problems import DataError


def content_key(path, label_column):
    return store.content_key([path], path, "csv", label_column)


def _number(text):
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def read(path, label_column, source):
    """`(features, labels, label_names, feature_names)` of the CSV at
    `path`: float32 `(rows, columns)`, int64 class ids, str tuples.

    Raises:
        DataError: the file is missing, empty, not UTF-8, ragged, without
            the label column or a feature column, or holds a feature that
            is not a finite number.
    """
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except FileNotFoundError:
        raise DataError(
            f"{source}: no such file; expected a CSV file."
        ) from None
    except UnicodeDecodeError as e:
        raise DataError(
            f"{source} is not UTF-8 text (byte {e.start}); expected a CSV file."
        ) from None
    rows = [row for row in rows if row]  # blank lines
    if not rows:
        raise DataError(
            f"{source} is empty; expected a header row naming the columns, "
            "then one row per example."
        )
    header, rows = rows[0], rows[1:]
    if label_column not in header:
        raise DataError(
            f"{source} has no column {label_column!r} (config.label_column); "
            f"its columns are {', '.join(header)}. Name the label column "
            "with --config.label_column."
        )
    if len(header) < 2:
        raise DataError(
            f"{source} has only the label column {label_column!r}; expected "
            "numeric feature columns too."
        )
    if not rows:
        raise DataError(
            f"{source} has a header but no rows; expected examples."
        )
    label_at = header.index(label_column)
    feature_names = tuple(n for i, n in enumerate(header) if i != label_at)
    features = np.empty((len(rows), len(feature_names)), np.float32)
    labels = []
    for number, row in enumerate(rows, start=2):
        if len(row) != len(header):
            raise DataError(
                f"{source}, line {number}: {len(row)} fields; expected "
                f"{len(header)}, one per column of the header."
            )
        labels.append(row[label_at].strip())
        values = [v for i, v in enumerate(row) if i != label_at]
        for column, text in enumerate(values):
            value = _number(text)
            if value is None:
                raise DataError(
                    f"{source}, line {number}: column "
                    f"{feature_names[column]!r} holds {text!r}; expected a "
                    f"finite number (every column but {label_column!r} is a "
                    "feature)."
                )
            features[number - 2, column] = value
    try:
        names = sorted(set(labels), key=int)
    except ValueError:
        names = sorted(set(labels))
    ids = {name: i for i, name in enumerate(names)}
    return (
        features,
        np.array([ids[label] for label in labels], np.int64),
        tuple(names),
        feature_names,
    )


def features_spec(num_features, label_names):
    return tfds.features.FeaturesDict(
        {
            "features": tfds.features.Tensor(
                shape=(num_features,), dtype=np.float32
            ),
            "label": tfds.features.ClassLabel(names=label_names),
        }
    )


def examples(features, labels):
    """The TFDS examples of the rows, keyed by row number."""
    return [
        (i, {"features": row, "label": label})
        for i, (row, label) in enumerate(zip(features, labels, strict=True))
    ]
