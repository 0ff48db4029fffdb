"""Training-step time of the default character LM: ours against PyTorch.

  /work/benchvenv/bin/python benchmarks/lm_speed_bench.py [--repeats=7]
  /work/benchvenv/bin/python benchmarks/lm_speed_bench.py --threads=1
  /work/benchvenv/bin/python benchmarks/lm_speed_bench.py --quick  # smoke

PyTorch is an optional extra that no test needs: install it into a venv of
its own beside the project's, e.g.
  python3 -m venv /work/benchvenv
  /work/benchvenv/bin/pip install -c requirements-lock.txt -e .
  /work/benchvenv/bin/pip install torch==2.13.0
Without torch this prints one line and exits with status 2 (`--no-torch`
times our variants alone, in any venv).

What it measures, in one process, interleaved (every variant once a round,
in a fresh random order each round), median of `--repeats` rounds after
tracing/compiling and a warm-up call: milliseconds per training step and
tokens per second of the default LM of `configs/lm.py` (4 blocks, 4 heads,
width 128, MLP 512, rotary positions, float32, vocabulary 97) on a batch of
32 windows of 128 characters of training text, AdamW (lr 1e-3, weight
decay 0.01, epsilon 1e-7 in both frameworks):

- `ours`: `models.TransformerLM` compiled (sparse cross-entropy, no extra
  metrics) and driven by `template_trainer.setup.make_train_steps`, the
  trainer's loop, `--steps` steps per call; `ours_xla` the same with
  `jit_compile=True`; `ours_trainer_metrics` adds the accuracy and bpc
  metrics the trainer compiles a text model with; `fit` is Keras's
  `model.fit` (its defaults) on the same model class, for reference.
- `torch_eager`: the same architecture in PyTorch (`lm_common.torch_lm`:
  RMSNorm, rotary, exact GELU, biases, untied embedding and logits,
  `scaled_dot_product_attention(is_causal=True)`), `torch.optim.AdamW`;
  `torch_compile`: the forward pass and loss under `torch.compile`.

Threads: TensorFlow's defaults (intra- and inter-op pools of one thread
per core: 2 here, as the other benchmarks leave them), and
`torch.set_num_threads(2)`; `--threads=1` gives both frameworks one
thread (intra- and inter-op), a comparison that holds up on a machine
where another process keeps a core busy.

Before timing, our weights are copied into the PyTorch model and both
logits and losses printed: the same function to float rounding, with the
same parameter count.

The machine is shared, so each timed call also records this process's CPU
time and how many cores other processes kept busy meanwhile (from
/proc/stat); ratios are given over all rounds, in CPU time, and over the
quiet rounds alone. PyTorch's OpenMP threads spin and wait for each
other, and lose far more than TensorFlow when another process takes a
core: read its figures from quiet rounds.
"""

import argparse
import json

import harness
import lm_common as common  # sets KERAS_BACKEND before Keras loads


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=10, help="steps a call")
    parser.add_argument("--quick", action="store_true", help="smoke run")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="N > 0: TensorFlow's intra- and inter-op pools and PyTorch's "
        "threads all N (default: TensorFlow's defaults, PyTorch 2)",
    )
    parser.add_argument(
        "--no-torch", action="store_true", help="time our variants only"
    )
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.steps = 2, 2

    torch = (
        None
        if args.no_torch
        else harness.require_torch("lm_speed_bench", no_torch_flag=True)
    )

    import tensorflow as tf

    if args.threads:  # before TensorFlow runs its first op
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    config = common.DEFAULT
    tokens = config["batch"] * config["context"]
    x, y = common.text_batch(config["batch"], config["context"])
    print(f"machine: {harness.machine()}")
    print(
        "TF threads: intra-op "
        f"{tf.config.threading.get_intra_op_parallelism_threads()}, inter-op "
        f"{tf.config.threading.get_inter_op_parallelism_threads()} (0 = one "
        "per core)"
    )

    runs, params = {}, {}
    ours = common.build_ours()
    params["ours"] = common.count_params(ours)
    runs["ours"] = common.ours_runner(ours, x, y, args.steps)
    runs["ours_xla"] = common.ours_runner(
        common.build_ours(), x, y, args.steps, jit_compile=True
    )
    runs["ours_trainer_metrics"] = common.ours_runner(
        common.build_ours(metrics=common.trainer_metrics()), x, y, args.steps
    )
    fit_model = common.build_ours()
    runs["fit"] = common.fit_runner(fit_model, x, y, args.steps)
    fit_jit = fit_model.jit_compile

    if torch is not None:
        torch.set_num_threads(args.threads or 2)
        if args.threads:
            torch.set_num_interop_threads(args.threads)
        print(
            f"PyTorch {torch.__version__}: {torch.get_num_threads()} threads,"
            f" {torch.get_num_interop_threads()} inter-op, CPU capability "
            f"{torch.backends.cpu.get_cpu_capability()}"
        )
        twin = common.torch_lm(torch)
        params["torch"] = sum(p.numel() for p in twin.parameters())
        # `ours` has trained 2 warm-up calls by now: compare a fresh copy.
        fresh = common.build_ours()
        common.copy_weights(torch, fresh, twin)
        with torch.no_grad():
            logits = twin(torch.from_numpy(x).long()).numpy()
        ours_logits = fresh(x).numpy()
        loss_fn = fresh.loss
        print(
            f"same function: max |logits difference| "
            f"{abs(ours_logits - logits).max():.2e} (logits up to "
            f"{abs(ours_logits).max():.2f}); losses "
            f"{float(loss_fn(y, ours_logits)):.6f} (ours) "
            f"{float(loss_fn(y, logits)):.6f} (PyTorch)"
        )
        runs["torch_eager"] = common.torch_runner(torch, twin, x, y, args.steps)
        compiled = common.torch_lm(torch)
        try:
            runs["torch_compile"] = common.torch_runner(
                torch, compiled, x, y, args.steps, compile_model=True
            )
        except Exception as e:  # report it, time the rest
            print(f"torch.compile failed: {type(e).__name__}: {e}"[:300])

    print(
        "parameters: "
        + ", ".join(f"{name} {count:,}" for name, count in params.items())
    )
    times = harness.interleave(runs, args.repeats)
    summary = harness.summarize(times)
    for r in summary.values():
        r["tokens_per_s"] = tokens / r["ms"] * 1e3
    pairs = [
        ("ours_xla", "ours"),
        ("ours", "fit"),
        ("ours_trainer_metrics", "ours"),
    ]
    for torch_name in ("torch_eager", "torch_compile"):
        if torch_name in times:
            pairs += [(name, torch_name) for name in ("ours", "ours_xla")]
    if "torch_compile" in times:
        pairs.append(("torch_compile", "torch_eager"))
    ratios = {f"{a}/{b}": harness.pair_ratio(times, a, b) for a, b in pairs}

    print(
        f"{config['batch']} x {config['context']} tokens a step, "
        f"{args.repeats} rounds of {args.steps} steps; fit's jit_compile: "
        f"{fit_jit}"
    )
    print(
        f"{'variant':22}{'ms/step':>9}{'tokens/s':>10}{'CPU ms':>9}"
        f"{'quiet ms':>10}{'others':>8}"
    )
    for name, r in summary.items():
        quiet = "n/a" if r["quiet_ms"] is None else f"{r['quiet_ms']:.1f}"
        print(
            f"{name:22}{r['ms']:9.1f}{r['tokens_per_s']:10.0f}"
            f"{r['cpu_ms']:9.1f}{quiet:>10}{r['other_cores']:8.2f}"
        )
    print(
        "(ms: median wall time; CPU ms: this process's CPU time a step, all "
        "its threads; quiet: rounds where other processes kept <= 0.25 "
        f"cores busy: {next(iter(summary.values()))['quiet_rounds']} of "
        f"{args.repeats}; others: cores busy elsewhere, median)"
    )
    for name, r in ratios.items():
        print(f"{name:28} {harness.fmt_ratio(r)}")
    print(
        json.dumps(
            {
                "machine": harness.machine(),
                "config": config,
                "repeats": args.repeats,
                "steps_per_call": args.steps,
                "parameters": params,
                "results": summary,
                "ratios": ratios,
            }
        )
    )


if __name__ == "__main__":
    main()
