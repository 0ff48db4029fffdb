"""TensorFlow's start, without its C++ start-up notes.

TensorFlow 2.21 logs through absl before absl's logging is initialised, so
`TF_CPP_MIN_LOG_LEVEL` does not reach its start-up lines: every run on a
machine without a GPU printed "Could not find cuda drivers", "failed call
to cuInit" and oneDNN notes on stderr. `import_tensorflow` imports it and
finds its devices with stderr (the file descriptor, which C++ writes to)
read through a filter that drops only those lines and passes every other
line on as it comes, so a real error, or a crash's last words, still shows.

This module imports no TensorFlow at its own import.
"""

import contextlib
import os
import re
import sys
import threading

# absl's prefix: severity, date, time, thread, file:line].
_PREFIX = r"^[IWEF]\d{4} [\d:.]+\s+\d+ [\w.]+:\d+\] "
_NOISE = [
    re.compile(r"^WARNING: All log messages before absl::InitializeLog\(\)"),
    # Information and warnings: what TF_CPP_MIN_LOG_LEVEL=2 would hide.
    re.compile(r"^[IW]\d{4} [\d:.]+\s+\d+ [\w.]+:\d+\] "),
]
# Errors that only say there is no GPU: hidden where no NVIDIA driver is
# installed, shown where one is (there they say why a GPU went unused).
_NO_GPU = re.compile(
    _PREFIX + r"(failed call to cuInit|.*Unable to register cu\w+ factory)"
)


def _has_nvidia_driver():
    return os.path.exists("/proc/driver/nvidia") or os.path.exists(
        "/dev/nvidia0"
    )


def is_noise(line, gpu_driver=None):
    """Whether `line` is a TensorFlow start-up note to drop. Only lines
    TF_CPP_MIN_LOG_LEVEL >= 2 (the trainer's default) would hide, and the
    no-GPU errors of a machine without an NVIDIA driver; with the level
    set below 2 nothing is dropped."""
    if int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0") or 0) < 2:
        return False
    if any(pattern.match(line) for pattern in _NOISE):
        return True
    if gpu_driver is None:
        gpu_driver = _has_nvidia_driver()
    return not gpu_driver and bool(_NO_GPU.match(line))


@contextlib.contextmanager
def filtered_stderr(keep=None):
    """Runs the block with file descriptor 2 read through `is_noise`:
    lines that are not noise go on to the real stderr as they arrive."""
    keep = keep or (lambda line: not is_noise(line))
    sys.stderr.flush()
    real = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def forward():
        with os.fdopen(read_end, "rb") as pipe:
            for raw in pipe:
                if keep(raw.decode("utf-8", "replace")):
                    os.write(real, raw)

    thread = threading.Thread(target=forward, daemon=True)
    thread.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(real, 2)  # Closes the pipe's last write end: EOF.
        thread.join()
        os.close(real)


def import_tensorflow():
    """Imports TensorFlow and lists its devices (where CUDA is tried)
    without the start-up notes; returns the module."""
    with filtered_stderr():
        import tensorflow as tf

        tf.config.list_physical_devices()
    return tf
