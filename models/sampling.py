"""Text generation from a language model, one token at a time."""

import weakref

import numpy as np
import tensorflow as tf

# model -> {(temperature, top_k, context): its compiled generation loop},
# so a second call does not trace again.
_COMPILED = weakref.WeakKeyDictionary()


def generate(
    model,
    prompt_ids,
    length,
    temperature=1.0,
    top_k=0,
    seed=0,
    context_length=None,
):
    """Returns `length` token ids that `model` continues `prompt_ids` with.

    Each step reads the last `context_length` ids, computes
    the next token's logits, divides them by `temperature`, keeps the
    `top_k` largest (0: all), and samples one; id 0 (padding) is never
    drawn. The draws are stateless, seeded by `(seed, step)`: the same
    model, prompt and seed give the same text, in any process.

    The whole loop is one compiled graph; every step runs the model on a
    fixed-shape window (the ids left-aligned, padding after them: causal
    attention never looks right), so nothing is retraced as the text grows.

    Args:
        model: A causal model from token ids `(1, length)` to logits
            `(1, length, vocabulary)`.
        prompt_ids: A non-empty sequence of ids to continue.
        length: How many ids to generate.
        temperature: > 0 divides the logits (below 1: more conservative
            text); 0 always takes the most likely token.
        top_k: Sample among the `top_k` most likely tokens only; 0: all.
        seed: An int seed.
        context_length: The longest window the model reads; None: the
            model's `context_length` (`models.TransformerLM` has one).

    Returns:
        An int32 numpy array of `length` ids.
    """
    prompt_ids = np.asarray(prompt_ids, np.int32).ravel()
    if not len(prompt_ids):
        raise ValueError("generate expected a non-empty prompt_ids.")
    if context_length is None:
        context_length = model.context_length
    settings = (float(temperature), int(top_k), int(context_length))
    compiled = _COMPILED.setdefault(model, {})
    if settings not in compiled:
        compiled[settings] = _generate_fn(model, *settings)
    run = compiled[settings]
    ids = run(
        tf.constant(prompt_ids),
        tf.constant(int(length)),
        tf.constant([int(seed), 0], tf.int64),
    )
    return ids.numpy()[len(prompt_ids) :]


def _generate_fn(model, temperature, top_k, context):
    """The whole generation as one `tf.function`: a graph loop, so a step
    costs the model's forward pass and no Python round trip."""

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

    @tf.function
    def run(prompt, length, seed):
        ids = tf.TensorArray(
            tf.int32, size=0, dynamic_size=True, element_shape=[]
        ).unstack(prompt)
        start = tf.size(prompt)
        for i in tf.range(length):
            end = start + i
            begin = tf.maximum(0, end - context)
            window = ids.gather(tf.range(begin, end))
            # Left-aligned, padded after: causal attention never looks
            # right, so one shape serves every step.
            padded = tf.pad(window, [[0, context - (end - begin)]])[None]
            token = next_token(
                padded, end - begin - 1, seed + tf.cast([0, i], tf.int64)
            )
            ids = ids.write(end, token)
        return ids.stack()

    return run
