"""`python -m mylayers.gradcheck [TARGET]`: checks a layer of your own, or
every layer in `mylayers`. `--help` says how.

The command line lives here, not in the package's `__init__`, so that
`-m` runs a module nobody has imported yet (runpy warns otherwise); its
arguments and the user's target are read in `cli.py`.
"""

import sys

import keras
import numpy as np

import mylayers
from mylayers.gradcheck import (
    CallError,
    GradcheckError,
    GradcheckReport,
    Status,
    gradcheck,
)
from mylayers.gradcheck.cli import Sample, UsageError, cases, parse

# Left padding in the first row, right padding in the second: the first
# query of the first row has no key to look at.
_PADDING = np.array([[False, True, True], [True, True, False]])


def cli_cases():
    """`(layer, inputs, order)` for each layer in `mylayers`: what
    `python -m mylayers.gradcheck` checks. `inputs` is an input shape,
    filled with random floats, or a `Sample`.

    Every layer is checked at order 2 but `TransformerBlock`, which is
    made of layers checked at order 2 here (attention, `RMSNorm`,
    `MLPBlock`) and is checked at order 1, with a padding mask: its order
    2 would add ~8 s to the command, the longest check. Attention is
    checked at order 2 on one head with rotary positions and padding, the
    most that happens in it, and at order 1 on two heads. The checkpoint's
    custom gradient is checked at order 2 on `MLPBlock`;
    `tests/gradient_checkpoint_test.py` checks it on a masked
    `TransformerBlock` against the plain block's gradients."""
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
        (
            mylayers.TokenEmbedding(5, 3, max_length=3),
            Sample(np.array([[1, 2, 0], [4, 3, 1]])),
            2,
        ),
        (mylayers.CausalSelfAttention(2, rotary=False), (2, 3, 2), 1),
        (
            mylayers.CausalSelfAttention(1, name="masked_attention"),
            Sample((2, 3, 2), mask=_PADDING),
            2,
        ),
        (
            mylayers.TransformerBlock(1, 3),
            Sample((2, 3, 2), mask=_PADDING),
            1,
        ),
        (
            mylayers.GradientCheckpoint(
                mylayers.MLPBlock(3), name="checkpointed_mlp_block"
            ),
            (2, 3),
            2,
        ),
        (
            mylayers.TiledCausalSelfAttention(
                1, tile_size=2, name="tiled_attention"
            ),
            Sample((2, 3, 2), mask=_PADDING),
            1,
        ),
    ]


def _draw(rng, shape):
    # Keep inputs away from the kinks of the quantizer and its clipping.
    return rng.uniform(0.1, 0.9, size=shape) * rng.choice([-1, 1], shape)


def main(argv):
    """Checks `argv`'s target, or every layer in `mylayers`; prints the
    table. Returns 0 if all pass, 1 if one fails, 2 for a bad argument."""
    # Setting KERAS_BACKEND here would be too late: `-m mylayers.gradcheck`
    # imports the `mylayers` package, and with it keras, before this runs.
    if keras.backend.backend() != "tensorflow":
        print(
            "mylayers.gradcheck needs the TensorFlow backend: set "
            "KERAS_BACKEND=tensorflow.",
            file=sys.stderr,
        )
        return 2
    try:
        args = parse(argv)
        checks = cases(args) if args.target else cli_cases()
        rows = _check(checks)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    report = GradcheckReport(rows)
    print(report.table())
    failed = sum(row.failed for row in rows)
    skipped = sum(row.status is Status.SKIPPED for row in rows)
    print(f"\n{len(rows)} checks: {failed} failed, {skipped} skipped.")
    return 1 if failed else 0


def _check(checks):
    """The rows of every check; raises `UsageError` for a layer that cannot
    be called on its inputs."""
    rng = np.random.default_rng(0)
    rows = []
    for layer, inputs, order in checks:
        sample = inputs if isinstance(inputs, Sample) else Sample(inputs)
        x = sample.inputs
        if isinstance(x, tuple):
            x = _draw(rng, x)
        try:
            rows += gradcheck(layer, x, order=order, mask=sample.mask).rows
        except GradcheckError as error:
            rows += error.report.rows
        except CallError as error:
            raise UsageError(str(error)) from error
    return rows


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
