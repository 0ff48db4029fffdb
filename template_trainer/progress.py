"""What the user sees while a run trains: Keras's progress bar.

In a terminal it is the bar that redraws itself; when stdout is a file or a
pipe (a job log, CI, `> run.log`) it is one plain line per epoch, with no
ANSI escapes and no carriage returns. Keras's `Progbar` draws both (its
`verbose=1` and `verbose=2`, as `fit` does), but it decides on redrawing by
`"posix" in sys.modules`, true on every Linux: the choice of mode is made
here instead, from `isatty`.
"""

import sys

import keras


def interactive():
    """Whether stdout is a terminal, where a redrawn bar belongs."""
    return hasattr(sys.stdout, "isatty") and sys.stdout.isatty()


class Progress:
    """One epoch's progress: `Epoch k/n`, then a bar or a line.

    Args:
        epoch: This epoch, from 0.
        num_epochs: How many the run has.
        steps_per_epoch: Steps in an epoch.
        done: Steps of this epoch already trained (a resumed run).
    """

    def __init__(self, epoch, num_epochs, steps_per_epoch, done=0):
        print(f"Epoch {epoch + 1}/{num_epochs}", flush=True)
        self._bar = keras.utils.Progbar(
            steps_per_epoch, verbose=1 if interactive() else 2
        )
        self._bar.update(done)

    def update(self, done, logs):
        """Shows `done` steps of the epoch trained, and the latest `logs`
        (the metrics' means over the last loop call, and rates: shown as
        they are, not averaged again)."""
        self._bar.stateful_metrics.update(logs)
        self._bar.update(done, list(logs.items()))
