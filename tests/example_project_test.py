"""`examples/my_project/`, a user's folder of its own (a layer written as
the Keras guides write them, a custom-gradient layer, a model, a CSV and a
config), trains through `train.py` with every guarantee the bundled
models have, and its `model.keras` loads where only its module can be
imported."""

import json
import os
import signal
import subprocess
import sys

import keras
import numpy as np
import pytest
from run_helpers import (
    REPO,
    latest_checkpoint_step,
    logged_steps,
    wait_for,
)

PROJECT = os.path.join(REPO, "examples", "my_project")
# One step per loop call, saved every 10: a kill lands between saves.
FLAGS = [
    "--config.num_epochs=6",  # 60 steps
    "--config.steps_per_loop=1",
    "--config.checkpoint_every_steps=10",
]
STEPS = 60


def _command(workdir):
    return [
        sys.executable,
        os.path.join(REPO, "train.py"),
        "--config",
        os.path.join(PROJECT, "config.py"),
        "--workdir",
        str(workdir),
        *FLAGS,
    ]


def _start(workdir):
    return subprocess.Popen(
        _command(workdir),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _weights(workdir):
    """The final weights, read from the checkpoint-free export."""
    sys.path.insert(0, PROJECT)
    try:
        import my_models  # noqa: F401  (registers the project's classes)

        model = keras.models.load_model(os.path.join(workdir, "model.keras"))
    finally:
        sys.path.remove(PROJECT)
        # Another test's own `my_models` must not find this one imported.
        sys.modules.pop("my_models", None)
    return model.get_weights()


@pytest.mark.slow
def test_example_project_resumes_byte_identically_and_loads_elsewhere(
    tmp_path,
):
    """A real SIGKILL to a real trainer, then the same command: the run
    ends byte-identical to one never stopped. Then a fresh process, in
    another folder, with only the example's folder on its path, loads the
    run's model.keras and classifies the raw CSV rows."""
    reference = _start(tmp_path / "uninterrupted")
    workdir = tmp_path / "killed"
    process = _start(workdir)
    wait_for(lambda: any(s >= 25 for s in logged_steps(workdir)), process)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    killed_at = latest_checkpoint_step(workdir)
    assert killed_at is not None and killed_at < STEPS

    result = subprocess.run(_command(workdir), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"at step {killed_at}." in result.stdout
    assert f"Done: step={STEPS}" in result.stdout
    assert f"model: {workdir}/model.keras" in result.stdout
    _, stderr = reference.communicate(timeout=300)
    assert reference.returncode == 0, stderr[-3000:]
    expected = _weights(tmp_path / "uninterrupted")
    for ours, theirs in zip(_weights(workdir), expected, strict=True):
        np.testing.assert_array_equal(ours, theirs)

    with open(workdir / "data.json") as f:
        label_names = json.load(f)["label_names"]
    assert label_names == ["lower", "upper"]
    load = (
        "import csv, sys, keras, numpy as np, my_models\n"
        "rows = list(csv.DictReader(open(sys.argv[2])))\n"
        "x = np.array([[float(r['x']), float(r['y'])] for r in rows])\n"
        "model = keras.models.load_model(sys.argv[1])\n"
        "names = np.array(sys.argv[3].split(','))\n"
        "predicted = names[model.predict(x, verbose=0).argmax(-1)]\n"
        "truth = np.array([r['label'] for r in rows])\n"
        "print((predicted == truth).mean())\n"
    )
    env = {**os.environ, "PYTHONPATH": PROJECT}
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            load,
            str(workdir / "model.keras"),
            os.path.join(PROJECT, "moons.csv"),
            ",".join(label_names),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    # Raw rows (x ~ 100, y ~ -7): the model scales them itself.
    assert float(loaded.stdout.split()[-1]) > 0.9
