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
        old="        return [(obj, args.input_shape, args.order or 1)]\n",
        new="        return [(obj, args.input_shape, 1)]\n",
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
        old="        _check_case(args.target, case)\n",
        new="        pass\n",
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
]
