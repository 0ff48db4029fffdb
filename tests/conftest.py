"""Shared test set-up.

Fixtures that cost a training run are session-scoped and used by the tests
of one file: under `--dist loadfile` (pyproject.toml) a file runs in one
test process, so each such run is made once.
"""

import os
import shutil
import subprocess
import tempfile

import pytest

# Keras 3 picks its backend when first imported; these tests are TensorFlow's.
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# Quiet TensorFlow's C++ start-up notes in test output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# oneDNN's kernels, as the commands and `import mylayers` give users, in
# every test file whatever it imports first; TF_ENABLE_ONEDNN_OPTS=0 set
# by the user still wins.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")


def _one_thread_per_test_process():
    """Two test processes share two cores: each computes on one thread, so
    their TensorFlow thread pools do not fight over the cores. Set in the
    process, not the environment: the trainers the tests start keep
    TensorFlow's defaults, as a user's do."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)


def pytest_configure(config):
    """Datasets are prepared afresh in a directory of this test process's
    own (train.py subprocesses inherit it), so no test leans on what an
    earlier run left in ~/tensorflow_datasets, and parallel test processes
    never prepare one directory at once. Set here, before any test module
    imports TFDS, which reads TFDS_DATA_DIR once, at import."""
    config.tfds_data_dir = tempfile.mkdtemp(prefix="tfds-")
    os.environ["TFDS_DATA_DIR"] = config.tfds_data_dir
    if os.environ.get("PYTEST_XDIST_WORKER"):
        _one_thread_per_test_process()


# Test files by the time their tests take, longest first (measured on two
# cores, 2026-12-07; the rest follow in collection order). The test
# processes take whole files in this order as they free up
# (`--dist loadfile --no-loadscope-reorder`, pyproject.toml), so the long
# files start early and short ones fill the end. xdist's own order (most
# tests first) left the one-test files, a subprocess each, for last: one
# process ran ~55 s alone at the end of the suite.
LONGEST_FIRST = [
    "resume_test.py",
    "gradcheck_cli_test.py",
    "distribution_test.py",
    "train_test.py",
    "io_faults_test.py",
    "lm_subprocess_test.py",
    "notebook_test.py",
    "mirrored_test.py",
    "input_pipeline_test.py",
    "example_project_test.py",
    "train_step_test.py",
    "data_sources_test.py",
    "lm_test.py",
    "cli_test.py",
    "trainer_options_test.py",
    "gradcheck_test.py",
    "gradcheck_gallery_test.py",
    "layers_test.py",
    "own_architecture_test.py",
    "sample_test.py",
    "cached_generation_test.py",
]


def _bfloat16_not_emulated():
    """Whether oneDNN is held below AVX-512 (`ONEDNN_MAX_CPU_ISA=AVX2`,
    README: Testing). On a CPU with AVX512_BF16 TensorFlow still hands
    bfloat16 matmuls to oneDNN, which the cap leaves without a bfloat16
    kernel: the process dies (seen: segmentation fault, abort). A real
    AVX2-only CPU takes TensorFlow's own kernels instead, so the setting
    cannot stand in for one there."""
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    return bool(isa) and not isa.startswith(("AVX512", "AVX10", "DEFAULT"))


def pytest_collection_modifyitems(items):
    """Orders the test files as `LONGEST_FIRST`, then as collected; the
    tests of a file keep their order. Under a oneDNN cap below AVX-512,
    skips the tests that compute in bfloat16 (`_bfloat16_not_emulated`)."""
    if _bfloat16_not_emulated():
        skip = pytest.mark.skip(
            reason="bfloat16 under ONEDNN_MAX_CPU_ISA below AVX-512 crashes "
            "TensorFlow on this CPU (not what an AVX2 CPU does)"
        )
        for item in items:
            if "bfloat16" in item.nodeid:
                item.add_marker(skip)

    def rank(item):
        name = item.path.name
        if name in LONGEST_FIRST:
            return LONGEST_FIRST.index(name)
        return len(LONGEST_FIRST)

    items.sort(key=rank)


def pytest_unconfigure(config):
    shutil.rmtree(config.tfds_data_dir, ignore_errors=True)


@pytest.fixture(autouse=True)
def _no_stray_processes(monkeypatch):
    """Kills every process a test started and left running, on failure too.

    A trainer (or a worker of a multi-worker run) left behind by a failed
    test would hold its workdir's lock and two cores for minutes.
    """
    started = []
    original_init = subprocess.Popen.__init__

    def recording_init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        started.append(self)

    monkeypatch.setattr(subprocess.Popen, "__init__", recording_init)
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()
