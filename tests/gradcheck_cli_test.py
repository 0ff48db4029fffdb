"""`python -m mylayers.gradcheck [TARGET]`: a user's layer, instance or
cases from a module in the current directory, `--help`, bad arguments; and
what it checks with no target, every layer of `mylayers` (a file of its
own, so the test processes share the suite's slowest tests out evenly)."""

import os
import subprocess
import sys
import textwrap

import pytest

from mylayers.gradcheck import GradcheckReport, Status
from mylayers.gradcheck.__main__ import _check, cli_cases, main

# A user's module, as a guide writes layers: weights without `name=`.
USER_MODULE = textwrap.dedent(
    """
    import keras
    import numpy as np
    import tensorflow as tf

    import mylayers
    from mylayers.gradcheck import Sample


    class MyLayer(keras.layers.Layer):
        def build(self, input_shape):
            self.w = self.add_weight(shape=(input_shape[-1], 2))

        def call(self, x):
            return keras.ops.tanh(x @ self.w)


    @tf.custom_gradient
    def _flipped(y):
        return tf.identity(y), lambda dy: -dy


    class Flipped(MyLayer):
        def call(self, x):
            return _flipped(super().call(x))


    class Width3(MyLayer):
        def build(self, input_shape):
            self.w = self.add_weight(shape=(3, 2))


    class NeedsUnits(keras.layers.Layer):
        def __init__(self, units):
            super().__init__()


    layer = MyLayer(name="instance")
    not_a_layer = 3


    def cases():
        return [(Flipped(name="flipped"), (2, 3), 1)]


    def sample_cases():
        return [(MyLayer(name="sampled"), Sample(np.full((2, 3), 0.5)), 1)]


    def bad_cases():
        return [("MyLayer", (2, 3), 1)]


    class WithExamples(MyLayer):
        # Declares its examples, as the layers of mylayers do.
        @classmethod
        def examples(cls, **kwargs):
            return [
                mylayers.Example(cls(name="declared", **kwargs), (2, 3)),
                mylayers.Example(Flipped(name="flipped_2"), (2, 3), order=1),
            ]
    """
)


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """`user_layers.py` in the current directory, which is not on
    sys.path: the command puts it there, as `python -m` does."""
    (tmp_path / "user_layers.py").write_text(USER_MODULE)
    (tmp_path / "broken_import.py").write_text("import no_such_package\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    for name in ("user_layers", "broken_import"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    yield tmp_path
    for name in ("user_layers", "broken_import"):
        sys.modules.pop(name, None)


def _table(out):
    """`{(target, tensor, check)}` of the table's rows."""
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["target", "tensor"]
    rows = [line.split("  ") for line in lines[1:-2]]
    cells = [[cell.strip() for cell in row if cell.strip()] for row in rows]
    return {(row[0], row[1], row[3]) for row in cells}


def test_a_layer_class_with_its_input_shape(user_module, capsys):
    """Instantiated with no arguments; its unnamed weight named by the
    attribute; order 1 unless asked."""
    assert main(["user_layers:MyLayer", "--input-shape", "2,3"]) == 0
    rows = _table(capsys.readouterr().out)
    ((name,),) = {(t,) for t, _, _ in rows}
    assert name.startswith("my_layer")  # Keras's own name for it.
    assert {tensor for _, tensor, _ in rows} == {"inputs", f"{name}/w"}
    assert {check for _, _, check in rows} == {"order 1: J vs FD"}


def test_an_instance_at_order_2(user_module, capsys):
    assert (
        main(["user_layers:layer", "--input-shape", "2,3", "--order", "2"]) == 0
    )
    rows = _table(capsys.readouterr().out)
    assert ("instance", "instance/w", "order 2: H vs FD") in rows


def test_cases_and_their_failures(user_module, capsys):
    """A function's cases are checked, with their own inputs and order: a
    wrong gradient fails, exit 1."""
    assert main(["user_layers:cases"]) == 1
    out = capsys.readouterr().out
    assert {target for target, _, _ in _table(out)} == {"flipped"}
    # The sign flip: inputs and weight, in each of the three modes.
    assert out.splitlines()[-1] == "6 checks: 6 failed, 0 skipped."
    assert main(["user_layers:sample_cases"]) == 0
    assert {t for t, _, _ in _table(capsys.readouterr().out)} == {"sampled"}


def test_a_layer_class_with_declared_examples(user_module, capsys):
    """A class with an `examples` classmethod needs no --input-shape: each
    example is checked at its own order, and a wrong one fails."""
    assert main(["user_layers:WithExamples"]) == 1
    rows = _table(capsys.readouterr().out)
    assert ("declared", "declared/w", "order 2: H vs FD") in rows
    assert {t for t, _, _ in rows} == {"declared", "flipped_2"}


def test_help_exits_0(capsys):
    with pytest.raises(SystemExit) as caught:
        main(["--help"])
    assert caught.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # Unwrapped.
    assert "module:Attribute" in out
    assert "A layer class (instantiated with no arguments, or" in out
    assert "declares an `examples` classmethod" in out
    assert "--input-shape" in out and "--order" in out


@pytest.mark.parametrize(
    "argv, says",
    [
        (["user_layers:MyLayer", "--input-shape", "2,x"], "Received: '2,x'"),
        (["user_layers:MyLayer", "--input-shape", "2,0"], "positive"),
        (["user_layers:MyLayer"], "give its input shape"),
        (
            ["user_layers:MyLayer", "--input-shape", "2,3", "--order", "3"],
            "invalid choice: 3",
        ),
        (["no_such_module:MyLayer", "--input-shape", "2"], "no module"),
        (["broken_import:X"], "importing 'broken_import' failed"),
        (["user_layers:Nope"], "has no attribute 'Nope'"),
        (["user_layers"], "expected TARGET as module:Attribute"),
        (["user_layers:not_a_layer"], "is not a layer (int)"),
        (["user_layers:NeedsUnits", "--input-shape", "2,3"], "no arguments"),
        (["user_layers:bad_cases"], "or (layer, inputs, order) tuples"),
        (["user_layers:cases", "--order", "2"], "drop --input-shape"),
        (["--order", "2"], "--order needs a TARGET"),
        (["user_layers:MyLayer", "--input-shape", "2,3", "4"], "unrecognized"),
        (["user_layers:Width3", "--input-shape", "2,4"], "could not build"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(user_module, capsys, argv, says):
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # Nothing was checked.
    assert captured.err.startswith("error: ") and says in captured.err
    assert captured.err.count("\n") == 1


@pytest.mark.slow
def test_own_layer_from_the_command_line(user_module):
    """`python -m mylayers.gradcheck user_layers:MyLayer` in the user's
    folder, as a user runs it. Slow (about 8 s): a second process."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mylayers.gradcheck",
            "user_layers:MyLayer",
            "--input-shape",
            "2,3",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # A fresh process: the class's first instance, named as Keras names it.
    assert ("my_layer", "my_layer/w", "order 1: J vs FD") in _table(
        result.stdout
    )


# Rows each layer skips, and why: NumpyLinear declares no second
# derivative and no XLA (its numpy code runs on the host); TokenEmbedding's
# inputs are integer ids.
SKIPPED = {"NumpyLinear": 3, "TokenEmbedding": 1}


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(cli_cases())))
def test_cli_checks_every_layer(index):
    """What `python -m mylayers.gradcheck` checks passes: one layer of
    `cli_cases()` per test, at its order, in three modes, in this process
    (the command's own process is shown above). Slow (about 40 s in all)."""
    example = cli_cases()[index]
    rows = _check([example])
    assert not [row for row in rows if row.failed], GradcheckReport(
        rows
    ).table()
    skipped = sum(row.status is Status.SKIPPED for row in rows)
    assert skipped == SKIPPED.get(type(example.layer).__name__, 0)
    assert {row.mode for row in rows} >= {"eager", "function"}
