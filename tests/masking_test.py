"""Padding changes nothing that training sees: in `models.TransformerLM`, a
padded sequence's loss and gradients are those of the sequence alone.

The loss and gradients are taken as `CustomModel.train_step` takes them: the
forward pass with `training=True`, then the model's own `compute_loss`,
which reads the Keras mask the embedding puts on the logits.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import models

CONTEXT = 16
VOCABULARY = 20
LENGTHS = (5, 11, 16)  # tokens in, per sequence; the last fills the context


def _model(positions, gradient_checkpointing=False):
    model = models.TransformerLM(
        (CONTEXT,),
        VOCABULARY,
        num_layers=2,
        num_heads=2,
        width=16,
        hidden_units=32,
        positions=positions,
        gradient_checkpointing=gradient_checkpointing,
    )
    model.compile(
        optimizer="sgd",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def _sequences():
    """`(inputs, targets)` per sequence: next-token pairs of ids 1..19 (0
    is padding)."""
    rng = np.random.default_rng(0)
    pairs = []
    for length in LENGTHS:
        tokens = rng.integers(1, VOCABULARY, size=length + 1)
        pairs.append((tokens[:-1], tokens[1:]))
    return pairs


def _pad(ids, side):
    padding = np.zeros(CONTEXT - len(ids), ids.dtype)
    parts = [ids, padding] if side == "right" else [padding, ids]
    return np.concatenate(parts)


def _loss_and_gradients(model, x, y):
    """The loss of the batch `(x, y)` and its gradient for every trainable
    weight, as `CustomModel.train_step` computes them."""
    x, y = tf.constant(x, tf.int32), tf.constant(y, tf.int32)
    with tf.GradientTape() as tape:
        y_pred = model(x, training=True)
        loss = model.compute_loss(x=x, y=y, y_pred=y_pred)
    grads = tape.gradient(loss, model.trainable_variables)
    # The embedding's gradient is sparse (IndexedSlices); compare it dense.
    return float(loss), [tf.convert_to_tensor(g).numpy() for g in grads]


def _assert_gradients_close(got, expected, names):
    assert len(got) == len(expected) == len(names)
    for g, e, name in zip(got, expected, names):
        np.testing.assert_allclose(
            g, e, rtol=1e-4, atol=1e-5 * np.abs(e).max(), err_msg=name
        )


@pytest.mark.parametrize(
    "positions, side, gradient_checkpointing",
    [
        ("rotary", "right", False),
        ("learned", "right", False),
        ("rotary", "left", False),
        ("rotary", "left", True),
    ],
)
def test_padded_sequences_train_as_if_alone(
    positions, side, gradient_checkpointing
):
    """Right padding puts padded keys after every real query, where the
    causal mask already hides them (`test_right_padding_needs_no_mask`);
    left padding puts them before every real query, so only the
    attention's key mask, with relative (rotary) positions, makes it hold,
    with the blocks checkpointed too (the mask has to go through
    `GradientCheckpoint`)."""
    keras.utils.set_random_seed(0)
    model = _model(positions, gradient_checkpointing)
    names = [v.path for v in model.trainable_variables]
    alone, padded = [], []
    for x, y in _sequences():
        alone.append(_loss_and_gradients(model, x[None], y[None]))
        row = _pad(x, side)[None], _pad(y, side)[None]
        padded.append(_loss_and_gradients(model, *row))
    for (loss, grads), (padded_loss, padded_grads) in zip(alone, padded):
        np.testing.assert_allclose(padded_loss, loss, rtol=1e-5)
        _assert_gradients_close(padded_grads, grads, names)

    # The padded batch: Keras 3 divides a masked loss by the number of
    # unmasked tokens, so the batch loss is the token-weighted mean of the
    # sequences' losses, and so is its gradient.
    batch = [
        np.stack([_pad(ids, side) for ids in column])
        for column in zip(*_sequences())
    ]
    batch_loss, batch_grads = _loss_and_gradients(model, *batch)
    weights = np.array(LENGTHS) / sum(LENGTHS)
    losses = np.array([loss for loss, _ in alone])
    np.testing.assert_allclose(batch_loss, weights @ losses, rtol=1e-5)
    # Not the mean over sequences, which would weigh each token of a short
    # sequence more.
    assert abs(batch_loss - losses.mean()) > 1e-3
    mean_grads = [
        sum(w * grads[k] for w, (_, grads) in zip(weights, alone))
        for k in range(len(names))
    ]
    _assert_gradients_close(batch_grads, mean_grads, names)


@pytest.mark.parametrize("positions", ["rotary", "learned"])
def test_right_padding_needs_no_mask(positions):
    """Causality alone: tokens after a sequence, even real ones that no
    padding mask hides, change none of its logits."""
    keras.utils.set_random_seed(0)
    model = _model(positions)
    rng = np.random.default_rng(1)
    for x, _ in _sequences()[:2]:
        after = rng.integers(1, VOCABULARY, size=CONTEXT - len(x))
        alone = model(x[None]).numpy()
        followed = model(np.concatenate([x, after])[None]).numpy()
        # float32 logits of O(1): the same ops on other shapes may round
        # differently in the last bits.
        np.testing.assert_allclose(
            followed[:, : len(x)], alone, rtol=1e-5, atol=1e-5
        )


def test_left_padding_shifts_learned_positions():
    """With learned absolute positions, left padding moves every token to
    another position vector: the loss is not the sequence's alone (why
    the test above pairs left padding with rotary positions). The position
    table is drawn with unit variance, so the shift is far larger than the
    float32 rounding that the equality tests above allow for."""
    keras.utils.set_random_seed(0)
    model = _model("learned")
    table = model.get_layer("embedding").position_embeddings
    table.assign(np.random.default_rng(0).normal(size=table.shape))
    x, y = _sequences()[0]
    loss, _ = _loss_and_gradients(model, x[None], y[None])
    shifted, _ = _loss_and_gradients(
        model, _pad(x, "left")[None], _pad(y, "left")[None]
    )
    # 100 times the relative tolerance the equality tests use.
    assert abs(shifted - loss) > 1e-3 * loss
