"""Tests for `mylayers.TokenEmbedding`."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import mylayers

IDS = np.array([[1, 2, 3, 0], [4, 4, 0, 0]])


@pytest.mark.parametrize(
    "positions, max_length, shapes",
    [
        ("learned", 6, [(7, 3), (6, 3)]),
        ("none", None, [(7, 3)]),
    ],
)
def test_basics(positions, max_length, shapes, tmp_path):
    layer = mylayers.TokenEmbedding(
        7, 3, positions=positions, max_length=max_length
    )
    assert layer(IDS).shape == (2, 4, 3)
    assert [tuple(w.shape) for w in layer.trainable_weights] == shapes
    assert layer.compute_output_shape((None, 5)) == (None, 5, 3)
    restored = mylayers.TokenEmbedding.from_config(layer.get_config())
    assert restored.get_config() == layer.get_config()

    # One training step: every table moves, the rows of unused ids stay.
    ids = keras.Input((None,), dtype="int32")
    outputs = mylayers.TokenEmbedding(
        7, 3, positions=positions, max_length=max_length, mask_zero=True
    )(ids)
    model = keras.Model(ids, mylayers.Linear(2)(outputs))
    model.compile(keras.optimizers.SGD(0.5), "mse")
    before = [w.numpy().copy() for w in model.trainable_weights]
    model.fit(IDS, np.ones((2, 4, 2)), verbose=0)
    for old, new in zip(before, model.trainable_weights):
        assert not np.allclose(old, new.numpy()), new.path
    # Ids 5 and 6 are unused, and 0 is padding: its positions are masked
    # out of the loss, so its row gets no gradient either.
    table = model.layers[1].embeddings.numpy()
    np.testing.assert_array_equal(table[[0, 5, 6]], before[0][[0, 5, 6]])
    assert not np.allclose(table[1:5], before[0][1:5])
    model.save(tmp_path / "m.keras")
    reloaded = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_array_equal(
        model.predict(IDS, verbose=0), reloaded.predict(IDS, verbose=0)
    )


def test_correctness():
    table = np.arange(12.0).reshape(4, 3)
    places = 100.0 * np.arange(1, 10).reshape(3, 3)
    layer = mylayers.TokenEmbedding(4, 3, max_length=3)
    layer.build((None, 3))
    layer.set_weights([table, places])
    ids = np.array([[3, 0], [1, 1]])
    expected = table[ids] + places[:2]  # y[t] = E[x[t]] + P[t]
    np.testing.assert_array_equal(layer(ids).numpy(), expected)
    # Positions "none": the lookup alone, at any length.
    plain = mylayers.TokenEmbedding(4, 3, positions="none")
    plain.build((None, None))
    plain.set_weights([table])
    long_ids = np.array([[2, 1, 0, 3, 3, 2, 1]])
    np.testing.assert_array_equal(plain(long_ids).numpy(), table[long_ids])


def test_gradient_is_a_sparse_update_of_the_rows_used():
    layer = mylayers.TokenEmbedding(5, 2, max_length=3)
    ids = tf.constant([[1, 3, 1], [0, 1, 2]])
    upstream = np.random.default_rng(0).normal(size=(2, 3, 2))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(ids) * upstream)
    d_table, d_places = tape.gradient(loss, layer.trainable_weights)
    assert isinstance(d_table, tf.IndexedSlices)
    expected = np.zeros((5, 2))
    np.add.at(expected, ids.numpy(), upstream)  # id 1 used three times
    np.testing.assert_allclose(
        tf.convert_to_tensor(d_table).numpy(), expected, rtol=1e-6
    )
    np.testing.assert_allclose(d_places.numpy(), upstream.sum(0), rtol=1e-6)


def test_mask_zero_marks_padding_and_reaches_the_next_layer():
    layer = mylayers.TokenEmbedding(5, 2, positions="none", mask_zero=True)
    np.testing.assert_array_equal(layer.compute_mask(IDS).numpy(), IDS != 0)
    assert (
        mylayers.TokenEmbedding(5, 2, positions="none").compute_mask(IDS)
        is None
    )

    seen = []

    class Spy(keras.layers.Layer):
        def __init__(self):
            super().__init__()
            self.supports_masking = True

        def call(self, inputs, mask=None):
            seen.append(mask)
            return inputs

    ids = keras.Input((None,), dtype="int32")
    model = keras.Model(ids, Spy()(mylayers.RMSNorm()(layer(ids))))
    model(IDS)
    np.testing.assert_array_equal(seen[-1].numpy(), IDS != 0)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision(policy):
    layer = mylayers.TokenEmbedding(5, 2, max_length=4, dtype=policy)
    with tf.GradientTape() as tape:
        y = layer(IDS)
        loss = tf.reduce_sum(tf.cast(y, tf.float32) ** 2)
    assert y.dtype == policy.split("_")[1]
    for grad, weight in zip(
        tape.gradient(loss, layer.trainable_weights), layer.trainable_weights
    ):
        assert grad.dtype == weight.dtype == tf.float32


def test_wrong_input_names_layer():
    layer = mylayers.TokenEmbedding(5, 2, positions="none", name="my_embed")
    with pytest.raises(ValueError, match="my_embed"):
        layer(tf.constant([1, 2]))  # one rank short


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        ({"vocabulary_size": 0}, "vocabulary_size"),
        ({"vocabulary_size": 2.0}, "vocabulary_size"),
        ({"output_dim": -1}, "output_dim"),
        ({"output_dim": True}, "output_dim"),
        ({"positions": "rotary"}, "positions"),
        ({"positions": "learned", "max_length": None}, "max_length"),
        ({"positions": "none", "max_length": 0}, "max_length"),
    ],
)
def test_invalid_arguments(kwargs, argument):
    kwargs = {"vocabulary_size": 5, "output_dim": 2, "max_length": 4, **kwargs}
    with pytest.raises(ValueError, match=f"Received: {argument}=") as caught:
        mylayers.TokenEmbedding(**kwargs)
    assert "\n" not in str(caught.value)


def test_sequence_longer_than_max_length_is_named():
    layer = mylayers.TokenEmbedding(10, 4, max_length=3, name="emb")
    with pytest.raises(
        ValueError, match="'emb' has positions for max_length=3"
    ):
        layer(tf.ones((1, 5), tf.int32))
