"""`python -m mylayers.gradcheck [TARGET]`: checks a layer of your own, or
every layer in `mylayers`. `--help` says how.

The command line lives here, not in the package's `__init__`, so that
`-m` runs a module nobody has imported yet (runpy warns otherwise); its
arguments and the user's target are read in `cli.py`.
"""

import sys

import keras

from mylayers.examples import all_examples, inputs_of
from mylayers.gradcheck import (
    CallError,
    GradcheckError,
    GradcheckReport,
    Status,
    gradcheck,
)
from mylayers.gradcheck.cli import UsageError, cases, parse


def cli_cases():
    """What `python -m mylayers.gradcheck` checks: every example that the
    layers in `mylayers.__all__` declare (`mylayers.examples`)."""
    return all_examples()


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


def _check(examples):
    """The rows of every example's check; raises `UsageError` for a layer
    that cannot be called on its inputs."""
    rows = []
    for example in examples:
        try:
            rows += gradcheck(
                example.layer,
                inputs_of(example),
                order=example.order,
                mask=example.mask,
            ).rows
        except GradcheckError as error:
            rows += error.report.rows
        except CallError as error:
            raise UsageError(str(error)) from error
    return rows


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
