"""Canaries for `template_trainer/upstream.py`: each provokes the real
message of TensorFlow, absl or ml_collections that the trainer reads, and
checks the match still holds. When a release rewords one, its canary
fails here, by name, before a user's error gets vaguer.

The collective error's peer (`upstream.peers_named`) needs two worker
processes; its canary is `distribution_test.py::
test_a_dead_worker_ends_its_peer_in_one_line` (slow), which checks the
peer named in the message.
"""

import os

import pytest
import tensorflow as tf
from absl import flags
from ml_collections import config_flags

from template_trainer import upstream

CONFIG = """import ml_collections


def get_config():
    config = ml_collections.ConfigDict()
    config.batch_size = 32
    return config
"""


def _parse_config(tmp_path, text, *overrides):
    """ml_collections' `--config` flag parsing `text` as a config file, as
    train.py's does; the error it raises."""
    path = tmp_path / "config.py"
    path.write_text(text)
    argv = ["train.py", f"--config={path}", *overrides]
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file(
        "config", None, "", flag_values=flag_values, sys_argv=argv
    )
    with pytest.raises(Exception) as error:
        flag_values(argv)
        flag_values.config.keys()
    return error.value


def test_upstream_config_file_that_raises(tmp_path):
    error = _parse_config(
        tmp_path, "def get_config():\n    raise ValueError('boom')\n"
    )
    assert upstream.is_config_file_failure(error)


def test_upstream_config_file_without_get_config(tmp_path):
    error = _parse_config(tmp_path, "x = 1\n")
    assert upstream.lacks_get_config(error)
    assert upstream.unknown_config_field(error) is None


def test_upstream_unknown_config_field(tmp_path):
    error = _parse_config(tmp_path, CONFIG, "--config.batch_sise=3")
    assert not upstream.lacks_get_config(error)
    assert upstream.unknown_config_field(error) == (
        "batch_sise",
        'Did you mean "batch_size" instead of "batch_sise"?',
    )


def test_upstream_config_override_that_does_not_parse(tmp_path):
    error = _parse_config(tmp_path, CONFIG, "--config.batch_size=abc")
    assert isinstance(error, flags.Error)
    assert upstream.bad_override(error) == (
        "--config.batch_size=abc",
        "batch_size",
    )


@pytest.mark.parametrize(
    "define, expected",
    [(flags.DEFINE_integer, "an integer"), (flags.DEFINE_float, "a number")],
)
def test_upstream_number_flag_that_does_not_parse(define, expected):
    flag_values = flags.FlagValues()
    define("length", 1, "", flag_values=flag_values)
    with pytest.raises(flags.Error) as error:
        flag_values(["sample", "--length=abc"])
    message = upstream.one_line(error.value)
    assert upstream.without_python_parse_error(message) == (
        "flag --length=abc",
        expected,
    )


def test_upstream_checkpoint_of_other_shapes(tmp_path):
    saved = tf.train.Checkpoint(v=tf.Variable(tf.zeros(2)))
    path = saved.save(os.path.join(tmp_path, "ckpt"))
    with pytest.raises(ValueError) as error:
        tf.train.Checkpoint(v=tf.Variable(tf.zeros(3))).restore(
            path
        ).expect_partial()
    assert upstream.is_shape_mismatch(error.value)


def test_upstream_op_error_wrappers(tmp_path):
    """An eager op's error, as a checkpoint or SavedModel write raises it,
    wraps the OS's reason: "{{function_node __wrapped__...}} REASON
    [Op:NAME]"."""
    missing = str(tmp_path / "missing")
    with pytest.raises(tf.errors.NotFoundError) as error:
        tf.io.read_file(missing)
    message = error.value.message
    assert message.startswith("{{function_node ") and "[Op:" in message
    assert upstream.without_op_wrappers(message) == (
        f"{missing}; No such file or directory"
    )
