"""Peak memory and step time of a deeper LM with and without
`gradient_checkpointing=True`.

  python benchmarks/lm_memory_bench.py [--processes=2] [--repeats=5]
  python benchmarks/lm_memory_bench.py --quick    # smoke run, smaller LM

Runs in the project's venv. The LM: `models.TransformerLM`, 8 blocks, 4
heads, width 128, MLP 512, rotary, float32, 32 windows of 256 characters,
AdamW, driven by `template_trainer.setup.make_train_steps` (the trainer's
`tf.function` loop).

Memory. Each variant runs in its own subprocess (`--processes` times,
alternated): build and compile the model, trace the step function
(without running it), then run it twice: a first call (graph optimization,
or the XLA compile, and `--steps` steps) and a second call (`--steps`
steps). Before each call the process's peak RSS (VmHWM) is reset through
/proc/self/clear_refs, and a figure is the peak during the call minus the
RSS just before it. Two allocator set-ups, because TensorFlow may keep
freed memory:

- "default" (TensorFlow's defaults; oneDNN is on for this CPU): tensors
  come from oneDNN's CPU allocator, a pool that keeps what the first call
  took (the second call's peak is then ~0), so the figure is the FIRST
  call's: the step's peak plus what the graph optimizer (or XLA's
  compiler) takes once.
- "malloc" (`TF_ENABLE_ONEDNN_OPTS=0 MALLOC_MMAP_THRESHOLD_=65536`):
  tensors come from glibc's malloc, which gives each large one its own
  mapping and unmaps it when freed, so RSS follows live memory and the
  SECOND ("steady") call's figure is the memory a training step needs.

Variants:
- `plain`, `checkpointed`: `gradient_checkpointing=False` / `True`, as
  committed. Since 114dff7 `mylayers.GradientCheckpoint`'s backward rerun
  takes its inputs through `tf.identity` under
  `tf.control_dependencies([dy])`, so its ops cannot be merged with the
  forward pass's; this benchmark prototyped that change (as variant
  `checkpointed_after_dy`) before it was made, and the figures of the
  version before it are in benchmarks/RESULTS.md.
- `checkpointed_no_grappler`: as committed, with Grappler's arithmetic
  optimizer (its common-subexpression elimination) off: does turning
  that pass off bring the rerun back? (It did not, before 114dff7.)
- `*_xla`: the same with `jit_compile=True` (where none of them saved
  memory in our runs, the prototype included).
- `*_eager`: `model.train_step` called eagerly (no `tf.function`), where
  the backward rerun runs only when the tape reaches it.

First, a schedule check: a `tf.profiler` trace of one step of `plain`,
and `checkpointed`, counting the GELU (Erfc) ops
that ran and how many ran before the loss: with a real rerun there are
two per block, one of them after the loss.

Step time: `plain` and `checkpointed` (and their XLA forms) in one
process, interleaved over `--repeats` rounds, median wall ms/step and the
ratio to `plain`.
"""

import argparse
import json
import os
import statistics

import harness

CONFIG = {
    "num_layers": 8,
    "num_heads": 4,
    "width": 128,
    "hidden_units": 512,
    "context": 256,
    "batch": 32,
}
QUICK_CONFIG = {**CONFIG, "num_layers": 4, "context": 128}

# name: (gradient_checkpointing, mode, grappler options)
VARIANTS = {
    "plain": (False, "graph", None),
    "checkpointed": (True, "graph", None),
    "checkpointed_no_grappler": (
        True,
        "graph",
        {"arithmetic_optimization": False},
    ),
    "plain_xla": (False, "xla", None),
    "checkpointed_xla": (True, "xla", None),
    "plain_eager": (False, "eager", None),
    "checkpointed_eager": (True, "eager", None),
}
QUICK_VARIANTS = ["plain", "checkpointed"]


def schedule_check(config):
    """{variant: (GELU ops run in a step, of them before the loss)} from a
    `tf.profiler` trace of one step: each block runs one Erfc (its GELU)
    per forward pass, so a rerun that happens shows as a second Erfc per
    block, after the loss."""
    import glob
    import tempfile

    import lm_common as common
    import tensorflow as tf
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    from template_trainer import setup

    x, y = common.text_batch(config["batch"], config["context"])
    out = {}
    for name in ("plain", "checkpointed"):
        model, _ = _build(name, config)
        iterator = iter(tf.data.Dataset.from_tensors((x, y)).repeat())
        train_steps = setup.make_train_steps(
            model,
            tf.distribute.get_strategy(),
            tf.Variable(0, dtype=tf.int64),
            False,
        )
        one = tf.constant(1, tf.int64)
        train_steps(iterator, one)  # trace, optimize
        with tempfile.TemporaryDirectory() as logdir:
            tf.profiler.experimental.start(logdir)
            train_steps(iterator, one)
            tf.profiler.experimental.stop()
            (path,) = glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True)
            space = xplane_pb2.XSpace()
            with open(path, "rb") as f:
                space.ParseFromString(f.read())
        events = []
        for plane in space.planes:
            for line in plane.lines:
                if line.name.startswith("tf_Compute"):
                    for event in line.events:
                        label = plane.event_metadata[event.metadata_id].name
                        start = line.timestamp_ns * 1000 + event.offset_ps
                        events.append((start, label))
        loss = min(
            t
            for t, label in events
            if label.endswith(":SparseSoftmaxCrossEntropyWithLogits")
        )
        gelus = [t for t, label in events if label.endswith(":Erfc")]
        out[name] = (len(gelus), sum(t < loss for t in gelus))
    return out


def _build(name, config):
    import lm_common as common

    checkpointing, mode, grappler = VARIANTS[name]
    if grappler:
        import tensorflow as tf

        tf.config.optimizer.set_experimental_options(grappler)
    model = common.build_ours(config, gradient_checkpointing=checkpointing)
    return model, mode


def child(name, config, steps):
    """Prints this variant's memory figures as JSON (one process each)."""
    import lm_common as common
    import tensorflow as tf

    from template_trainer import setup

    model, mode = _build(name, config)
    x, y = common.text_batch(config["batch"], config["context"])
    iterator = iter(tf.data.Dataset.from_tensors((x, y)).repeat())
    count = tf.constant(steps, tf.int64)
    if mode == "eager":

        def call():
            for _ in range(steps):
                logs = model.train_step(next(iterator))
            float(logs["loss"])

    else:
        train_steps = setup.make_train_steps(
            model,
            tf.distribute.get_strategy(),
            tf.Variable(0, dtype=tf.int64),
            jit_compile=mode == "xla",
        )
        # Trace only (the `tf.function` is `.function` since f38fa2c).
        function = getattr(train_steps, "function", train_steps)
        function.get_concrete_function(iterator, count)

        def call():
            float(train_steps(iterator, count)["loss"])

    first = harness.peak_mib(call)
    steady = harness.peak_mib(call)
    harness.report(
        {"first_mib": first, "steady_mib": steady, "rss_mib": _rss_mib()}
    )


def _rss_mib():
    return harness.rss_status()["VmRSS"] / 1024


ALLOCATORS = {
    "default": ({}, "first_mib"),
    "malloc": (
        {"TF_ENABLE_ONEDNN_OPTS": "0", "MALLOC_MMAP_THRESHOLD_": "65536"},
        "steady_mib",
    ),
}


def memory(variants, config, steps, processes, allocator):
    """{variant: {"first_mib": [...], "steady_mib": [...]}}."""
    out = {name: {"first_mib": [], "steady_mib": []} for name in variants}
    env = {
        **os.environ,
        **ALLOCATORS[allocator][0],
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    for _ in range(processes):
        for name in variants:
            figures = harness.run_child(
                os.path.abspath(__file__),
                [
                    f"--child={name}",
                    f"--config={json.dumps(config)}",
                    f"--steps={steps}",
                ],
                env,
            )
            for key in ("first_mib", "steady_mib"):
                out[name][key].append(figures[key])
            print(
                f"  {allocator:8}{name:28} first call "
                f"+{figures['first_mib']:5.0f} MiB, second call "
                f"+{figures['steady_mib']:5.0f} MiB",
                flush=True,
            )
    return out


def step_times(config, steps, repeats, xla):
    """Interleaved ms/step of plain / checkpointed."""
    import lm_common as common

    x, y = common.text_batch(config["batch"], config["context"])
    runs = {}
    suffix = "_xla" if xla else ""
    for name in ("plain", "checkpointed"):
        model, _ = _build(name, config)
        runs[name + suffix] = common.ours_runner(
            model, x, y, steps, jit_compile=xla
        )
    times = harness.interleave(runs, repeats)
    summary = harness.summarize(times)
    for name in runs:
        summary[name]["ratio_to_plain"] = harness.pair_ratio(
            times, name, "plain" + suffix
        )
    return summary


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="smoke run")
    parser.add_argument("--skip-time", action="store_true")
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    parser.add_argument("--config", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, json.loads(args.config), args.steps)
        return
    config, variants = CONFIG, list(VARIANTS)
    if args.quick:
        config, variants = QUICK_CONFIG, QUICK_VARIANTS
        args.processes, args.repeats = 1, 2

    print(f"machine: {harness.machine()}")
    print(f"LM: {config}, float32")
    results = {"machine": harness.machine(), "config": config, "memory": {}}
    results["schedule"] = schedule_check(config)
    print(
        "schedule (one step, traced): GELU (Erfc) ops run / of them before "
        "the loss, one per block and forward pass: "
        + "; ".join(
            f"{name} {total} / {before}"
            for name, (total, before) in results["schedule"].items()
        )
    )
    print(f"memory ({args.processes} processes per variant, alternated):")
    for allocator in ALLOCATORS:
        mem = memory(variants, config, args.steps, args.processes, allocator)
        results["memory"][allocator] = mem
    print(
        f"{'peak RSS growth, MiB (median)':30}{'default, first call':>21}"
        f"{'malloc, second call':>21}"
    )
    for name in variants:
        figures = [
            statistics.median(results["memory"][a][name][key])
            for a, (_, key) in ALLOCATORS.items()
        ]
        print(f"{name:30}{figures[0]:21.0f}{figures[1]:21.0f}")

    if not args.skip_time:
        results["step_time"] = {}
        for xla in (False, True) if not args.quick else (False,):
            summary = step_times(config, args.steps, args.repeats, xla)
            results["step_time"].update(summary)
            for name, r in summary.items():
                print(
                    f"{name:28}{r['ms']:9.0f} ms/step  x plain "
                    f"{harness.fmt_ratio(r['ratio_to_plain'])}"
                )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
