"""A benchmark's measurements in child processes of its own (a fresh
process per setting read at start-up, or per memory figure), handed back
as one JSON line on stdout. Standard library only: the parent need not
import TensorFlow."""

import gc
import json
import subprocess
import sys

PREFIX = "CHILD "


def report(figures):
    """Prints `figures` (JSON-serializable) for the parent to read."""
    print(PREFIX + json.dumps(figures), flush=True)


def run(script, args, env):
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
    line = [line for line in lines if line.startswith(PREFIX)][-1]
    return json.loads(line[len(PREFIX) :])


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
