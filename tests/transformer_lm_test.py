"""`models.TransformerLM`'s own arguments reach its blocks."""

import numpy as np
import pytest

import models

IDS = np.arange(1, 17).reshape(2, 8) % 11 + 1


def _lm(dropout):
    return models.TransformerLM(
        (8,),
        12,
        num_layers=1,
        num_heads=2,
        width=8,
        hidden_units=16,
        dropout=dropout,
    )


@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_dropout_reaches_the_blocks(dropout):
    model = _lm(dropout)
    blocks = [layer for layer in model.layers if "block" in layer.name]
    assert blocks and all(b.dropout == dropout for b in blocks)
    trained = model(IDS, training=True).numpy()
    inferred = model(IDS, training=False).numpy()
    if dropout:
        assert np.abs(trained - inferred).max() > 1e-3
    else:
        np.testing.assert_allclose(trained, inferred, rtol=1e-6, atol=1e-6)
