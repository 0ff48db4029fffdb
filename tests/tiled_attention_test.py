"""`TiledCausalSelfAttention`: the plain layer's function and gradients,
from tiles and a custom backward pass that recomputes them. (gradcheck's
finite differences check it, masked, in every mode, as one of the cases
of `python -m mylayers.gradcheck`: tests/gradcheck_cli_test.py.)"""

import unittest.mock

import keras
import numpy as np
import pytest
import tensorflow as tf

import models
import mylayers
from mylayers import tiled_causal_self_attention as tiled_module

# Left padding (the first query sees no key), right padding, none.
MASK = np.array(
    [
        [False, False, True, True, True, True, True],
        [True, True, True, True, True, False, False],
        [True] * 7,
    ]
)


def _pair(tile_size, rotary=True):
    """A tiled layer and a plain one with the same weights."""
    tiled = mylayers.TiledCausalSelfAttention(
        2, rotary=rotary, tile_size=tile_size
    )
    plain = mylayers.CausalSelfAttention(2, rotary=rotary)
    shape = (None, None, 8)
    tiled.build(shape)
    plain.build(shape)
    keras.utils.set_random_seed(0)
    # Scores of a few units, as in a trained model.
    weights = [np.random.normal(0, 0.5, w.shape) for w in plain.weights]
    tiled.set_weights(weights)
    plain.set_weights(weights)
    return tiled, plain


def _outputs_and_gradients(layer, x, mask):
    upstream = tf.random.stateless_normal(x.shape, [1, 2])
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, mask=mask)
        loss = tf.reduce_sum(y * upstream)
    return [y, *tape.gradient(loss, [x, *layer.trainable_weights])]


@pytest.mark.parametrize(
    "tile_size, rotary, mask",
    [
        (3, True, MASK),  # 7 keys: tiles of 3, 3 and 1 (2 padded)
        (2, False, MASK),
        (16, True, None),  # one tile, longer than the text
        (1, True, None),
    ],
)
def test_equals_plain_attention_in_outputs_and_gradients(
    tile_size, rotary, mask
):
    tiled, plain = _pair(tile_size, rotary)
    x = tf.random.stateless_normal((3, 7, 8), [0, 1])
    for mode in (lambda f: f, tf.function):
        got = mode(_outputs_and_gradients)(tiled, x, mask)
        expected = mode(_outputs_and_gradients)(plain, x, mask)
        # float32 rounding: each tensor's entries differ by the sums'
        # order, relative to the tensor's scale.
        for g, e in zip(got, expected):
            scale = np.abs(e).max()
            np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5 * scale)


def test_no_length_by_length_scores():
    """The traced forward and backward pass hold no `length x length`
    tensor: every score lives in a tile of `tile_size x tile_size`."""
    tiled, _ = _pair(tile_size=4)
    x = tf.random.stateless_normal((1, 16, 8), [0, 1])
    step = tf.function(_outputs_and_gradients).get_concrete_function(
        tiled, x, None
    )
    shapes = [
        tuple(t.shape.as_list())
        for op in step.graph.get_operations()
        for t in op.outputs
        if t.shape.rank
    ]
    assert not [s for s in shapes if s[-2:] == (16, 16)]


def test_tiles_are_computed_one_at_a_time():
    """A while loop runs up to 10 iterations at once by default, and a
    tile's scores depend on no value the loop carries: all the tiles of a
    context up to 10 tiles long would be alive together, `length x
    length` again. The forward and the backward pass's loops, over query
    tiles and within each over key tiles, run one at a time."""
    tiled, _ = _pair(tile_size=4)
    x = tf.random.stateless_normal((1, 16, 8), [0, 1])
    step = tf.function(_outputs_and_gradients).get_concrete_function(
        tiled, x, None
    )
    graph = step.graph.as_graph_def()
    nodes = list(graph.node)
    for function in graph.library.function:
        nodes += function.node_def
    loops = [
        node.attr["parallel_iterations"].i
        for node in nodes
        if node.op in ("While", "StatelessWhile")
    ]
    assert loops == [1, 1, 1, 1]


def test_a_query_tile_meets_only_the_key_tiles_up_to_its_own():
    """Causal: query tile `i` skips key tiles `i + 1, ...`, all in its
    future, so a pass takes `count (count + 1) / 2` tile pairs of the
    `count ** 2`: half the work at long contexts. Counted eagerly, where
    the loops run in Python."""
    tiled, plain = _pair(tile_size=4)
    x = tf.random.stateless_normal((2, 15, 8), [0, 1])  # 4 tiles, 1 padded
    # Left padding over a tile's end: queries 0-4 see no key.
    mask = np.arange(15)[None] >= np.array([[5], [0]])
    pairs = []
    scores = tiled_module._Tiles.scores

    def counted(self, i, j):
        pairs.append((int(i), int(j)))
        return scores(self, i, j)

    with unittest.mock.patch.object(tiled_module._Tiles, "scores", counted):
        got = _outputs_and_gradients(tiled, x, mask)
    in_a_pass = [(i, j) for i in range(4) for j in range(i + 1)]
    # Forward in query-tile order, backward in key-tile order.
    assert sorted(pairs) == sorted(in_a_pass * 2)
    expected = _outputs_and_gradients(plain, x, mask)
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5 * np.abs(e).max())


@pytest.mark.parametrize(
    "make, argument",
    [
        (lambda: mylayers.TiledCausalSelfAttention(2, dropout=0.1), "dropout"),
        (
            lambda: mylayers.TiledCausalSelfAttention(2, tile_size=0),
            "tile_size",
        ),
        (
            lambda: mylayers.TransformerBlock(2, 8, attention="flash"),
            "attention",
        ),
    ],
)
def test_invalid_arguments(make, argument):
    with pytest.raises(ValueError, match=f"Received: {argument}="):
        make()


def test_language_model_chooses_it():
    model = models.TransformerLM(
        (8,), 11, num_layers=1, num_heads=2, width=8, attention="tiled"
    )
    attention = model.get_layer("block_0").attention
    assert isinstance(attention, mylayers.TiledCausalSelfAttention)
    assert model.get_config()["attention"] == "tiled"
    plain = models.TransformerLM((8,), 11, num_layers=1, num_heads=2, width=8)
    assert type(plain.get_layer("block_0").attention) is (
        mylayers.CausalSelfAttention
    )


@pytest.mark.slow
def test_lm_step_compiled_by_xla_equals_the_plain_step():
    """The README's long-context setting, `attention="tiled"` with
    `jit_compile=True`, trains as the plain layer's step does: two steps
    of the trainer's loop from the same weights, at a context of
    two tiles of 128 (the second padded: 122 keys). Slow (~6 s): XLA compiles
    a whole step."""
    from template_trainer import setup

    def train(attention, jit_compile):
        keras.utils.set_random_seed(0)
        model = models.TransformerLM(
            (250,),
            11,
            num_layers=1,
            num_heads=2,
            width=8,
            hidden_units=16,
            attention=attention,
        )
        # Scores of a few units, as in a trained model, so that the
        # tiles' running maxima differ.
        attention = model.get_layer("block_0").attention
        rng = np.random.default_rng(0)
        attention.set_weights(
            [rng.normal(0, 0.5, w.shape) for w in attention.get_weights()]
        )
        model.compile(
            optimizer=keras.optimizers.AdamW(1e-2),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        ids = tf.random.stateless_uniform((4, 251), [3, 4], 1, 11, tf.int32)
        data = tf.data.Dataset.from_tensors((ids[:, :-1], ids[:, 1:]))
        iterator = iter(data.repeat())
        step = tf.Variable(0, dtype=tf.int64)
        train_steps = setup.make_train_steps(
            model, tf.distribute.get_strategy(), step, jit_compile
        )
        losses = [float(train_steps(iterator, 1)["loss"]) for _ in range(2)]
        return losses, model.get_weights()

    (tiled_losses, tiled), (plain_losses, plain) = (
        train("tiled", True),
        train("plain", False),
    )
    # float32 steps whose sums run in other orders: close, not equal.
    np.testing.assert_allclose(tiled_losses, plain_losses, rtol=1e-5)
    for a, b in zip(tiled, plain):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
