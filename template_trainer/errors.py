"""The base of every error that ends a run with a one-line message.

Each module raises its own subclass (`ConfigError`, `WorkdirError`, ...);
`train.py` catches this one type, prints the message and exits with the
subclass's `exit_code`. No module reads another's message text.
"""

import contextlib
import sys

from template_trainer import upstream


class RunError(Exception):
    """A run cannot start or go on; `str(error)` is one line for the user.

    Attributes:
        exit_code: The process exit code `train.py` ends with: 2 for input
            the user must change (the convention of command-line tools), 1
            for a run that failed on its way.
    """

    exit_code = 2
    # What `train.py` prints before the message.
    label = "error: "


class WriteError(RunError):
    """Writing to the workdir failed: a full disk, a workdir that became
    unwritable or vanished.

    The message names what failed and, once the trainer has filled in
    `last_checkpoint`, what is safe: the newest complete checkpoint, from
    which rerunning the same command resumes.

    Attributes:
        what: What was being written ("checkpoint", "model export", ...).
        path: Where.
        reason: The operating system's or TensorFlow's reason, one line.
        last_checkpoint: `(path, step)` of the newest complete checkpoint,
            or None if the run has none yet.
    """

    exit_code = 1

    def __init__(self, what, path, reason):
        super().__init__(what, path, reason)
        self.what, self.path, self.reason = what, path, reason
        self.last_checkpoint = None

    def __str__(self):
        if self.last_checkpoint:
            path, step = self.last_checkpoint
            safe = (
                f"the run is safe up to its last good checkpoint, {path} "
                f"(step {step}); free space or make the workdir writable, "
                "then rerun the same command to resume from it"
            )
        else:
            safe = (
                "no checkpoint was saved yet; free space or make the "
                "workdir writable, then rerun the same command to start"
            )
        return (
            f"could not write the {self.what} to {self.path} "
            f"({self.reason}); {safe}."
        )


def _write_failures():
    """What a write to a full, read-only or vanished workdir raises:
    Python's own writes raise `OSError`, TensorFlow's (checkpoints,
    SavedModels, summaries) these `OpError`s. Collective errors are not
    among them: a lost peer is `distribution.WorkerLostError`. TensorFlow's
    are looked up only once it is imported (nothing else can raise them),
    so this module, and the config checks that use it, load without it."""
    tf = sys.modules.get("tensorflow")
    if tf is None:
        return (OSError,)
    return (
        OSError,
        tf.errors.ResourceExhaustedError,
        tf.errors.PermissionDeniedError,
        tf.errors.NotFoundError,
        tf.errors.FailedPreconditionError,
        tf.errors.UnknownError,
    )


def _reason(error):
    """One short line: the OS's reason, or the end of TensorFlow's message,
    where it puts the OS's ("... No space left on device")."""
    if isinstance(error, OSError):
        return error.strerror or str(error)
    message = upstream.without_op_wrappers(" ".join(error.message.split()))
    if len(message) > 160:
        message = "..." + message[-157:]
    return f"{type(error).__name__}: {message}"


@contextlib.contextmanager
def writing(what, path):
    """Turns a failed write inside the block into a `WriteError`."""
    try:
        yield
    except _write_failures() as e:
        raise WriteError(what, path, _reason(e)) from e
