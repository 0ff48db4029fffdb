"""Text generation from a language model, one token at a time."""

import numpy as np
import tensorflow as tf


def generate(model, prompt_ids, length, temperature=1.0, top_k=0, seed=0):
    """Returns `length` token ids that `model` continues `prompt_ids` with.

    Each step reads the last `context_length` ids (the model's), computes
    the next token's logits, divides them by `temperature`, keeps the
    `top_k` largest (0: all), and samples one; id 0 (padding) is never
    drawn. The draws are stateless, seeded by `(seed, step)`: the same
    model, prompt and seed give the same text, in any process.

    Every step runs one compiled function on a fixed-shape window (the ids
    left-aligned, padding after them: causal attention never looks right),
    so nothing is retraced as the text grows.

    Args:
        model: A model from token ids `(1, length)` to logits
            `(1, length, vocabulary)`, with a `context_length` attribute
            (`models.TransformerLM`).
        prompt_ids: A non-empty sequence of ids to continue.
        length: How many ids to generate.
        temperature: > 0 divides the logits (below 1: more conservative
            text); 0 always takes the most likely token.
        top_k: Sample among the `top_k` most likely tokens only; 0: all.
        seed: An int seed.

    Returns:
        An int32 numpy array of `length` ids.
    """
    prompt_ids = [int(i) for i in prompt_ids]
    if not prompt_ids:
        raise ValueError("generate expected a non-empty prompt_ids.")
    context = model.context_length
    step = _next_token_fn(model, context, float(temperature), int(top_k))
    ids = list(prompt_ids)
    for i in range(length):
        window = ids[-context:]
        padded = np.zeros((1, context), np.int32)
        padded[0, : len(window)] = window
        ids.append(
            int(step(padded, np.int32(len(window) - 1), np.array([seed, i])))
        )
    return np.array(ids[len(prompt_ids) :], np.int32)


def _next_token_fn(model, context, temperature, top_k):
    @tf.function(
        input_signature=[
            tf.TensorSpec([1, context], tf.int32),
            tf.TensorSpec([], tf.int32),
            tf.TensorSpec([2], tf.int64),
        ]
    )
    def next_token(window, position, seed):
        logits = tf.cast(model(window, training=False)[0, position], tf.float32)
        # Padding is not text.
        logits = tf.tensor_scatter_nd_update(logits, [[0]], [-np.inf])
        if temperature == 0:
            return tf.argmax(logits, output_type=tf.int32)
        logits = logits / temperature
        if top_k:
            kth = tf.math.top_k(logits, top_k).values[-1]
            logits = tf.where(logits < kth, -np.inf, logits)
        draw = tf.random.stateless_categorical(
            logits[None], 1, seed=seed, dtype=tf.int32
        )
        return draw[0, 0]

    return next_token
