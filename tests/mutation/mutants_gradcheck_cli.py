"""Mutants of `python -m mylayers.gradcheck TARGET` (a user's layer or
cases), of weight names by attribute, and of `fit`'s warning at learning
rate 0."""

from tests.mutation.mutant import Mutant

CLI_TEST = "tests/gradcheck_cli_test.py"
CLI_FAST = (
    f"{CLI_TEST}::test_a_layer_class_with_its_input_shape",
    f"{CLI_TEST}::test_an_instance_at_order_2",
    f"{CLI_TEST}::test_cases_and_their_failures",
    f"{CLI_TEST}::test_help_exits_0",
    f"{CLI_TEST}::test_bad_arguments_are_one_line_and_exit_2",
)
NAMES = (
    "tests/gradcheck_test.py::"
    "test_weights_are_named_by_the_attributes_that_hold_them",
    "tests/gradcheck_gallery_test.py::test_guide_first_example_unchanged",
)

MUTANTS = [
    Mutant(
        name="gradcheck-cli-ignores-target",
        feature="python -m mylayers.gradcheck TARGET checks the user's layer",
        file="mylayers/gradcheck/__main__.py",
        old="        checks = cases(args) if args.target else cli_cases()\n",
        new="        checks = cli_cases()\n",
        tests=CLI_FAST,
    ),
    Mutant(
        name="gradcheck-cli-cwd-not-importable",
        feature="the user's module is imported from the current directory",
        file="mylayers/gradcheck/cli.py",
        old="        sys.path.insert(0, os.getcwd())\n",
        new="        pass\n",
        tests=CLI_FAST,
    ),
    Mutant(
        name="gradcheck-cli-order-ignored",
        feature="--order 2 checks a layer's second derivatives",
        file="mylayers/gradcheck/cli.py",
        old="args.order or 1)]\n",
        new="1)]\n",
        tests=CLI_FAST,
    ),
    Mutant(
        name="gradcheck-cli-usage-block",
        feature="a bad argument is one line on stderr and exit 2",
        file="mylayers/gradcheck/cli.py",
        old='        raise UsageError(f"{message} (see --help)")\n',
        new="        super().error(message)\n",
        tests=CLI_FAST,
    ),
    Mutant(
        name="gradcheck-cli-call-error-traceback",
        feature="a layer that cannot be called on --input-shape is one "
        "line and exit 2",
        file="mylayers/gradcheck/__main__.py",
        old="            raise UsageError(str(error)) from error\n",
        new="            raise\n",
        tests=CLI_FAST,
    ),
    Mutant(
        name="gradcheck-cli-cases-unchecked",
        feature="cases that are not (layer, inputs, order) are refused in "
        "one line",
        file="mylayers/gradcheck/cli.py",
        old="    if not isinstance(layer, keras.layers.Layer) or order not in "
        "(1, 2):\n",
        new="    if False:\n",
        tests=CLI_FAST,
    ),
    Mutant(
        name="gradcheck-weight-names-by-path",
        feature="an unnamed weight is named by the attribute that holds it",
        file="mylayers/gradcheck/target.py",
        old="        if id(v) in held and _AUTO_NAME.fullmatch(v.name):\n",
        new="        if False:\n",
        tests=NAMES,
    ),
    Mutant(
        name="gradcheck-weight-names-keras-lists",
        feature="Keras's own lists of a layer's variables name no weight",
        file="mylayers/gradcheck/target.py",
        old="            if attribute in _keras_attributes() or attribute",
        new="            if attribute",
        tests=NAMES,
    ),
    Mutant(
        name="gradcheck-weight-names-not-by-owner",
        feature="a weight two layers hold is named by the layer that made it",
        file="mylayers/gradcheck/target.py",
        old="                if id(v) not in held or owner > held[id(v)][0]:\n",
        new="                if id(v) not in held:\n",
        tests=NAMES,
    ),
]

FIT = ("tests/custom_model_test.py",)

MUTANTS += [
    Mutant(
        name="fit-silent-at-learning-rate-0",
        feature="fit on a CustomModel at learning rate 0 warns in one line",
        file="models/custom_model.py",
        old="        self._warn_if_no_learning()\n",
        new="",
        tests=FIT,
    ),
    Mutant(
        name="fit-warns-during-warm-up",
        feature="a warm-up that starts at 0 does not warn",
        file="models/custom_model.py",
        old="        return [now, "
        "float(keras.ops.convert_to_numpy(upcoming))]\n",
        new="        return [now]\n",
        tests=FIT,
    ),
    Mutant(
        name="gradcheck-cli-declared-examples-ignored",
        feature="a user's layer class that declares examples is checked on "
        "them, with no --input-shape",
        file="mylayers/gradcheck/cli.py",
        old='and "examples" in vars(obj):\n',
        new="and False:\n",
        tests=(f"{CLI_TEST}::test_a_layer_class_with_declared_examples",),
    ),
    Mutant(
        name="layer-added-to-package-unchecked",
        feature="a layer added to mylayers.__all__ is checked by the CLI and "
        "the layer tests with no list to edit",
        file="mylayers/examples.py",
        old="    for cls in public_layers():\n",
        new="    for cls in public_layers()[:-1]:\n",
        tests=(
            "tests/gradcheck_test.py::"
            "test_cli_checks_every_public_layer_and_one_added",
        ),
    ),
    Mutant(
        name="layer-without-examples-passes-silently",
        feature="a public layer that declares no examples is named, not "
        "skipped",
        file="mylayers/examples.py",
        old='        if "examples" not in vars(cls):\n',
        new='        if "examples" not in vars(cls):\n            continue\n',
        tests=(
            "tests/gradcheck_test.py::"
            "test_a_public_layer_without_examples_is_named",
        ),
    ),
    Mutant(
        name="layer-second-example-unchecked",
        feature="every example a layer declares is checked, not only its first",
        file="mylayers/examples.py",
        old="        found += cls.examples(**kwargs)\n",
        new="        found += cls.examples(**kwargs)[:1]\n",
        tests=(
            "tests/gradcheck_test.py::"
            "test_cli_checks_every_public_layer_and_one_added",
        ),
    ),
]
