"""TensorFlow's C++ start-up notes are dropped from stderr; nothing else."""

import os

import pytest

from template_trainer import startup

NOTES = [
    "WARNING: All log messages before absl::InitializeLog() is called are "
    "written to STDERR\n",
    "I0000 00:00:1796327775.359233    3870 cudart_stub.cc:31] Could not find "
    "cuda drivers on your machine, GPU will not be used.\n",
    "I0000 00:00:1796327775.358141    3870 port.cc:153] oneDNN custom "
    "operations are on.\n",
]
NO_GPU = (
    "E0000 00:00:1796327776.822821    3870 cuda_platform.cc:52] failed call "
    "to cuInit: INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR "
    "(303)\n"
)
REAL = [
    "E0000 00:00:1796327776.822821    3870 op_kernel.cc:1] OOM when "
    "allocating tensor\n",
    "Traceback (most recent call last):\n",
    "error: something the user must see\n",
]


def test_only_start_up_notes_are_dropped(capfd, monkeypatch):
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    monkeypatch.setattr(startup, "_has_nvidia_driver", lambda: False)
    with startup.filtered_stderr():
        for line in NOTES + [NO_GPU] + REAL:
            os.write(2, line.encode())
    assert capfd.readouterr().err == "".join(REAL)


@pytest.mark.parametrize(
    "level, driver, dropped",
    [("2", True, False), ("1", False, False), ("0", False, False)],
)
def test_the_no_gpu_error_shows_where_it_matters(
    monkeypatch, level, driver, dropped
):
    """With an NVIDIA driver, cuInit failing says why the GPU went unused;
    a level below 2 asks for TensorFlow's notes."""
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", level)
    assert startup.is_noise(NO_GPU, gpu_driver=driver) is dropped
    assert startup.is_noise(NOTES[1], gpu_driver=driver) is (level == "2")
