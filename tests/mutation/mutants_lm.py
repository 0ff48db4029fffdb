"""Mutants of the language model at scale: oneDNN by default, cached
generation, tiled attention."""

from tests.mutation.mutant import Mutant

MUTANTS = [
    Mutant(
        name="onednn-default-removed",
        feature="import mylayers switches oneDNN on unless the user chose",
        file="mylayers/_onednn.py",
        old='    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")',
        new="    pass",
        tests=("tests/onednn_test.py",),
    ),
    Mutant(
        name="onednn-default-train",
        feature="train.py switches oneDNN on unless the user chose",
        file="template_trainer/command_line.py",
        old='    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")',
        new="",
        tests=("tests/onednn_test.py",),
    ),
    Mutant(
        name="cache-not-updated",
        feature="call_cached writes the new keys and values at their index",
        file="mylayers/causal_self_attention.py",
        old="keys = tf.where(written, tf.gather(key, spread, axis=2), "
        "cache[0])",
        new="keys = cache[0]",
        tests=("tests/cached_generation_test.py",),
    ),
    Mutant(
        name="cache-rotary-offset",
        feature="rotary positions at the cached index",
        file="mylayers/causal_self_attention.py",
        old="query, key, value = self._heads(inputs, offset=index)",
        new="query, key, value = self._heads(inputs)",
        tests=("tests/cached_generation_test.py",),
    ),
    Mutant(
        name="cached-step-not-compiled",
        feature="generation's cached step of one token is compiled by XLA",
        file="models/sampling.py",
        old="    @tf.function(jit_compile=True, autograph=False)\n"
        "    def next_logits(",
        new="    @tf.function(autograph=False)\n    def next_logits(",
        tests=("tests/cached_generation_test.py",),
    ),
    Mutant(
        name="cache-never-refilled",
        feature="a full cache is refilled from the last 3/4 of the context",
        file="models/sampling.py",
        old="keep = max(1, context - context // 4)",
        new="keep = context",
        tests=("tests/cached_generation_test.py",),
    ),
    Mutant(
        name="tiled-tiles-in-parallel",
        feature="the tiled backward pass recomputes one tile at a time",
        file="mylayers/tiled_causal_self_attention.py",
        old="            parallel_iterations=1,  # one tile at a time, as "
        "forward\n",
        new="",
        tests=("tests/tiled_attention_test.py",),
    ),
    Mutant(
        name="tiled-no-rescale",
        feature="the online softmax rescales to the new running maximum",
        file="mylayers/tiled_causal_self_attention.py",
        old="rescale = tf.exp(maximum - new_maximum)",
        new="rescale = 1.0",
        tests=("tests/tiled_attention_test.py",),
    ),
    Mutant(
        name="tiled-backward-wrong-lse",
        feature="the backward pass recomputes weights from the row's lse",
        file="mylayers/tiled_causal_self_attention.py",
        old="weights = tf.exp(scores - maximum) / total",
        new="weights = tf.exp(scores - maximum)",
        tests=("tests/tiled_attention_test.py",),
    ),
    Mutant(
        name="tiled-masked-scores-get-gradient",
        feature="masked scores are constants in the backward pass",
        file="mylayers/tiled_causal_self_attention.py",
        old="d_scores = tf.where(allowed, weights * (d_weights - rowsum), 0.0)",
        new="d_scores = weights * (d_weights - rowsum)",
        tests=("tests/tiled_attention_test.py",),
    ),
    Mutant(
        name="lm-attention-not-passed",
        feature="TransformerLM's attention reaches its blocks",
        file="models/transformer_lm.py",
        old="                attention=attention,\n",
        new="",
        tests=("tests/tiled_attention_test.py",),
    ),
]
