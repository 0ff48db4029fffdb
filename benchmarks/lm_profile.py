"""Where the default LM's training step spends its time, and what helps.

  python benchmarks/lm_profile.py [--repeats=7]   # ~15 min on 2 cores
  python benchmarks/lm_profile.py --threads=1 --skip=4  # 1 thread
  python benchmarks/lm_profile.py --quick         # smoke run, ~4 min

Runs in the project's venv (no PyTorch needed). The step is the one
`lm_speed_bench.py` times: `models.TransformerLM` (4 blocks, 4 heads,
width 128, MLP 512, rotary, float32), batch 32 x 128 characters, AdamW,
driven by `template_trainer.setup.make_train_steps`. Four parts:

1. Trace: a `tf.profiler.experimental` trace of a few steps, read back
   from its XSpace protobuf: the time of every executed op (each op's
   duration on TensorFlow's executor threads, whose two threads can run
   ops at once, so the sum may exceed the wall time), grouped by op type
   and by part of the model (attention, MLP, norms, embedding, logits and
   loss, optimizer), forward and backward.
2. Decomposition, interleaved: forward pass + loss only; forward +
   backward (gradients, no update); the full step. The backward pass is
   the second minus the first, the optimizer the third minus the second.
3. Ablations, interleaved, each a full trainer step on a model built
   with one change, as a ratio to the unchanged step in the same rounds
   (median of per-round ratios). The earlier forms of `Linear` and
   attention that this profile led to replace (broadcast MatMuls, einsum)
   are gone; their figures are in RESULTS.md. The alternatives are
   patched into `mylayers` classes while the model is built and traced
   (`mylayers` itself is not edited): every one but those marked
   "changes the model" computes the same function (checked: the same
   loss to 1e-5 on the same weights).
4. Environment settings TensorFlow reads once, at start:
   `TF_ENABLE_ONEDNN_OPTS=0` and `=1` (the default is on, as
   `harness.py` sets it), `TF_NUM_INTEROP_THREADS=1` (default: one per
   core); each in its own subprocesses (alternated, `--settings-runs`
   each).

The machine is shared: each part prints the mean number of cores other
processes kept busy while it ran.
"""

import argparse
import collections
import contextlib
import glob
import json
import os
import re
import statistics
import tempfile

import harness
import keras
import lm_common as common  # sets KERAS_BACKEND before Keras loads
import tensorflow as tf

import mylayers

STEPS = 5  # steps per timed call of the trainer loop (~2-4 s a call)

# --- Alternatives (same function unless said otherwise) --------------------


def embedding_one_hot_call(self, inputs):
    """`TokenEmbedding.call` as one_hot(ids) @ E: a dense gradient of E
    (97 x 128) from one MatMul instead of IndexedSlices of 4,096 rows."""
    one_hot = tf.one_hot(tf.cast(inputs, tf.int32), self.vocabulary_size)
    flat = tf.reshape(one_hot, [-1, self.vocabulary_size])
    outputs = tf.matmul(flat, self.embeddings)
    return tf.reshape(outputs, tf.concat([tf.shape(inputs), [-1]], 0))


def gelu_tanh(x):
    """GELU's tanh approximation (changes the model: not exact GELU)."""
    return tf.nn.gelu(x, approximate=True)


def _no_mask(self, inputs, mask=None):
    return None


# name: (description, {(class, attribute): replacement}, jit_compile)
ABLATIONS = {
    "baseline": ("mylayers as committed", {}, False),
    "xla": ("make_train_steps(jit_compile=True)", {}, True),
    "embedding_one_hot": (
        "TokenEmbedding: one_hot @ E (dense gradient) instead of gather",
        {(mylayers.TokenEmbedding, "call"): embedding_one_hot_call},
        False,
    ),
    "no_padding_mask": (
        "no Keras mask (TokenEmbedding.compute_mask -> None): attention "
        "and loss unmasked; the same only without padding",
        {(mylayers.TokenEmbedding, "compute_mask"): _no_mask},
        False,
    ),
    "gelu_tanh": (
        "tanh-approximate GELU (changes the model)",
        {("gelu", None): gelu_tanh},
        False,
    ),
}
ABLATIONS["mixed_bfloat16"] = (
    "keras mixed_bfloat16 policy (changes numerics; this CPU has AVX512_BF16)",
    {("policy", None): "mixed_bfloat16"},
    False,
)
QUICK_ABLATIONS = ["baseline", "xla"]


@contextlib.contextmanager
def patched(patches):
    """Applies `{(class, attribute): value}` for the block; also
    `("gelu", None)`: the activation `TransformerBlock` passes to its MLP,
    and `("policy", None)`: Keras's global dtype policy."""
    saved = []
    for (owner, attribute), value in patches.items():
        if owner == "policy":
            policy = keras.mixed_precision.global_policy().name
            keras.mixed_precision.set_global_policy(value)
            saved.append((None, None, policy))
            continue
        if owner == "gelu":
            owner, attribute = mylayers.MLPBlock, "__init__"
            value = _mlp_init_with(value)
        saved.append((owner, attribute, owner.__dict__[attribute]))
        setattr(owner, attribute, value)
    try:
        yield
    finally:
        for owner, attribute, value in reversed(saved):
            if owner is None:
                keras.mixed_precision.set_global_policy(value)
            else:
                setattr(owner, attribute, value)


def _mlp_init_with(activation):
    original = mylayers.MLPBlock.__init__

    def __init__(self, hidden_units, _activation="gelu", *args, **kwargs):
        original(self, hidden_units, activation, *args, **kwargs)

    return __init__


def build_variant(name, x, y, steps=STEPS):
    """(model, run) for ablation `name`, traced under its patches."""
    _, patches, jit = ABLATIONS[name]
    with patched(patches):
        model = common.build_ours()
        run = common.ours_runner(model, x, y, steps, jit_compile=jit)
    return model, run


def check_same_function(x, y):
    """{variant: |loss - baseline loss|} on the same initial weights."""
    losses = {}
    for name in ABLATIONS:
        _, patches, _ = ABLATIONS[name]
        with patched(patches):
            model = common.build_ours()  # seed 0: the same weights
            losses[name] = float(model.compute_loss(x, y, model(x)))
    return {name: abs(v - losses["baseline"]) for name, v in losses.items()}


# --- 1. Trace ---------------------------------------------------------------


def _part(node):
    if "adam_w" in node:
        return "optimizer"
    for part in ("attention", "embedding", "logits"):
        if part in node:
            return part
    if "norm" in node:
        return "norms"
    if "mlp" in node:
        return "mlp"
    if "crossentropy" in node or "compile_loss" in node:
        return "loss"
    return "other"


def trace_breakdown(x, y, steps=STEPS):
    """Op time per step by op type and by (part, direction), from a trace."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    _, run = build_variant("baseline", x, y, steps)
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        wall = run()
        tf.profiler.experimental.stop()
        (path,) = glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True)
        space = xplane_pb2.XSpace()
        with open(path, "rb") as f:
            space.ParseFromString(f.read())
    by_type, by_part = collections.Counter(), collections.Counter()
    for plane in space.planes:
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):
                continue
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                if ":" not in name or "::" in name:
                    continue  # executor bookkeeping, not an op
                node, op = name.rsplit(":", 1)
                ms = event.duration_ps / 1e9 / steps
                by_type[re.sub(r"^_Mkl", "", op)] += ms
                direction = "backward" if "gradient_tape" in node else "forward"
                part = _part(node)
                if part == "optimizer":
                    direction = "update"
                by_part[(part, direction)] += ms
    return {
        "wall_ms_per_step": 1e3 * wall.wall,
        "other_cores_busy": wall.other,
        "op_ms_per_step": sum(by_type.values()),
        "by_type": dict(by_type.most_common()),
        "by_part": {f"{p} {d}": ms for (p, d), ms in by_part.most_common()},
    }


# --- 2. Decomposition -------------------------------------------------------


def decomposition_runs(x, y, steps=STEPS):
    model = common.build_ours()
    xs, ys = tf.constant(x), tf.constant(y)

    @tf.function
    def forward(n):
        total = tf.constant(0.0)
        for _ in tf.range(n):
            y_pred = model(xs, training=True)
            total += model.compute_loss(x=xs, y=ys, y_pred=y_pred)
        return total

    @tf.function
    def forward_backward(n):
        total = tf.constant(0.0)
        for _ in tf.range(n):
            with tf.GradientTape() as tape:
                y_pred = model(xs, training=True)
                loss = model.compute_loss(x=xs, y=ys, y_pred=y_pred)
            grads = tape.gradient(loss, model.trainable_variables)
            # Use every gradient, or the graph prunes their computation.
            total += loss + tf.add_n(
                [
                    tf.reduce_sum(
                        g.values if isinstance(g, tf.IndexedSlices) else g
                    )
                    for g in grads
                ]
            )
        return total

    def timed(fn):
        count = tf.constant(steps)

        def run():
            clock = harness.Clock()
            fn(count).numpy()
            return clock.per_step(steps)

        run()
        run()
        return run

    return {
        "forward + loss": timed(forward),
        "forward + backward": timed(forward_backward),
        "full step (trainer loop)": common.ours_runner(model, x, y, steps),
    }


# --- 4. oneDNN --------------------------------------------------------------


def child(variants, repeats):
    """Prints {variant: median ms} for this process's TF_ENABLE_ONEDNN_OPTS."""
    x, y = common.text_batch(32, 128)
    runs = {name: build_variant(name, x, y)[1] for name in variants}
    times = harness.interleave(runs, repeats)
    summary = harness.summarize(times)
    harness.report({k: v["ms"] for k, v in summary.items()})


# Environment settings compared in part 4, each in its own processes.
SETTINGS = {
    "default": {},
    "TF_ENABLE_ONEDNN_OPTS=0": {"TF_ENABLE_ONEDNN_OPTS": "0"},
    "TF_ENABLE_ONEDNN_OPTS=1": {"TF_ENABLE_ONEDNN_OPTS": "1"},
    "TF_NUM_INTEROP_THREADS=1": {"TF_NUM_INTEROP_THREADS": "1"},
}


def settings_runs(variants, runs_each, repeats, settings=SETTINGS):
    """{setting: {variant: median ms}}: each setting's child processes,
    alternated, `runs_each` each; the median over them."""
    samples = {setting: [] for setting in settings}
    for _ in range(runs_each):
        for setting, env in settings.items():
            samples[setting].append(
                harness.run_child(
                    os.path.abspath(__file__),
                    [f"--child={','.join(variants)}", f"--repeats={repeats}"],
                    {**os.environ, **env},
                )
            )
    return {
        setting: {
            name: statistics.median(run[name] for run in runs)
            for name in variants
        }
        for setting, runs in samples.items()
    }


# --- main -------------------------------------------------------------------


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument(
        "--settings-runs", type=int, default=2, help="processes a setting"
    )
    parser.add_argument("--quick", action="store_true", help="smoke run")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="N > 0: TensorFlow's intra- and inter-op pools N threads "
        "(parts 1-3; default: TensorFlow's, one per core)",
    )
    parser.add_argument("--skip", default="", help="parts to skip: 1,2,3,4")
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child.split(","), args.repeats)
        return
    if args.quick:
        args.repeats, args.settings_runs = 2, 1
    skip = set(args.skip.split(","))
    if args.threads:  # before TensorFlow runs its first op
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    x, y = common.text_batch(32, 128)
    results = {"machine": harness.machine()}
    print(f"machine: {results['machine']}")

    if "1" not in skip:
        trace = results["trace"] = trace_breakdown(x, y)
        op_ms = trace["op_ms_per_step"]
        print(
            f"\n1. trace: {trace['wall_ms_per_step']:.0f} ms a step of wall "
            f"time, {op_ms:.0f} ms of op time (2 executor threads); others "
            f"kept {trace['other_cores_busy']:.2f} cores busy"
        )
        print("  by op type (ms/step, % of op time):")
        for op, ms in list(trace["by_type"].items())[:14]:
            print(f"    {op:36}{ms:8.1f}{100 * ms / op_ms:6.1f}%")
        print("  by part:")
        for part, ms in trace["by_part"].items():
            print(f"    {part:36}{ms:8.1f}{100 * ms / op_ms:6.1f}%")

    if "2" not in skip:
        times = harness.interleave(decomposition_runs(x, y), args.repeats)
        summary = results["decomposition"] = harness.summarize(times)
        ms = {k: v["ms"] for k, v in summary.items()}
        full = ms["full step (trainer loop)"]
        fwd, fwd_bwd = ms["forward + loss"], ms["forward + backward"]
        other = statistics.median(v["other_cores"] for v in summary.values())
        print(
            f"\n2. decomposition (ms/step, medians of {args.repeats} "
            f"interleaved rounds; others kept {other:.2f} cores busy):"
        )
        for name, value in (
            ("forward + loss", fwd),
            ("backward (difference)", fwd_bwd - fwd),
            ("optimizer + metrics + loop (difference)", full - fwd_bwd),
            ("full step", full),
        ):
            print(f"    {name:42}{value:8.1f}{100 * value / full:6.1f}%")

    if "3" not in skip:
        differences = check_same_function(x, y) if not args.quick else {}
        names = QUICK_ABLATIONS if args.quick else list(ABLATIONS)
        runs = {name: build_variant(name, x, y)[1] for name in names}
        times = harness.interleave(runs, args.repeats)
        summary = harness.summarize(times)
        ablations = {}
        for name, r in summary.items():
            ablations[name] = {
                **r,
                "ratio_to_baseline": harness.pair_ratio(
                    times, name, "baseline"
                ),
                "loss_difference_at_init": differences.get(name),
                "what": ABLATIONS[name][0],
            }
        results["ablations"] = ablations
        other = statistics.median(v["other_cores"] for v in summary.values())
        print(
            f"\n3. ablations ({args.repeats} interleaved rounds; others kept "
            f"{other:.2f} cores busy, median; "
            f"{summary['baseline']['quiet_rounds']} quiet rounds), "
            "fastest first; x base: median per-round ratio of wall times "
            "(CPU times; quiet rounds):"
        )
        for name, r in sorted(
            ablations.items(),
            key=lambda kv: kv[1]["ratio_to_baseline"]["wall"],
        ):
            print(
                f"    {name:18}{r['ms']:7.1f} ms  x base "
                f"{harness.fmt_ratio(r['ratio_to_baseline'])}  |dloss| "
                f"{r['loss_difference_at_init'] or 0:.0e}: {r['what']}"
            )

    if "4" not in skip:
        variants = ["baseline", "xla"]
        chosen = SETTINGS
        if args.quick:
            variants = ["baseline"]
            chosen = {k: SETTINGS[k] for k in list(SETTINGS)[:2]}
        load = harness.OtherLoad()
        settings = settings_runs(
            variants, args.settings_runs, max(2, args.repeats // 2), chosen
        )
        results["settings_ms"] = settings
        print(
            f"\n4. environment settings (separate processes, alternated, "
            f"median of {args.settings_runs} processes each; others kept "
            f"{load.cores():.2f} cores busy), ms/step:"
        )
        print(f"    {'setting':28}" + "".join(f"{v:>10}" for v in variants))
        for setting, ms in settings.items():
            print(
                f"    {setting:28}"
                + "".join(f"{ms[v]:10.1f}" for v in variants)
            )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
