"""How every benchmark here measures (not a benchmark itself).

- `Clock` and `Sample`: wall time, this process's CPU time and the cores
  other processes kept busy (`OtherLoad`, from /proc/stat), per step.
- `per_call(fn, calls)`, `first_and_median(fn, runs)` and
  `step_timer(skip)`: a `run()` that times a TensorFlow function, the
  first and later calls of a whole job, and a callback that times `fit`.
- `interleave(runs, repeats)`: every variant once a round, in a fresh
  random order, so that drift on a shared machine hits them alike;
  `summarize` and `pair_ratio` read the rounds (medians, and medians of
  per-round ratios, over all rounds and over quiet ones).
- `report` / `run_child`: figures measured in a child process of its own
  (a setting TensorFlow reads once at start-up, or a clean memory peak),
  handed back as one JSON line; `peak_mib` measures that peak.
- `machine()`: the CPU line every figure is quoted with.

Standard library and numpy only, so that a parent process need not import
TensorFlow (`step_timer` imports Keras when called).
"""

import gc
import importlib.metadata
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

# Keras 3 picks its backend at import time; these benchmarks are
# TensorFlow's, and its start-up lines are noise in their tables.
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# oneDNN's kernels, as the commands and `import models` give users: a
# benchmark that imports TensorFlow before `models` would otherwise run
# TensorFlow's own kernels on an AVX2-only CPU, 1.2-2.7x slower there
# (RESULTS.md). `TF_ENABLE_ONEDNN_OPTS=0` set by the caller still wins.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

CHILD_PREFIX = "CHILD "


def machine():
    """One line: CPU model, the vector extensions that matter here, and the
    TensorFlow settings read at start-up."""
    model, flags = "?", set()
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name") and model == "?":
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16")
    have = [f for f in wanted if f in flags]
    # From the installed metadata: a parent process need not import them.
    versions = ", ".join(
        f"{name} {importlib.metadata.version(name)}"
        for name in ("tensorflow", "keras")
    )
    return (
        f"{model}, {os.cpu_count()} cores, {' '.join(have)}; {versions}, "
        "TF_ENABLE_ONEDNN_OPTS="
        f"{os.environ.get('TF_ENABLE_ONEDNN_OPTS', 'unset')}, "
        f"ONEDNN_MAX_CPU_ISA={os.environ.get('ONEDNN_MAX_CPU_ISA', 'unset')}"
    )


# --- Timing ----------------------------------------------------------------


class OtherLoad:
    """Cores busy with other processes while this one ran, from /proc/stat
    and this process's CPU time: the machine is shared, and 2-thread
    OpenMP (PyTorch) suffers more than TensorFlow's pool when it is."""

    def __init__(self):
        self.start = self._sample()

    @staticmethod
    def _sample():
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        idle = fields[3] + fields[4]  # idle + iowait
        busy = sum(fields[:8]) - idle  # user..steal
        ticks = os.sysconf("SC_CLK_TCK")
        times = os.times()
        return time.monotonic(), busy / ticks, times.user + times.system

    def cores(self):
        """Mean cores used by others since construction."""
        wall0, busy0, own0 = self.start
        wall1, busy1, own1 = self._sample()
        return max(0.0, ((busy1 - busy0) - (own1 - own0)) / (wall1 - wall0))


class Sample(tuple):
    """(wall s/step, CPU s/step of this process, cores busy elsewhere)."""

    def __new__(cls, wall, cpu, other):
        return super().__new__(cls, (wall, cpu, other))

    wall = property(lambda self: self[0])
    cpu = property(lambda self: self[1])
    other = property(lambda self: self[2])


class Clock:
    """Wall time, this process's CPU time and other processes' load."""

    def __init__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        self.load = OtherLoad()

    def per_step(self, steps):
        """`Sample` per step since construction."""
        return Sample(
            (time.perf_counter() - self.wall) / steps,
            (time.process_time() - self.cpu) / steps,
            self.load.cores(),
        )


def _wait(result):
    """Reads every tensor of `result`: TensorFlow may return before the
    values exist, and the time must include them."""
    for leaf in _leaves(result):
        if hasattr(leaf, "numpy"):
            leaf.numpy()


def _leaves(x):
    if isinstance(x, dict):
        x = list(x.values())
    if isinstance(x, (list, tuple)):
        return [leaf for item in x for leaf in _leaves(item)]
    return [x]


def per_call(fn, calls):
    """A `run()` returning the `Sample` per call of `calls` calls of `fn`;
    `fn` is called once here first (tracing, warm-up)."""
    _wait(fn())

    def run():
        clock = Clock()
        for _ in range(calls):
            result = fn()
        _wait(result)
        return clock.per_step(calls)

    return run


def first_and_median(fn, runs):
    """Wall seconds of the first call of `fn` (which also traces and
    builds) and the median of `runs` calls after it; returns them and the
    last call's result."""
    clock = Clock()
    result = fn()
    first = clock.per_step(1).wall
    walls = []
    for _ in range(runs):
        clock = Clock()
        result = fn()
        walls.append(clock.per_step(1).wall)
    return first, statistics.median(walls), result


def step_timer(skip):
    """A Keras callback timing `fit`'s steps from batch `skip` on (past
    tracing) to the last batch's end (the end of the epoch is not a step);
    its `per_step()` is a `Sample`."""
    import keras

    class StepTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.clock, self.steps, self.sample = None, 0, None

        def on_train_batch_end(self, batch, logs=None):
            if batch < skip:
                return
            if self.clock is None:
                self.clock = Clock()
                return
            self.steps += 1
            self.sample = self.clock.per_step(self.steps)

        def per_step(self):
            return self.sample

    return StepTimer()


# --- Interleaved rounds ----------------------------------------------------


def interleave(runs, repeats, order_seed=0):
    """{name: [Sample, ...]}: `repeats` rounds, every variant once a round
    in a fresh random order, so drift hits them alike."""
    rng = np.random.default_rng(order_seed)
    times = {name: [] for name in runs}
    names = list(runs)
    for _ in range(repeats):
        for i in rng.permutation(len(names)):
            times[names[i]].append(runs[names[i]]())
    return times


def walls(times):
    """`{name: [wall seconds, ...]}` of `interleave`'s rounds."""
    return {name: [s.wall for s in samples] for name, samples in times.items()}


def quiet_rounds(times, quiet=0.25):
    """Rounds in which no call saw more than `quiet` cores busy elsewhere."""
    rounds = len(next(iter(times.values())))
    return [
        i
        for i in range(rounds)
        if max(samples[i].other for samples in times.values()) <= quiet
    ]


def median_ratio(a, b):
    """The median of the ratios `a[i] / b[i]`."""
    return statistics.median(x / y for x, y in zip(a, b))


def pair_ratio(times, a, b, quiet=0.25):
    """Medians of per-round ratios a/b: of wall times, of CPU times, and
    of wall times in quiet rounds (None with fewer than 3 of those)."""
    calm = quiet_rounds(times, quiet)
    ta, tb = times[a], times[b]
    return {
        "wall": median_ratio([s.wall for s in ta], [s.wall for s in tb]),
        "cpu": median_ratio([s.cpu for s in ta], [s.cpu for s in tb]),
        "quiet": median_ratio(
            [ta[i].wall for i in calm], [tb[i].wall for i in calm]
        )
        if len(calm) >= 3
        else None,
    }


def summarize(times, quiet=0.25):
    """Per variant: median wall and CPU ms/step, the median load of other
    processes, and the median wall ms/step over quiet rounds (None with
    fewer than 3)."""
    calm = quiet_rounds(times, quiet)
    return {
        name: {
            "ms": 1e3 * statistics.median(s.wall for s in samples),
            "cpu_ms": 1e3 * statistics.median(s.cpu for s in samples),
            "other_cores": statistics.median(s.other for s in samples),
            "quiet_ms": 1e3 * statistics.median(samples[i].wall for i in calm)
            if len(calm) >= 3
            else None,
            "quiet_rounds": len(calm),
        }
        for name, samples in times.items()
    }


def fmt_ratio(r):
    """One `pair_ratio` as text."""
    quiet = "n/a" if r["quiet"] is None else f"{r['quiet']:.3f}"
    return f"{r['wall']:.3f} (CPU time {r['cpu']:.3f}, quiet rounds {quiet})"


# --- Child processes and memory --------------------------------------------


def report(figures):
    """Prints `figures` (JSON-serializable) for the parent to read."""
    print(CHILD_PREFIX + json.dumps(figures), flush=True)


def run_child(script, args, env):
    """Runs `python script *args` with environment `env`; returns what it
    `report`ed last, or exits with its stderr if it failed."""
    completed = subprocess.run(
        [sys.executable, script, *args],
        env=env,
        capture_output=True,
        text=True,
    )
    if completed.returncode:
        sys.exit(
            f"{script} {' '.join(args)} failed:\n{completed.stderr[-3000:]}"
        )
    lines = completed.stdout.splitlines()
    line = [line for line in lines if line.startswith(CHILD_PREFIX)][-1]
    return json.loads(line[len(CHILD_PREFIX) :])


def rss_status():
    """{"VmRSS": KiB, "VmHWM": KiB} of this process (Linux)."""
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            key = line.split(":", 1)[0]
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(line.split()[1])
    return fields


def peak_mib(call):
    """MiB of peak RSS during `call()` above the RSS just before it. The
    peak (VmHWM) is reset first through /proc/self/clear_refs (Linux >=
    4.0)."""
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = rss_status()["VmRSS"]
    call()
    return (rss_status()["VmHWM"] - before) / 1024


def require_torch(script, no_torch_flag=False):
    """torch, or a line saying it is missing and exit 2. PyTorch lives in
    the benchmark venv only (`lm_speed_bench.py`'s docstring);
    `no_torch_flag` says that `script` can run without it."""
    try:
        import torch
    except ImportError:
        hint = ", or pass --no-torch" if no_torch_flag else ""
        print(
            f"{script}: PyTorch is not installed in this venv; see "
            f"lm_speed_bench.py's docstring for the benchmark venv{hint}."
        )
        sys.exit(2)
    return torch
