"""`python -m mylayers.gradcheck`: checks every layer in `mylayers`.

The command line lives here, not in the package's `__init__`, so that
`-m` runs a module nobody has imported yet (runpy warns otherwise).
"""

import sys

import keras
import numpy as np

import mylayers
from mylayers.gradcheck import GradcheckError, GradcheckReport, gradcheck


def cli_cases():
    """`(layer, input shape, order)` for each layer in `mylayers`: what
    `python -m mylayers.gradcheck` checks."""
    return [
        (mylayers.Linear(3, activation="tanh"), (2, 4), 2),
        (mylayers.ManualLinear(3, activation="tanh"), (2, 4), 2),
        (mylayers.RMSNorm(), (2, 4), 2),
        (mylayers.MLPBlock(5), (2, 4), 2),
        (mylayers.StableSoftplus(), (2, 4), 2),
        (mylayers.GradientReversal(0.7), (2, 4), 2),
        (mylayers.StraightThroughQuantize(bits=2), (2, 4), 2),
        (mylayers.StraightThroughQuantize(bits=1), (2, 4), 2),
        (mylayers.ClipGradient(1.5), (2, 4), 2),
        (mylayers.NumpyLinear(3), (2, 4), 2),
        (
            mylayers.Conv2D(2, 3, padding="same", activation="tanh"),
            (1, 4, 4, 2),
            2,
        ),
        (mylayers.Conv2D(2, (2, 3), strides=2), (1, 5, 5, 2), 2),
    ]


def main():
    """Checks every layer in `mylayers`; prints the table; 0 if all pass."""
    # Setting KERAS_BACKEND here would be too late: `-m mylayers.gradcheck`
    # imports the `mylayers` package, and with it keras, before this runs.
    if keras.backend.backend() != "tensorflow":
        print(
            "mylayers.gradcheck needs the TensorFlow backend: set "
            "KERAS_BACKEND=tensorflow.",
            file=sys.stderr,
        )
        return 2
    rng = np.random.default_rng(0)
    rows = []
    for layer, shape, order in cli_cases():
        # Keep inputs away from the kinks of the quantizer and its clipping.
        x = rng.uniform(0.1, 0.9, size=shape) * rng.choice([-1, 1], shape)
        try:
            rows += gradcheck(layer, x, order=order).rows
        except GradcheckError as error:
            rows += error.report.rows
    report = GradcheckReport(rows)
    print(report.table())
    failed = sum(row.failed for row in rows)
    skipped = sum(row.status.startswith("skipped") for row in rows)
    print(f"\n{len(rows)} checks: {failed} failed, {skipped} skipped.")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
