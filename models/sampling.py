"""Text generation from a language model, one token at a time."""

import weakref

import numpy as np
import tensorflow as tf

# model -> {(temperature, top_k, context, cached): its compiled generation
# loop}, so a second call does not trace again.
_COMPILED = weakref.WeakKeyDictionary()


def generate(
    model,
    prompt_ids,
    length,
    temperature=1.0,
    top_k=0,
    seed=0,
    context_length=None,
    num_samples=None,
    use_cache=None,
):
    """Returns `length` token ids that `model` continues `prompt_ids` with.

    Each step computes the next token's logits from the last
    `context_length` ids, divides them by `temperature`, keeps the `top_k`
    largest (0: all), and samples one; id 0 (padding) is never drawn. The
    draws are stateless, seeded by `(seed, step)`: the same model, prompt
    and seed give the same text, in any process.

    The whole loop is one compiled graph, traced once per model and
    settings, of fixed shapes, so nothing is retraced as the text grows:

    - Cached (a model with `call_cached`, such as `models.TransformerLM`):
      one forward pass over the prompt fills a key/value cache of
      `context_length` positions per block; each step then runs the model
      on the one new token, attending over the cache. Past the context,
      the cache cannot slide by one (positions, rotary or learned, are
      relative to the window's start), so when it is full it is refilled
      from the last three quarters of the context in one forward pass: a
      token then reads between 3/4 of the context and all of it, and a
      full pass is paid every quarter context.
    - Uncached (any other model, or `use_cache=False`): every step runs
      the model on the whole window (the ids left-aligned, padding after
      them: causal attention never looks right), sliding by one id past
      the context.

    While the prompt and the text fit in the context, both give the same
    ids for the same seed.

    Args:
        model: A causal model from token ids `(batch, length)` to logits
            `(batch, length, vocabulary)`.
        prompt_ids: A non-empty sequence of ids to continue.
        length: How many ids to generate.
        temperature: > 0 divides the logits (below 1: more conservative
            text); 0 always takes the most likely token.
        top_k: Sample among the `top_k` most likely tokens only; 0: all.
        seed: An int seed.
        context_length: The longest window the model reads; None: the
            model's `context_length` (`models.TransformerLM` has one).
        num_samples: None: one text; an int: that many, drawn at once as
            a batch.
        use_cache: None: cached where the model supports it; False: the
            uncached path.

    Returns:
        An int32 numpy array of `length` ids, or `(num_samples, length)`.
    """
    prompt_ids = np.asarray(prompt_ids, np.int32).ravel()
    if not len(prompt_ids):
        raise ValueError("generate expected a non-empty prompt_ids.")
    if num_samples is not None and not int(num_samples) >= 1:
        raise ValueError(
            "generate expected a positive num_samples. Received: "
            f"num_samples={num_samples}"
        )
    if context_length is None:
        context_length = model.context_length
    can_cache = getattr(model, "supports_cached_generation", False)
    cached = can_cache if use_cache is None else bool(use_cache)
    if cached and not can_cache:
        raise ValueError(
            f"generate: {type(model).__name__} has no cached generation "
            "(`call_cached`); expected use_cache=None or False."
        )
    settings = (float(temperature), int(top_k), int(context_length), cached)
    compiled = _COMPILED.setdefault(model, {})
    if settings not in compiled:
        compiled[settings] = _generate_fn(model, *settings)
    ids = compiled[settings](
        tf.constant(prompt_ids),
        tf.constant(int(length)),
        tf.constant([int(seed), 0], tf.int64),
        tf.constant(1 if num_samples is None else int(num_samples)),
    )
    ids = ids.numpy()[:, len(prompt_ids) :]
    return ids[0] if num_samples is None else ids


def _generate_fn(model, temperature, top_k, context, cached):
    """The whole generation as one `tf.function`: a graph loop, so a step
    costs the model's forward pass and no Python round trip."""

    def draw(logits, seed):
        """One id per row of `(batch, vocabulary)` logits."""
        logits = tf.cast(logits, tf.float32)
        # Padding is not text.
        logits = tf.where(tf.range(tf.shape(logits)[1]) == 0, -np.inf, logits)
        if temperature == 0:
            return tf.argmax(logits, axis=-1, output_type=tf.int32)
        logits = logits / temperature
        if top_k:
            kth = tf.math.top_k(logits, top_k).values[:, -1:]
            logits = tf.where(logits < kth, -np.inf, logits)
        return tf.random.stateless_categorical(
            logits, 1, seed=seed, dtype=tf.int32
        )[:, 0]

    def window(ids, begin, end):
        """`ids[:, begin:end]` left-aligned in a `(batch, context)` window,
        padding after it: causal attention never looks right, so one shape
        serves every step."""
        rows = tf.transpose(ids.gather(tf.range(begin, end)))
        return tf.pad(rows, [[0, 0], [0, context - (end - begin)]])

    def uncached(ids, start, length, seed):
        def step(i, ids):
            end = start + i
            begin = tf.maximum(0, end - context)
            logits = model(window(ids, begin, end), training=False)
            token = draw(
                logits[:, end - begin - 1], seed + tf.cast([0, i], tf.int64)
            )
            return i + 1, ids.write(end, token)

        return tf.while_loop(
            lambda i, ids: i < length, step, (tf.constant(0), ids)
        )[1]

    # Refilled from this many ids when full; at least 1, so that the
    # newest id always fits.
    keep = max(1, context - context // 4)

    def refill(ids, end):
        """The cache and the next logits from the last ids up to `end`."""
        begin = tf.maximum(0, end - keep)
        logits, cache = model.call_cached(window(ids, begin, end), None, 0)
        return logits[:, end - begin - 1], cache, end - begin

    # One token's step, compiled by XLA: its few dozen small ops, each a
    # kernel launch in the graph loop, fused into one executable.
    @tf.function(jit_compile=True, autograph=False)
    def next_logits(token, cache, filled):
        logits, cache = model.call_cached(token[:, None], cache, filled)
        return logits[:, 0], cache

    def with_cache(ids, start, length, seed):
        # The prompt fills the cache as the uncached path's first window.
        begin = tf.maximum(0, start - context)
        logits, cache = model.call_cached(window(ids, begin, start), None, 0)
        logits, filled = logits[:, start - begin - 1], start - begin

        def step(i, ids, logits, cache, filled):
            token = draw(logits, seed + tf.cast([0, i], tf.int64))
            ids = ids.write(start + i, token)
            logits, cache, filled = tf.cond(
                filled < context,
                lambda: (*next_logits(token, cache, filled), filled + 1),
                lambda: refill(ids, start + i + 1),
            )
            return i + 1, ids, logits, cache, filled

        return tf.while_loop(
            lambda i, *_: i < length,
            step,
            (tf.constant(0), ids, logits, cache, filled),
        )[1]

    @tf.function(
        input_signature=[
            tf.TensorSpec([None], tf.int32),
            tf.TensorSpec([], tf.int32),
            tf.TensorSpec([2], tf.int64),
            tf.TensorSpec([], tf.int32),
        ],
        # Loops written as graph loops: autograph would convert the
        # model's code too, on every first call (~1.7 s of a 3 s trace).
        autograph=False,
    )
    def run(prompt, length, seed, num_samples):
        # One (batch,) vector of ids per position.
        ids = tf.TensorArray(
            tf.int32, size=0, dynamic_size=True, element_shape=[None]
        ).unstack(tf.tile(prompt[:, None], [1, num_samples]))
        loop = with_cache if cached else uncached
        ids = loop(ids, tf.size(prompt), length, seed)
        return tf.transpose(ids.stack())

    return run
