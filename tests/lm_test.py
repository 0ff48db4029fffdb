"""The character-level LM in the trainer: `configs/lm.py` made tiny.

One in-process run, shared by the tests that read what it returns and
leaves; each training option is checked on the LM in a step or two; the
sampler's rules on a fresh model; and, in subprocesses, what needs one:
two replicas (logical devices must be set before TensorFlow starts) and a
SIGKILL mid-run.
"""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from run_helpers import (
    LM_STEPS_PER_EPOCH,
    corpus_splits,
    tiny_lm_config,
)

import models
import mylayers
import template_trainer
from models.sampling import generate
from template_trainer import setup
from template_trainer.data import pipeline, python_docs


@pytest.fixture(autouse=True)
def _float32_afterwards():
    yield
    keras.mixed_precision.set_global_policy("float32")


@pytest.fixture(scope="session")
def lm_run(tmp_path_factory):
    """One epoch of the tiny LM: `(workdir, results)`."""
    workdir = tmp_path_factory.mktemp("lm")
    results = template_trainer.train_and_evaluate(
        tiny_lm_config(), str(workdir)
    )
    return workdir, results


@pytest.mark.slow
def test_run_reports_bits_per_character(lm_run):
    _, results = lm_run
    assert results["step"] == LM_STEPS_PER_EPOCH
    for prefix in ("val_", "test_", "best_test_"):
        assert results[f"{prefix}bpc"] == pytest.approx(
            results[f"{prefix}loss"] / math.log(2), rel=1e-5
        )
    # The LM's best model is chosen on bits per character, not accuracy.
    assert "best_val_bpc" in results and "best_val_accuracy" not in results


def _unigram_bits(train, scored):
    """Bits per character of `scored` under the character frequencies of
    `train` (add-one smoothed): what a model that ignores context scores."""
    counts = np.bincount(python_docs.encode(train), minlength=97)[1:]
    p = (counts + 1) / (counts + 1).sum()
    ids = python_docs.encode(scored) - 1
    return float(-np.log2(p[ids]).mean())


@pytest.mark.slow
def test_the_lm_learns_more_than_character_frequencies(lm_run):
    _, results = lm_run
    splits = corpus_splits()
    # ~4.8 bits: English prose and Python code.
    unigram = _unigram_bits(splits["train"], splits["validation"])
    assert results["val_bpc"] < unigram - 0.3
    assert results["test_bpc"] < unigram - 0.3


@pytest.mark.slow
def test_saved_model_loads_and_samples_by_seed(lm_run):
    workdir, _ = lm_run
    model = keras.models.load_model(workdir / "model.keras")
    assert isinstance(model, models.TransformerLM)
    assert model.context_length == 64
    prompt = python_docs.encode("The list ")

    def sample(seed):
        return generate(model, prompt, 40, temperature=1.0, seed=seed)

    first = sample(0)
    assert first.shape == (40,) and 1 <= first.min() and first.max() <= 96
    np.testing.assert_array_equal(sample(0), first)
    assert not np.array_equal(sample(1), first)


@pytest.fixture(scope="session")
def fresh_lm():
    """An untrained tiny LM: enough to check the sampler's rules."""
    keras.utils.set_random_seed(0)
    return models.TransformerLM(
        (16,), 97, num_layers=1, num_heads=2, width=16, hidden_units=32
    )


def test_logits_depend_only_on_earlier_characters(fresh_lm):
    """The next character's logits at position t read ids 0..t: a model
    that saw later ones would score a low loss by copying, and sample
    nothing like its training."""
    ids = python_docs.encode("for x in range(9)")[None, :16]
    changed = ids.copy()
    changed[0, 10:] = python_docs.encode("#" * 6)
    a, b = fresh_lm(ids).numpy(), fresh_lm(changed).numpy()
    np.testing.assert_array_equal(a[0, :10], b[0, :10])
    assert (np.abs(a[0, 10:] - b[0, 10:]).max(axis=-1) > 1e-4).all()


def _sum_model(favour_padding):
    """A stand-in LM whose likeliest next id is the sum of the ids up to
    here, mod 96, plus 1 (with `favour_padding`, padding's logit is higher
    still): what `generate` reads shows in the ids it returns."""
    ids = keras.Input((None,), dtype="int32")

    def logits(ids):
        next_ids = tf.math.cumsum(ids, axis=1) % 96 + 1
        scores = tf.one_hot(next_ids, 97) * 10.0
        if favour_padding:
            scores += tf.one_hot(tf.zeros_like(next_ids), 97) * 20.0
        return scores

    scores = keras.layers.Lambda(logits, output_shape=(None, 97))(ids)
    return keras.Model(ids, scores)


@pytest.mark.parametrize("favour_padding", [False, True])
def test_generate_reads_the_last_context_length_ids(favour_padding):
    model = _sum_model(favour_padding)
    prompt = [90, 3, 7]
    ids = list(prompt)
    for _ in range(12):  # past the 5-id context after two steps
        ids.append(sum(ids[-5:]) % 96 + 1)
    greedy = generate(model, prompt, 12, temperature=0, context_length=5)
    assert greedy.tolist() == ids[3:]
    sampled = generate(model, prompt, 12, seed=0, context_length=5)
    assert sampled.min() >= 1  # padding is never drawn


def _greedy(model, prompt, length):
    """The likeliest continuation, one direct model call per character on
    the unpadded last `context_length` ids."""
    ids = list(prompt)
    for _ in range(length):
        window = np.array([ids[-model.context_length :]], np.int32)
        logits = model(window, training=False)[0, -1].numpy()
        logits[0] = -np.inf  # padding is never generated
        ids.append(int(np.argmax(logits)))
    return ids[len(prompt) :]


# The cached path (None: this model's default) is slow, about 3 s: the
# fast lane checks it against the uncached one in cached_generation_test.
@pytest.mark.parametrize(
    "use_cache", [False, pytest.param(None, marks=pytest.mark.slow)]
)
def test_temperature_zero_and_top_k_one_are_greedy(fresh_lm, use_cache):
    """Uncached, 10 + 12 ids: the window slides past the 16-id context, one
    id at a time. Cached (the default for this model), 10 + 6 ids fill the
    context: past it the cache is refilled from the last 3/4 of the
    context instead of sliding by one (tests/cached_generation_test.py)."""
    prompt = python_docs.encode("def main()")
    length = 12 if use_cache is False else 6
    greedy = _greedy(fresh_lm, prompt, length)

    def run(**kwargs):
        ids = generate(fresh_lm, prompt, length, use_cache=use_cache, **kwargs)
        return ids.tolist()

    assert run(temperature=0) == greedy
    for seed in (0, 1):
        assert run(top_k=1, seed=seed) == greedy
    # Without the cut, the (untrained, near uniform) model strays from it.
    assert run(seed=0) != greedy


@pytest.fixture(scope="session")
def text_data():
    """The tiny LM's data, in batches of 16 windows."""
    return pipeline.create_datasets(
        dataset="python_docs",
        data_dir=None,
        download=False,
        val_fraction=0.1,
        batch_size=16,
        eval_batch_size=16,
        shuffle_buffer=1,
        seed=0,
        context_length=64,
    )


@pytest.fixture
def batches(text_data):
    return list(text_data.train.take(3))


@pytest.fixture
def compiled(text_data):
    def compiled_lm(**overrides):
        """The tiny LM as the trainer compiles it, its weights seeded, at
        a constant learning rate and (unless asked) unclipped."""
        config = tiny_lm_config(
            **{"schedule": "constant", "global_clipnorm": 0.0, **overrides}
        )
        keras.utils.set_random_seed(config.seed)
        strategy = tf.distribute.get_strategy()
        return setup.compiled_model(config, text_data.info, strategy, 100)

    return compiled_lm


def _weights(model):
    return [v.numpy() for v in model.trainable_variables]


def test_mixed_bfloat16_computes_in_bfloat16_with_float32_logits(
    compiled, batches
):
    model = compiled(mixed_precision="mixed_bfloat16")
    block = model.get_layer("block_0")
    assert block.compute_dtype == "bfloat16"
    assert all(w.dtype == "float32" for w in model.weights)
    assert model(batches[0][0]).dtype == "float32"
    before = _weights(model)
    losses = [float(model.train_step(b)["loss"]) for b in batches[:2]]
    assert all(np.isfinite(losses))
    assert all((a != b).any() for a, b in zip(_weights(model), before))


def test_gradient_accumulation_averages_two_steps_into_one(compiled, batches):
    """Two accumulated half batches update as one step on both: the mean
    gradient, applied once (SGD, so the update is the gradient's)."""
    sgd = dict(optimizer="sgd", momentum=0.0, learning_rate=0.5)
    accumulating = compiled(gradient_accumulation_steps=2, **sgd)
    start_weights = _weights(accumulating)
    accumulating.train_step(batches[0])
    for a, b in zip(_weights(accumulating), start_weights):
        np.testing.assert_array_equal(a, b)
    accumulating.train_step(batches[1])

    whole = compiled(**sgd)
    for a, b in zip(_weights(whole), start_weights):
        np.testing.assert_array_equal(a, b)  # the same start
    both = tuple(tf.concat([x, y], 0) for x, y in zip(*batches[:2]))
    whole.train_step(both)
    moved = 0.0
    for a, b, start_value in zip(
        _weights(accumulating), _weights(whole), start_weights
    ):
        np.testing.assert_allclose(a, b, atol=1e-6)
        moved = max(moved, float(np.abs(a - start_value).max()))
    assert moved > 1e-3


def test_global_clipnorm_bounds_the_lm_update(compiled, batches):
    model = compiled(
        optimizer="sgd", momentum=0.0, learning_rate=1.0, global_clipnorm=1e-3
    )
    before = _weights(model)
    logs = model.train_step(batches[0])
    change = [a - b for a, b in zip(_weights(model), before)]
    norm = np.sqrt(sum(np.sum(np.square(c)) for c in change))
    assert float(logs["grad_norm"]) > 0.1
    # SGD with lr 1 moves by the clipped gradient: its norm is the clip.
    assert norm == pytest.approx(1e-3, rel=1e-3)


def test_gradient_checkpointing_trains_as_without(compiled, batches):
    # SGD: the update is the gradient (Adam's would hide its scale).
    sgd = dict(optimizer="sgd", momentum=0.0, learning_rate=0.5)
    plain = compiled(**sgd)
    checkpointed = compiled(**sgd, **{"model.gradient_checkpointing": True})
    assert isinstance(
        checkpointed.get_layer("ckpt_0"), mylayers.GradientCheckpoint
    )
    for a, b in zip(_weights(plain), _weights(checkpointed), strict=True):
        np.testing.assert_array_equal(a, b)
    for batch in batches:
        loss = float(plain.train_step(batch)["loss"])
        assert float(checkpointed.train_step(batch)["loss"]) == (
            pytest.approx(loss, rel=1e-6)
        )
    for a, b in zip(_weights(plain), _weights(checkpointed)):
        np.testing.assert_allclose(a, b, atol=1e-6)


# Run in a process of its own: logical devices must be set before
# TensorFlow initialises, which this test process did long ago. Both runs
# start from the seed's weights and read the same batches (the iterator is
# plain; each replica takes its half of the global batch).
