"""Runs every benchmark, one process each, and prints their tables + JSON.

  python benchmarks/run_all.py               # ~5 min on 2 CPU cores

Writes the combined JSON to `benchmarks/results.json`. Each script runs in
its own process (TensorFlow reads TF_ENABLE_ONEDNN_OPTS once, at import),
one after the other, so they never compete for the cores.
"""

import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
RUNS = [
    ("speed", ["speed_bench.py"], {}),
    (
        "speed_onednn_off",
        ["speed_bench.py", "--steps-only"],
        {"TF_ENABLE_ONEDNN_OPTS": "0"},
    ),
    ("train_step", ["train_step_bench.py"], {}),
    ("layers", ["layers_bench.py"], {}),
]


def _split(stdout):
    """A benchmark's output: its table, then the JSON it prints last."""
    start = max(stdout.rfind("\n{"), stdout.rfind("\n["), -1) + 1
    return stdout[:start].strip(), json.loads(stdout[start:])


def main():
    results = {}
    for name, args, env in RUNS:
        print(f"== {name}: python {' '.join(args)} {env or ''}", flush=True)
        completed = subprocess.run(
            [sys.executable, os.path.join(HERE, args[0]), *args[1:]],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
        )
        if completed.returncode:
            sys.exit(f"{name} failed:\n{completed.stderr[-3000:]}")
        table, results[name] = _split(completed.stdout)
        print(table)
    on = results["speed"]["steps"]["mlp_784-1024-1024-10_b512"]["ours_ms"]
    off = results["speed_onednn_off"]["steps"]["mlp_784-1024-1024-10_b512"]
    print(
        f"== oneDNN: MLP step {on:.2f} ms on (default here) vs "
        f"{off['ours_ms']:.2f} ms with TF_ENABLE_ONEDNN_OPTS=0 (separate "
        "processes, not interleaved)"
    )
    with open(os.path.join(HERE, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
