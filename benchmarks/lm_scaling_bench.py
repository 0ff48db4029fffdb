"""How the LM's training step grows with the work: ours against PyTorch.

  /work/benchvenv/bin/python benchmarks/lm_scaling_bench.py [--repeats=3]
  /work/benchvenv/bin/python benchmarks/lm_scaling_bench.py --only=ctx_1024
  /work/benchvenv/bin/python benchmarks/lm_scaling_bench.py --quick  # smoke

Needs PyTorch beside the project (the venv of `lm_speed_bench.py`'s
docstring); without it, prints one line and exits with status 2.

Settings (`SETTINGS`): model size at the context of `configs/lm.py`, and
context length at its width.
- `default`: `configs/lm.py`'s LM (4 blocks, 4 heads, width 128, MLP 512),
  32 windows of 128 characters;
- `mid`: 6 blocks, 8 heads, width 256, MLP 1024, 32 x 256;
- `nanogpt`: the shape of nanoGPT's `shakespeare_char` (6 blocks, 6 heads,
  width 384, MLP 1536, 64 x 256, ~10.7M parameters), in this project's
  architecture (rotary positions, RMSNorm, no dropout) on both sides;
- `ctx_128` ... `ctx_1024`: the default LM, 8 windows of 128, 256, 512 and
  1024 characters (a fixed batch, so the tokens a step grow with the
  context, and plain attention's scores with its square).

Variants: `ours` (`models.TransformerLM`, plain attention) and
`ours_tiled` (`attention="tiled"`: `mylayers.TiledCausalSelfAttention`,
tiles of 128 positions, whose custom gradient recomputes each tile's
probabilities) driven by the trainer's loop
(`template_trainer.setup.make_train_steps`); `torch_eager` (the PyTorch
twin of `lm_common.torch_lm`: `scaled_dot_product_attention`, AdamW) and
`torch_compile` (its forward pass and loss under `torch.compile`). The
same weights (ours copied into the twin), batch and optimizer settings.

Step time: for each setting one child process times every variant,
interleaved over `--repeats` rounds of `--steps` steps, after tracing or
compiling and a warm-up call, at each framework's defaults (TensorFlow
with oneDNN, as `import models` sets it; PyTorch with 2 threads). Ratios
are medians of per-round ratios.

Peak memory: one child process per setting and variant, with the
allocators in the mode where resident memory follows live memory
(`MALLOC_MMAP_THRESHOLD_=65536`, and for ours `TF_ENABLE_ONEDNN_OPTS=0`,
whose allocator is malloc: oneDNN's keeps a pool; see
`lm_memory_bench.py`). The figure is the peak resident memory during the
second call of `--steps` steps above the resident memory before it: the
memory a step takes beyond the weights and optimizer state.

Prints a table and one JSON line; `--plot=FILE` draws step time and
memory against the context.
"""

import argparse
import json
import os

import harness

SIZES = {
    "default": dict(layers=4, heads=4, width=128, mlp=512, ctx=128, batch=32),
    "mid": dict(layers=6, heads=8, width=256, mlp=1024, ctx=256, batch=32),
    "nanogpt": dict(layers=6, heads=6, width=384, mlp=1536, ctx=256, batch=64),
}
CONTEXTS = {
    f"ctx_{n}": dict(layers=4, heads=4, width=128, mlp=512, ctx=n, batch=8)
    for n in (128, 256, 512, 1024)
}
SETTINGS = {**SIZES, **CONTEXTS}
QUICK = {
    "tiny": dict(layers=1, heads=2, width=32, mlp=64, ctx=64, batch=4),
    "tiny_ctx": dict(layers=1, heads=2, width=32, mlp=64, ctx=256, batch=4),
}
VARIANTS = ("ours", "ours_tiled", "torch_eager", "torch_compile")
# On request (`--variants`): with `gradient_checkpointing=True` too, or
# with the step compiled by XLA (`jit_compile=True`, the trainer's
# `config.jit_compile`).
EXTRA = ("ours_ckpt", "ours_tiled_ckpt", "ours_xla", "ours_tiled_xla")
TILE = 128


def _lm_config(setting):
    return {
        "num_layers": setting["layers"],
        "num_heads": setting["heads"],
        "width": setting["width"],
        "hidden_units": setting["mlp"],
        "context": setting["ctx"],
        "batch": setting["batch"],
    }


def _runners(config, variants, steps):
    """{variant: run()} for `variants` of the LM `config`, built, copied
    to the same weights, traced or compiled and warmed up."""
    import lm_common as common

    torch = common.import_torch()
    torch.set_num_threads(2)
    x, y = common.text_batch(config["batch"], config["context"])
    runners, params = {}, {}
    reference = common.build_ours(config)
    for name in variants:
        if name.startswith("ours"):
            model = common.build_ours(
                config,
                attention="tiled" if "tiled" in name else "plain",
                gradient_checkpointing=name.endswith("_ckpt"),
            )
            model.set_weights(reference.get_weights())
            params[name] = common.count_params(model)
            runners[name] = common.ours_runner(
                model, x, y, steps, jit_compile=name.endswith("_xla")
            )
        else:
            twin = common.torch_lm(torch, config)
            common.copy_weights(torch, reference, twin)
            params[name] = sum(p.numel() for p in twin.parameters())
            runners[name] = common.torch_runner(
                torch, twin, x, y, steps, compile_model=name == "torch_compile"
            )
    return runners, params


def child_time(setting, variants, steps, repeats):

    config = _lm_config(setting)
    runners, params = _runners(config, variants, steps)
    # One untimed round: the first call after `torch.compile` built its
    # kernels ran slow (~0.4 s more) in whichever framework came next.
    for run in runners.values():
        run()
    times = harness.interleave(runners, repeats)
    summary = harness.summarize(times)
    ratios = {
        f"{a}/{b}": harness.pair_ratio(times, a, b)
        for a in times
        for b in ("torch_eager", "torch_compile", "ours")
        if a.startswith("ours") and a != b and b in times
    }
    harness.report(
        {
            "machine": harness.machine(),
            "params": params,
            "ms": {n: r["ms"] for n, r in summary.items()},
            "quiet_rounds": next(iter(summary.values()))["quiet_rounds"],
            "other_cores": max(r["other_cores"] for r in summary.values()),
            "ratios": {k: r["wall"] for k, r in ratios.items()},
        }
    )


def child_memory(setting, variant, steps):
    config = _lm_config(setting)
    runners, _ = _runners(config, [variant], steps)
    run = runners[variant]  # traced and called twice already
    harness.report({"mib": harness.peak_mib(run)})


# `--isa=avx2`: both frameworks held to AVX2 on an AVX-512 machine
# (oneDNN's kernels in both, PyTorch's own vectorized kernels, and MKL's).
AVX2 = {
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "ATEN_CPU_CAPABILITY": "avx2",
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",
}


def _env(memory, variant, isa):
    env = dict(os.environ, **(AVX2 if isa == "avx2" else {}))
    if memory:
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"
        if variant.startswith("ours"):
            env["TF_ENABLE_ONEDNN_OPTS"] = "0"
    return env


def _table(results, variants):
    lines = [
        f"{'setting':10}{'params':>11}"
        + "".join(f"{v + ' ms':>20}" for v in variants)
        + "".join(f"{v + ' MiB':>20}" for v in variants)
    ]
    for name, r in results.items():
        lines.append(
            f"{name:10}{next(iter(r['params'].values())):>11,}"
            + "".join(f"{r['ms'][v]:20.1f}" for v in variants)
            + "".join(f"{r['mib'][v]:20.1f}" for v in variants)
        )
    ours = [v for v in variants if v.startswith("ours")]
    # Memory as a ratio to PyTorch's, where it ran; else time ratios only.
    ours_mib = ours if "torch_eager" in variants else []
    pairs = [p for p in r["ratios"] if p.split("/")[0] in ours and "torch" in p]
    pairs = pairs or list(r["ratios"])
    lines += ["", "time ratios, then peak-memory ratios to torch_eager:"]
    lines.append(
        f"{'setting':10}"
        + "".join(f"{p:>32}" for p in pairs)
        + "".join(f"{'MiB ' + v + '/torch_eager':>32}" for v in ours_mib)
    )
    for name, r in results.items():
        lines.append(
            f"{name:10}"
            + "".join(f"{r['ratios'][p]:32.2f}" for p in pairs)
            + "".join(
                f"{r['mib'][v] / r['mib']['torch_eager']:32.2f}"
                for v in ours_mib
            )
        )
    return "\n".join(lines)


def _plot(results, path, variants):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    contexts = [n for n in results if n.startswith("ctx_")]
    if not contexts:
        return
    x = [int(n.split("_")[1]) for n in contexts]
    figure = Figure(figsize=(10, 4))
    for axis, key, label in zip(
        figure.subplots(1, 2),
        ("ms", "mib"),
        ("ms a step", "MiB a step above weights and optimizer state"),
    ):
        for variant in variants:
            axis.plot(
                x,
                [results[n][key][variant] for n in contexts],
                ".-",
                label=variant,
            )
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        axis.set_xlabel("context (8 windows a step)")
        axis.set_title(label)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2, help="steps a call")
    parser.add_argument("--only", default="", help="comma-separated settings")
    parser.add_argument("--plot", default="", help="PNG to draw to")
    parser.add_argument("--quick", action="store_true", help="smoke run")
    parser.add_argument(
        "--isa",
        choices=("native", "avx2"),
        default="native",
        help="avx2: hold both frameworks to AVX2 (see AVX2)",
    )
    parser.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help=f"comma-separated, of {', '.join(VARIANTS + EXTRA)}; "
        "torch_eager is needed",
    )
    parser.add_argument(
        "--no_memory",
        action="store_true",
        help="time only: no peak-memory child per variant (MiB read nan)",
    )
    parser.add_argument("--child", choices=("time", "memory"))
    parser.add_argument("--setting", default="")
    parser.add_argument("--variant", default="")
    args = parser.parse_args()
    settings = QUICK if args.quick else SETTINGS
    variants = args.variants.split(",")
    if args.child:
        setting = json.loads(args.setting)
        if args.child == "time":
            child_time(setting, variants, args.steps, args.repeats)
        else:
            child_memory(setting, args.variant, args.steps)
        return
    harness.require_torch("lm_scaling_bench")
    names = args.only.split(",") if args.only else list(settings)
    script = os.path.abspath(__file__)
    results = {}
    for name in names:
        setting = json.dumps(settings[name])
        common = ["--steps", str(args.steps), "--setting", setting]
        common += ["--variants", args.variants]
        timed = harness.run_child(
            script,
            ["--child=time", "--repeats", str(args.repeats), *common],
            _env(False, "", args.isa),
        )
        timed["mib"] = {
            v: float("nan")
            if args.no_memory
            else harness.run_child(
                script,
                ["--child=memory", "--variant", v, *common],
                _env(True, v, args.isa),
            )["mib"]
            for v in variants
        }
        results[name] = timed
        print(f"{name}: {json.dumps(timed)}", flush=True)
    print(next(iter(results.values()))["machine"])
    print(_table(results, variants))
    if args.plot:
        _plot(results, args.plot, variants)
    print(
        json.dumps(
            {
                "steps": args.steps,
                "repeats": args.repeats,
                "isa": args.isa,
                "settings": {n: settings[n] for n in names},
                "results": results,
            }
        )
    )


if __name__ == "__main__":
    main()
