"""A benchmark's measurements in child processes of its own (a fresh
process per setting read at start-up, or per memory figure), handed back
as one JSON line on stdout. Standard library only: the parent need not
import TensorFlow."""

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
