"""Generates text from a workdir's language model.

  python -m template_trainer.sample --workdir runs/lm --prompt "The list"

Prints the prompt and its continuation; says on stderr which model wrote it
and how fast (characters per second). Same workdir, prompt and seed, same
text.
"""

import json
import os
import sys
import time

from template_trainer import command_line

# Before anything imports TensorFlow, as train.py.
command_line.set_process_defaults()

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A workdir trained with configs/lm.py.")
flags.DEFINE_string("prompt", "\n", "Text to continue.")
flags.DEFINE_integer("length", 500, "Characters to generate.")
flags.DEFINE_float(
    "temperature", 0.8, "Divides the logits; 0 takes the likeliest."
)
flags.DEFINE_integer("top_k", 0, "Sample among the k likeliest; 0: all.")
flags.DEFINE_integer("seed", 0, "Same seed, same text.")
flags.DEFINE_integer(
    "num_samples", 1, "Texts to draw at once (one batch), each printed."
)
flags.DEFINE_enum(
    "model",
    "best",
    ["best", "final"],
    "The best model on validation, or the final one.",
)
flags.mark_flags_as_required(["workdir"])


class SampleError(Exception):
    """The command cannot sample: its message says why, in one line."""


def _parse_flags(argv):
    """absl's parser, with its errors in one line, exit 2, as `train.py`'s
    (`command_line.parse_flags`)."""
    return command_line.parse_flags(FLAGS, argv)


def _vocabulary(workdir):
    """The vocabulary of the workdir's dataset: the bundled `python_docs`, or
    for `text:PATH` the one built from the file, kept in `data.json`."""
    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        raise SampleError(
            f"{workdir} holds no trained run (no config.json); train one "
            f"first: python train.py --config configs/lm.py --workdir "
            f"{workdir}"
        )
    with open(path) as f:
        dataset = json.load(f)["dataset"]
    from template_trainer.data import names

    if not names.is_text(dataset):
        raise SampleError(
            f"{workdir} holds a model of the '{dataset}' dataset, not a "
            "language model; expected a workdir trained on text (such as "
            "configs/lm.py's)."
        )
    if names.source(dataset) is None:
        from template_trainer.data import python_docs

        return python_docs
    # text:PATH: the vocabulary built from the file, kept with the run.
    from template_trainer.data.vocabulary import Vocabulary

    record = os.path.join(workdir, "data.json")
    if not os.path.isfile(record):
        raise SampleError(
            f"{workdir} has no data.json, the vocabulary of its text; "
            "rerun its train.py command to write it."
        )
    with open(record) as f:
        return Vocabulary(json.load(f)["vocabulary"])


def _load(workdir, which):
    prefix = "best_" if which == "best" else ""
    path = os.path.join(workdir, f"{prefix}model.keras")
    if not os.path.isfile(path):
        raise SampleError(
            f"{workdir} has no {prefix}model.keras: the run has not "
            "finished (a model is exported at its end); rerun its train.py "
            "command to finish it"
            + ("" if prefix else ", or use --model=best")
            + "."
        )
    # TensorFlow only now, and without its C++ start-up notes, as train.py.
    from template_trainer import startup

    startup.import_tensorflow()
    import keras

    import models  # noqa: F401  Registers the model classes.

    return path, keras.models.load_model(path)


def _check_flags(vocabulary):
    if not FLAGS.prompt:
        raise SampleError(
            "--prompt is empty; expected at least one character to continue."
        )
    try:
        prompt_ids = vocabulary.encode(FLAGS.prompt)
    except ValueError as e:
        raise SampleError(f"--prompt holds {e}") from None
    if FLAGS.length < 1:
        raise SampleError(
            f"--length={FLAGS.length} is invalid: expected a positive number "
            "of characters."
        )
    if FLAGS.temperature < 0:
        raise SampleError(
            f"--temperature={FLAGS.temperature} is invalid: expected 0 "
            "(the likeliest character) or more."
        )
    if not 0 <= FLAGS.top_k <= vocabulary.VOCABULARY_SIZE:
        raise SampleError(
            f"--top_k={FLAGS.top_k} is invalid: expected 0 (all) to "
            f"{vocabulary.VOCABULARY_SIZE}."
        )
    if FLAGS.num_samples < 1:
        raise SampleError(
            f"--num_samples={FLAGS.num_samples} is invalid: expected a "
            "positive number of texts."
        )
    return prompt_ids


def main(argv):
    try:
        if len(argv) > 1:
            raise SampleError(
                f"unexpected arguments {argv[1:]}; expected only flags "
                "(--workdir, --prompt, ...)."
            )
        vocabulary = _vocabulary(FLAGS.workdir)
        prompt_ids = _check_flags(vocabulary)
        path, model = _load(FLAGS.workdir, FLAGS.model)
    except SampleError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from models.sampling import generate

    settings = dict(
        temperature=FLAGS.temperature,
        top_k=FLAGS.top_k,
        seed=FLAGS.seed,
        num_samples=FLAGS.num_samples,
    )
    generate(model, prompt_ids, 1, **settings)  # Traces the loop once.
    start = time.perf_counter()
    texts = generate(model, prompt_ids, FLAGS.length, **settings)
    seconds = time.perf_counter() - start
    # Samples apart by a blank line; one sample prints as before.
    print("\n\n".join(FLAGS.prompt + vocabulary.decode(ids) for ids in texts))
    print(
        f"{texts.size} characters from {path} in {seconds:.2f} s "
        f"({texts.size / seconds:.0f} characters/s)",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
