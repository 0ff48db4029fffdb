"""Mutants of the trainer's own-architecture, start-up and logging features."""

from tests.mutation.mutant import Mutant

MUTANTS = [
    Mutant(
        name="import-path-not-resolved",
        feature="config.model.name takes 'package.module:Attribute'",
        file="template_trainer/setup.py",
        old='    module_name, _, attribute = name.partition(":")\n',
        new="    raise KeyError(name)\n",
        tests=("tests/own_architecture_test.py",),
    ),
    Mutant(
        name="unaccepted-model-field-ignored",
        feature="a config.model field the architecture does not take is "
        "refused in one line",
        file="template_trainer/setup.py",
        old="    _check_parameters(model_config.name, architecture, kwargs)\n",
        new="",
        tests=("tests/own_architecture_test.py",),
    ),
    Mutant(
        name="no-save-check",
        feature="the model's .keras save and load is proven before the "
        "first step",
        file="template_trainer/loop.py",
        old="        setup.check_saves(run.model)\n",
        new="",
        tests=("tests/own_architecture_test.py",),
    ),
    Mutant(
        name="refused-run-leaves-workdir",
        feature="a run refused before it recorded anything leaves no workdir",
        file="template_trainer/loop.py",
        old="            shutil.rmtree(created, ignore_errors=True)\n",
        new="            pass\n",
        tests=("tests/own_architecture_test.py",),
    ),
    Mutant(
        name="lock-file-left",
        feature="a finished run leaves no lock file",
        file="template_trainer/workdir.py",
        old="            os.remove(os.path.join(workdir, name))\n",
        new="            pass\n",
        tests=(
            "tests/cli_test.py::test_a_run_logs_plain_lines_and_ends_with_done",
        ),
    ),
    Mutant(
        name="tensorflow-start-up-notes-shown",
        feature="no TensorFlow C++ start-up lines on a CPU-only run",
        file="template_trainer/startup.py",
        old="    keep = keep or (lambda line: not is_noise(line))\n",
        new="    keep = keep or (lambda line: True)\n",
        tests=(
            "tests/startup_test.py",
            "tests/cli_test.py::test_a_run_logs_plain_lines_and_ends_with_done",
        ),
    ),
    Mutant(
        name="config-checks-import-tensorflow",
        feature="config errors come before TensorFlow is imported",
        file="template_trainer/config_checks.py",
        old="from template_trainer import errors, schema\n",
        new="import tensorflow  # noqa: F401\n\nfrom template_trainer import "
        "errors, schema\n",
        tests=(
            "tests/cli_test.py::"
            "test_config_is_checked_before_tensorflow_is_imported",
        ),
    ),
    Mutant(
        name="upstream-shape-mismatch-unread",
        feature="a checkpoint of other shapes is told apart from damage "
        "(TensorFlow says it only in words)",
        file="template_trainer/upstream.py",
        old="    return _SHAPE_MISMATCH in str(error)",
        new="    return False",
        tests=("tests/upstream_test.py",),
    ),
    Mutant(
        name="upstream-unknown-field-unread",
        feature="an unknown config field is named in one line",
        file="template_trainer/upstream.py",
        old='    return name.strip().strip("\'\\""), hint.strip()',
        new="    return None",
        tests=("tests/upstream_test.py", "tests/cli_test.py"),
    ),
    Mutant(
        name="upstream-op-wrappers-kept",
        feature="a failed write's reason without TensorFlow's op wrappers",
        file="template_trainer/upstream.py",
        old='    return _OP_SUFFIX.sub("", _FUNCTION_NODE.sub("", message))',
        new="    return message",
        tests=("tests/upstream_test.py",),
    ),
    Mutant(
        name="schema-checks-ignored",
        feature="every config field is checked as the schema declares",
        file="template_trainer/config_checks.py",
        old="        if why:\n            _fail(field.name, value, why)",
        new="        if False:\n            _fail(field.name, value, why)",
        tests=("tests/config_checks_test.py",),
    ),
    Mutant(
        name="schema-run-length-fixed",
        feature="a resumed run may change the fields that leave the "
        "computation as it was (num_epochs)",
        file="template_trainer/schema.py",
        old=""""the run's length (a resumed run may change it)",\n"""
        """        computes=False,""",
        new=""""the run's length (a resumed run may change it)",""",
        tests=("tests/schema_test.py",),
    ),
    Mutant(
        name="schema-off-not-none",
        feature="a config's off value (0, 1) reaches compile as None",
        file="template_trainer/schema.py",
        old="    if field.off is not None and current == field.off:",
        new="    if False:",
        tests=("tests/schema_test.py",),
    ),
    Mutant(
        name="schema-added-field-not-backfilled",
        feature="a run saved before a field existed resumes as it was",
        file="template_trainer/workdir.py",
        old="        old.setdefault(key, value)",
        new="        pass",
        tests=("tests/schema_test.py",),
    ),
    Mutant(
        name="config-file-error-without-line",
        feature="a config file's exception names the file and the line",
        file="template_trainer/command_line.py",
        old="        if lines or isinstance(cause, SyntaxError):\n",
        new="        if False:\n",
        tests=("tests/cli_test.py",),
    ),
    Mutant(
        name="flag-error-by-type-dropped",
        feature="a --config.FIELD=VALUE of the wrong type is one line "
        "saying what is expected",
        file="template_trainer/command_line.py",
        old="        if expected:\n            return",
        new="        if False:\n            return",
        tests=("tests/cli_test.py",),
    ),
    Mutant(
        name="done-line-without-model-path",
        feature="the Done: line names model.keras's path",
        file="template_trainer/command_line.py",
        old='    return f"Done: {figures}{saved}"\n',
        new='    return f"Done: {figures}"\n',
        tests=(
            "tests/cli_test.py::test_a_run_logs_plain_lines_and_ends_with_done",
        ),
    ),
    Mutant(
        name="no-start-of-run-sizes",
        feature="the start of a run prints the parameter count and the "
        "split sizes",
        file="template_trainer/loop.py",
        old="    _describe(run)\n    start",
        new="    start",
        tests=(
            "tests/cli_test.py::test_a_run_logs_plain_lines_and_ends_with_done",
        ),
    ),
    Mutant(
        name="metrics-reset-per-epoch-only",
        feature="each logged training value is the mean over its logging "
        "interval",
        file="template_trainer/loop.py",
        old="    start = time.perf_counter()\n    run.model.reset_metrics()\n",
        new="    start = time.perf_counter()\n"
        "    if current % run.steps_per_epoch == 0:\n"
        "        run.model.reset_metrics()\n",
        tests=(
            "tests/train_test.py::"
            "test_logged_training_values_are_means_over_their_interval",
        ),
    ),
    Mutant(
        name="curves-without-learning-rate",
        feature="curves.png draws the learning rate",
        file="template_trainer/summaries.py",
        old='        drawn.append(("learning rate", ["learning_rate"]))\n',
        new="        pass\n",
        tests=(
            "tests/train_test.py::"
            "test_curves_draw_the_tasks_metric_and_the_learning_rate",
        ),
    ),
    Mutant(
        name="curves-without-bpc",
        feature="curves.png draws the task's own metric (bpc)",
        file="template_trainer/summaries.py",
        old='PANELS = ("loss", "accuracy", "bpc")\n',
        new='PANELS = ("loss", "accuracy")\n',
        tests=(
            "tests/train_test.py::"
            "test_curves_draw_the_tasks_metric_and_the_learning_rate",
        ),
    ),
    Mutant(
        name="no-hparams",
        feature="the config's fields in TensorBoard's HParams",
        file="template_trainer/summaries.py",
        old="                    hp.hparams(hparams_of(hparams))\n",
        new="                    pass\n",
        tests=(
            "tests/train_test.py::test_the_config_is_in_tensorboards_hparams",
        ),
    ),
    Mutant(
        name="early-stopping-off",
        feature="early stopping after early_stopping_patience validations",
        file="template_trainer/loop.py",
        old="            if _stopped_early(run, patience):\n"
        "                break\n",
        new="",
        tests=(
            "tests/train_test.py::"
            "test_early_stopping_counts_validations_across_a_resume",
        ),
    ),
    Mutant(
        name="early-stopping-count-not-checkpointed",
        feature="a resumed run keeps its early-stopping count",
        file="template_trainer/checkpoints.py",
        old='    extra = {} if stale is None else {"stale": stale}\n',
        new="    extra = {}\n",
        tests=(
            "tests/train_test.py::"
            "test_early_stopping_counts_validations_across_a_resume",
        ),
    ),
    Mutant(
        name="cpu-devices-ignored",
        feature="config.cpu_devices splits the CPU into logical devices, "
        "one replica each under the mirrored strategy",
        file="template_trainer/setup.py",
        old="    distribution.split_cpu(config.cpu_devices)\n",
        new="",
        tests=("tests/mirrored_test.py",),
    ),
    Mutant(
        name="train-step-autograph-converted",
        feature="the trainer traces train_step without AutoGraph, as fit does",
        file="template_trainer/setup.py",
        old="    @tf.function(autograph=False)\n    def one_step(iterator):\n",
        new="    @tf.function\n    def one_step(iterator):\n",
        tests=(
            "tests/trainer_options_test.py::"
            "test_steps_are_traced_without_autograph_as_fit_traces_them",
        ),
    ),
    Mutant(
        name="train-step-traced-twice",
        feature="the trainer's loop traces train_step once, as fit does",
        file="template_trainer/setup.py",
        old="    @tf.function(autograph=False)\n    def one_step(iterator):\n",
        new="    @tf.autograph.experimental.do_not_convert\n"
        "    def one_step(iterator):\n",
        tests=(
            "tests/trainer_options_test.py::"
            "test_steps_are_traced_without_autograph_as_fit_traces_them",
        ),
    ),
    Mutant(
        name="test-step-autograph-converted",
        feature="the trainer traces test_step without AutoGraph, as "
        "evaluate does",
        file="template_trainer/setup.py",
        old="    @tf.autograph.experimental.do_not_convert\n"
        "    def test_step(batch):\n",
        new="    def test_step(batch):\n",
        tests=(
            "tests/trainer_options_test.py::"
            "test_steps_are_traced_without_autograph_as_fit_traces_them",
        ),
    ),
]
