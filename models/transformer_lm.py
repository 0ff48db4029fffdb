"""A character-level Transformer language model built from `mylayers`."""

import keras
import tensorflow as tf

import mylayers
from models.custom_model import CustomModel
from mylayers import checks


@keras.saving.register_keras_serializable(package="models")
class TransformerLM(CustomModel):
    """Token ids -> TokenEmbedding -> TransformerBlock x N -> RMSNorm ->
    Linear: the logits of the next token at every position.

    A Functional `CustomModel` on `(batch, length)` int32 ids, any length
    up to `input_shape[0]` (any length at all with rotary positions). Id 0
    is padding: the embedding's mask reaches attention (padded keys get no
    weight) and the loss (padded targets count for nothing).

    Args:
        input_shape: `(context_length,)`, the longest sequence trained on.
        num_classes: The vocabulary size, padding id included.
        num_layers: Transformer blocks.
        num_heads: Attention heads per block.
        width: Width of the residual stream.
        hidden_units: Width of each block's MLP.
        positions: "rotary" (rotate queries and keys by position) or
            "learned" (a position vector per place, added to the tokens').
        dropout: Dropout rate in every block.
        gradient_checkpointing: Wrap each block in
            `mylayers.GradientCheckpoint`: less memory, one more forward
            pass per step.
        attention: "plain" (`mylayers.CausalSelfAttention`) or "tiled"
            (`mylayers.TiledCausalSelfAttention`: the same function with
            memory linear in the context; needs `dropout=0`).
        **kwargs: `keras.Model` arguments (`name`, ...).
    """

    def __init__(
        self,
        input_shape,
        num_classes,
        num_layers=4,
        num_heads=4,
        width=128,
        hidden_units=512,
        positions="rotary",
        dropout=0.0,
        gradient_checkpointing=False,
        attention="plain",
        **kwargs,
    ):
        checks.positive_int(self, "num_layers", num_layers)
        checks.require(
            positions in ("rotary", "learned"),
            self,
            "positions",
            positions,
            "'rotary' or 'learned'",
        )
        (context_length,) = input_shape
        ids = keras.Input(shape=(None,), dtype="int32", name="tokens")
        x = mylayers.TokenEmbedding(
            num_classes,
            width,
            positions="learned" if positions == "learned" else "none",
            max_length=context_length,
            mask_zero=True,
            name="embedding",
        )(ids)
        for i in range(num_layers):
            block = mylayers.TransformerBlock(
                num_heads,
                hidden_units,
                rotary=positions == "rotary",
                dropout=dropout,
                attention=attention,
                name=f"block_{i}",
            )
            if gradient_checkpointing:
                block = mylayers.GradientCheckpoint(block, name=f"ckpt_{i}")
            x = block(x)
        x = mylayers.RMSNorm(name="final_norm")(x)
        # float32 logits under mixed precision: the softmax over the
        # vocabulary and the loss need the range.
        logits = mylayers.Linear(num_classes, dtype="float32", name="logits")(x)
        kwargs.setdefault("name", "transformer_lm")
        super().__init__(inputs=ids, outputs=logits, **kwargs)
        self.input_shape_ = tuple(input_shape)
        self.num_classes = num_classes
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.width = width
        self.hidden_units = hidden_units
        self.positions = positions
        self.dropout = dropout
        self.gradient_checkpointing = gradient_checkpointing
        self.attention = attention

    @property
    def context_length(self):
        return self.input_shape_[0]

    @property
    def supports_cached_generation(self):
        """Whether `call_cached` can run: not under mixed precision, whose
        casts only Keras's `__call__` makes."""
        policy = self.get_layer("block_0").dtype_policy
        return policy.compute_dtype == policy.variable_dtype

    def call_cached(self, ids, cache, index):
        """The logits at the text's positions `index, index + 1, ...`
        (`ids`, `(batch, n)`), each block attending over the keys and
        values of the earlier positions kept in `cache`: generation's
        step, without recomputing the past (`models.sampling.generate`).
        Inference only; ids are text (no padding).

        Args:
            ids: `(batch, n)` int32 token ids.
            cache: A tuple of one `(2, batch, heads, length, depth)` tensor
                per block; None: new ones of `n` positions (`index` 0).
            index: Scalar int, the position of `ids[:, 0]`.

        Returns:
            `(logits, cache)`: `(batch, n, vocabulary)` float32 logits, and
            the caches with the new positions' keys and values.
        """
        embedding = self.get_layer("embedding")
        x = tf.gather(embedding.embeddings, ids)
        if self.positions == "learned":
            n = tf.shape(ids)[1]
            x = x + embedding.position_embeddings[index : index + n]
        if cache is None:
            cache = (None,) * self.num_layers
        new_cache = []
        for i, layer_cache in enumerate(cache):
            block = self.get_layer(
                f"ckpt_{i}" if self.gradient_checkpointing else f"block_{i}"
            )
            block = getattr(block, "layer", block)  # GradientCheckpoint's
            x, layer_cache = block.call_cached(x, layer_cache, index)
            new_cache.append(layer_cache)
        x = self.get_layer("final_norm")(x)
        return self.get_layer("logits")(x), tuple(new_cache)

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "input_shape": self.input_shape_,
            "num_classes": self.num_classes,
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "width": self.width,
            "hidden_units": self.hidden_units,
            "positions": self.positions,
            "dropout": self.dropout,
            "gradient_checkpointing": self.gradient_checkpointing,
            "attention": self.attention,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)
