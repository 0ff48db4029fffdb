"""Generation with a key/value cache (`TransformerLM.call_cached`, the
cached loop of `models.sampling.generate`): the same logits as the full
forward pass at every position, the same ids as the uncached path, the
documented window past the context, one trace per model and settings."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from sample_test import (  # noqa: F401  The command's fixtures.
    _flags_unparsed,
    _sample,
    lm_workdir,
)

import models
from models import sampling
from models.sampling import generate

CONTEXT = 12


def _lm(seed=0, **kwargs):
    keras.utils.set_random_seed(seed)
    settings = dict(num_layers=1, num_heads=2, width=8, hidden_units=16)
    return models.TransformerLM((CONTEXT,), 11, **{**settings, **kwargs})


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"positions": "learned"},
        {"gradient_checkpointing": True},
        {"attention": "tiled"},
    ],
)
def test_cached_steps_give_the_full_pass_logits(kwargs):
    model = _lm(**kwargs)
    ids = np.random.default_rng(0).integers(1, 11, (2, CONTEXT))
    ids = tf.constant(ids, tf.int32)
    expected = model(ids).numpy()
    # The first 5 positions at once, padded to the cache's length, then
    # one at a time: each must see exactly the keys written before it.
    padded = tf.pad(ids[:, :5], [[0, 0], [0, CONTEXT - 5]])
    logits, cache = model.call_cached(padded, None, 0)
    got = [logits[:, :5]]
    for t in range(5, CONTEXT):
        logits, cache = model.call_cached(ids[:, t : t + 1], cache, t)
        got.append(logits)
    np.testing.assert_allclose(
        np.concatenate(got, axis=1), expected, rtol=1e-5, atol=1e-5
    )


# Each case traces two loops (~3 s on a loaded core): greedy, and the
# sampled settings together, on each kind of positions.
@pytest.mark.parametrize(
    "positions, settings",
    [
        ("rotary", {"temperature": 0.0}),
        ("rotary", {"temperature": 0.7, "top_k": 3, "num_samples": 3}),
        ("learned", {"temperature": 1.0, "num_samples": 2}),
    ],
)
def test_cached_ids_equal_the_uncached_ones(positions, settings):
    model = _lm(positions=positions)
    # The prompt and the text fill the context: no refill yet.
    args = (model, [3, 4, 5], CONTEXT - 3)
    cached = generate(*args, seed=7, **settings)
    uncached = generate(*args, seed=7, use_cache=False, **settings)
    np.testing.assert_array_equal(cached, uncached)
    assert cached.shape == (
        (settings["num_samples"], CONTEXT - 3)
        if "num_samples" in settings
        else (CONTEXT - 3,)
    )
    # Seeds matter, and the rows of a batch are drawn apart.
    if settings["temperature"]:
        other = generate(*args, seed=8, **settings)
        assert not np.array_equal(cached, other)
    if "num_samples" in settings:
        assert len({tuple(row) for row in cached}) > 1


def _reference(model, prompt, length, seed):
    """The documented windows, by hand: the last `CONTEXT` ids while the
    cache has room, then windows refilled from the last 3/4 of the context
    that grow by one id until full again; draws as `generate` seeds them
    (sampled, so that the window's start changes the text)."""
    keep = CONTEXT - CONTEXT // 4
    ids = list(prompt)
    begin = max(0, len(ids) - CONTEXT)
    for i in range(length):
        if len(ids) - begin > CONTEXT:
            begin = len(ids) - keep
        window = tf.constant([ids[begin:]], tf.int32)
        logits = model(window).numpy()[:, -1]
        logits[:, 0] = -np.inf
        draw = tf.random.stateless_categorical(logits, 1, seed=[seed, i])
        ids.append(int(draw[0, 0]))
    return ids[len(prompt) :]


def test_past_the_context_the_cache_is_refilled():
    # Longer than the context: the prompt slides in, then refills follow.
    model = _lm(seed=1, positions="learned")
    prompt = np.random.default_rng(1).integers(1, 11, CONTEXT + 5)
    got = generate(model, prompt, 2 * CONTEXT, temperature=1.0, seed=5)
    np.testing.assert_array_equal(
        got, _reference(model, prompt, 2 * CONTEXT, 5)
    )


def test_compiled_once_per_model_and_settings_with_an_xla_step():
    """One trace per model and settings; in it, the step of one token is
    compiled by XLA, not run op by op in the graph loop: 4x the
    characters/s here (benchmarks/RESULTS.md)."""
    model = _lm()
    generate(model, [1, 2], 3, temperature=0.5)
    generate(model, [1, 2, 3, 4], 6, temperature=0.5, seed=4, num_samples=2)
    (run,) = sampling._COMPILED[model].values()
    assert run.experimental_get_tracing_count() == 1
    library = run.get_concrete_function().graph.as_graph_def().library
    compiled = [
        f.signature.name
        for f in library.function
        if f.attr["_XlaMustCompile"].b
    ]
    assert [name for name in compiled if "next_logits" in name]


@pytest.mark.parametrize("use_cache", [True, False])
def test_traced_without_autograph_as_the_steps_are(monkeypatch, use_cache):
    """Generation traces the model as the trainer's steps and Keras's
    `fit` do, without AutoGraph: its loops are graph loops already, and
    converting the model's code cost each first generation ~1.7 s."""
    # No public getter for the status: TensorFlow's own module for it.
    from tensorflow.python.autograph.core import ag_ctx

    seen = []
    for name in ("__call__", "call_cached"):
        original = getattr(models.TransformerLM, name)

        def recording(self, *args, original=original, **kwargs):
            seen.append(ag_ctx.control_status_ctx().status)
            return original(self, *args, **kwargs)

        monkeypatch.setattr(models.TransformerLM, name, recording)
    generate(_lm(), [1, 2], 3, temperature=0.5, use_cache=use_cache)
    assert seen and set(seen) == {ag_ctx.Status.DISABLED}


def test_a_model_without_call_cached_generates_uncached():
    ids = keras.Input((None,), dtype="int32")
    logits = keras.layers.Embedding(7, 7)(ids)
    model = keras.Model(ids, logits)
    model.context_length = 4
    got = generate(model, [1, 2], 6, temperature=0)
    assert got.shape == (6,)
    with pytest.raises(ValueError, match="use_cache"):
        generate(model, [1, 2], 6, use_cache=True)


def test_mixed_precision_generates_uncached():
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = _lm()
    finally:
        keras.config.set_dtype_policy("float32")
    assert not model.supports_cached_generation
    assert generate(model, [1, 2], 3).shape == (3,)


@pytest.mark.parametrize("num_samples", [0, -1])
def test_num_samples_must_be_positive(num_samples):
    with pytest.raises(ValueError, match="num_samples="):
        generate(_lm(), [1], 2, num_samples=num_samples)


@pytest.mark.slow
def test_saved_tiled_lm_generates_the_same(tmp_path):
    """Slow: a save and a load, then two generations traced."""
    model = _lm(attention="tiled")
    model.save(tmp_path / "lm.keras")
    loaded = keras.models.load_model(tmp_path / "lm.keras")
    assert loaded.get_config() == model.get_config()
    np.testing.assert_array_equal(
        generate(loaded, [2, 3], 5, seed=2), generate(model, [2, 3], 5, seed=2)
    )


@pytest.mark.slow
def test_sample_command_draws_num_samples_texts(lm_workdir, capsys):  # noqa: F811
    """Slow: three runs of the command, each loading and tracing a model."""
    args = (f"--workdir={lm_workdir}", "--prompt=The", "--length=20")
    code, out, err = _sample(capsys, *args, "--num_samples=2")
    assert code == 0, err
    first, second = out[:-1].split("\n\n")
    assert first.startswith("The") and second.startswith("The")
    assert len(first) == len(second) == 23 and first != second
    assert "40 characters from" in err and "characters/s)" in err
    _, one, _ = _sample(capsys, *args)
    assert one == first + "\n"  # a batch's first row, the same draws
    code, out, err = _sample(capsys, *args, "--num_samples=0")
    assert code == 2 and err.startswith("error: --num_samples=0")
