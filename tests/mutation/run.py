"""Runs the curated mutants: each breaks one feature, and a test must see it.

  python tests/mutation/run.py              # every mutant
  python tests/mutation/run.py guard-loss-only sampler-no-temperature
  python tests/mutation/run.py --list       # names, features, test files

Each mutant (`tests/mutation/mutants_*.py`) is a small patch of one file
that deletes or breaks one documented feature, with the test files that
must turn red. The script copies the working tree once (tracked and
untracked files, as `git ls-files` lists them), then for each mutant
patches the copy, runs only the named test files there, and puts the file
back. It prints `killed` (a test failed) or `SURVIVED` and the seconds
taken, and exits 1 if any mutant survived.

Why a curated list and not mutmut: mutmut generates thousands of operator
mutants and runs the test suite for each; at ~4 minutes a suite here that
is days of CPU, and most of its mutants change nothing a user relies on.
A named list says which feature each test protects, runs in minutes, and
grows with the features (add a mutant with each one).
"""

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))


def load_mutants():
    """Every `MUTANTS` entry of `tests/mutation/mutants_*.py`, in file
    order."""
    sys.path.insert(0, REPO)
    mutants = []
    for name in sorted(os.listdir(HERE)):
        if name.startswith("mutants_") and name.endswith(".py"):
            spec = importlib.util.spec_from_file_location(
                name[:-3], os.path.join(HERE, name)
            )
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            mutants.extend(module.MUTANTS)
    return mutants


def problems(mutants, root=REPO):
    """What is wrong with the list itself: a duplicate name, a patch whose
    `old` text does not occur exactly once, a test file that is missing."""
    found, seen = [], set()
    for m in mutants:
        if m.name in seen:
            found.append(f"{m.name}: the name is used twice")
        seen.add(m.name)
        path = os.path.join(root, m.file)
        if not os.path.isfile(path):
            found.append(f"{m.name}: {m.file} does not exist")
            continue
        with open(path) as f:
            count = f.read().count(m.old)
        if count != 1:
            found.append(f"{m.name}: `old` occurs {count} times in {m.file}")
        if m.old == m.new:
            found.append(f"{m.name}: `new` is `old`")
        if not m.tests:
            found.append(f"{m.name}: no test files named")
        for test in m.tests:
            if not os.path.exists(os.path.join(root, test.split("::")[0])):
                found.append(f"{m.name}: test {test} does not exist")
    return found


def _copy_tree(destination):
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        check=True,
        capture_output=True,
    ).stdout.split(b"\0")
    for name in filter(None, (f.decode() for f in files)):
        source = os.path.join(REPO, name)
        if not os.path.isfile(source):
            continue  # deleted in the working tree, not yet in git
        target = os.path.join(destination, name)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copy2(source, target)


def run_one(mutant, root, workers, lane=""):
    """Applies `mutant` in `root`, runs its tests, restores the file;
    returns `(killed, seconds, first failing line of pytest's summary)`.
    `lane` is pytest's `-m` expression ("not slow": the fast lane only)."""
    path = os.path.join(root, mutant.file)
    with open(path) as f:
        original = f.read()
    with open(path, "w") as f:
        f.write(original.replace(mutant.old, mutant.new, 1))
    env = dict(
        os.environ,
        PYTHONPATH=root,  # the copy, ahead of the editable install
        PYTHONDONTWRITEBYTECODE="1",  # no stale .pyc of a patched file
    )
    command = [sys.executable, "-m", "pytest", "-q", "-x", "-m", lane]
    command += ["-p", "no:cacheprovider", "-n", str(workers)]
    start = time.perf_counter()
    try:
        result = subprocess.run(
            command + list(mutant.tests),
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
        )
    finally:
        with open(path, "w") as f:
            f.write(original)
    seconds = time.perf_counter() - start
    failed = [
        line for line in result.stdout.splitlines() if line.startswith("FAIL")
    ]
    # 1: tests failed; anything else (2: an import or collection error, 5:
    # no tests ran) is not a kill but a broken mutant or test file.
    killed = result.returncode == 1 and bool(failed)
    if result.returncode not in (0, 1):
        failed = [f"pytest exit {result.returncode}"] + result.stdout.split(
            "\n"
        )[-3:-1]
    return killed, seconds, failed[0] if failed else ""


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("names", nargs="*", help="mutants to run (all)")
    parser.add_argument("--list", action="store_true", help="list, run none")
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="pytest-xdist processes per mutant (0: one process)",
    )
    parser.add_argument(
        "--fast",
        action="store_true",
        help="run only the fast lane of each mutant's tests (-m 'not slow')",
    )
    args = parser.parse_args()
    mutants = load_mutants()
    wrong = problems(mutants)
    if wrong:
        for line in wrong:
            print(f"error: {line}", file=sys.stderr)
        return 2
    if args.names:
        unknown = set(args.names) - {m.name for m in mutants}
        if unknown:
            print(f"error: no mutant named {sorted(unknown)}", file=sys.stderr)
            return 2
        mutants = [m for m in mutants if m.name in args.names]
    if args.list:
        for m in mutants:
            print(f"{m.name:36} {m.feature}\n{'':36} {' '.join(m.tests)}")
        return 0
    survived = 0
    with tempfile.TemporaryDirectory(prefix="mutants-") as root:
        _copy_tree(root)
        print(f"{'mutant':36} {'result':9} {'seconds':>7}  first failure")
        for m in mutants:
            killed, seconds, first = run_one(
                m, root, args.workers, "not slow" if args.fast else ""
            )
            survived += not killed
            verdict = "killed" if killed else "SURVIVED"
            print(f"{m.name:36} {verdict:9} {seconds:7.1f}  {first[:90]}")
            sys.stdout.flush()
    print(f"\n{len(mutants) - survived} killed, {survived} survived.")
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
