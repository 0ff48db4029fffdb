"""A cluster's environment turned into a TensorFlow cluster.

- Slurm: under `srun`, each task finds the whole cluster and its own place
  in it in `SLURM_PROCID`, `SLURM_STEP_NUM_TASKS`, `SLURM_STEP_NODELIST`
  and `SLURM_STEP_TASKS_PER_NODE`; `slurm_cluster` reads them, and
  `requeue_slurm_job` puts the job back in the queue.
- Kubernetes: the pods of an Indexed Job behind a headless Service build
  their `TF_CONFIG` from `JOB_COMPLETION_INDEX` and the Service's host
  names: `kubernetes_tf_config`, or from a shell, `python -m
  template_trainer.cluster kubernetes --job J --service S --workers N`.

TensorFlow's `SlurmClusterResolver` reads the same Slurm variables, but its
traps bite this trainer: it counts GPUs with `nvidia-smi` (missing on a
CPU-only node, where it fails) or from `CUDA_VISIBLE_DEVICES` (an empty
one counts as one GPU); with no GPUs it lists no tasks at all; it rewrites
`CUDA_VISIBLE_DEVICES` unless `auto_set_gpu=False`; and it sorts the host
names as text, so on `node[9-10]` it gives rank 0 (on node9, in Slurm's
order) node10's address. So the translation is done here, in Slurm's own
order, and the strategy counts the GPUs it sees (those Slurm left
visible). Where the resolver works (GPUs counted, host names of one
length) the tests check that both give the same cluster.

Nothing here imports TensorFlow: `train.py` checks the environment before
the ~5 s import.
"""

import argparse
import dataclasses
import json
import os
import re
import subprocess
import sys

from template_trainer import errors

# The variables `srun` sets in each task that together describe the step's
# cluster (TensorFlow's resolver reads the same four).
SLURM_STEP_VARIABLES = (
    "SLURM_PROCID",
    "SLURM_STEP_NUM_TASKS",
    "SLURM_STEP_NODELIST",
    "SLURM_STEP_TASKS_PER_NODE",
)

# Task k of a node listens on PORT_BASE + SLURM_JOB_ID % 10_000 + k: two
# jobs that share a node get other ports unless their ids agree in the last
# four digits, and 15_000-25_000 lies below Linux's ephemeral range
# (32_768 on), where outgoing connections take their ports. A requeued job
# keeps its id, so its ports.
PORT_BASE = 15_000


class ClusterError(errors.RunError):
    """The cluster's environment is incomplete or inconsistent."""


@dataclasses.dataclass(frozen=True)
class Cluster:
    """The workers' `host:port` addresses, in task order, and this
    process's index among them; worker 0 is the chief."""

    workers: tuple
    index: int

    def tf_config(self):
        """The cluster as a `TF_CONFIG` dict."""
        return {
            "cluster": {"worker": list(self.workers)},
            "task": {"type": "worker", "index": self.index},
        }


def slurm_cluster(distribution, environ=os.environ):
    """The cluster of this Slurm job step, or None if it is not one.

    It is one when `TF_CONFIG` is unset (a `TF_CONFIG` of the user's own
    wins) and either `distribution` is "multi_worker" and any of
    `SLURM_STEP_VARIABLES` is set, or `distribution` is "auto" and
    `SLURM_STEP_NUM_TASKS` is over 1 (several tasks of one step training
    apart would race for one workdir). Task `SLURM_PROCID` is worker
    `SLURM_PROCID`, so the chief is task 0; tasks are placed on the nodes
    as Slurm's default block distribution does, in the node list's order.

    Raises:
        ClusterError: A variable is missing, malformed or contradicts the
            others; the message names it.
    """
    if "TF_CONFIG" in environ:
        return None
    if distribution == "auto":
        if _positive_int(environ, "SLURM_STEP_NUM_TASKS", required=False) < 2:
            return None
    elif distribution != "multi_worker" or not any(
        name in environ for name in SLURM_STEP_VARIABLES
    ):
        return None
    for name in SLURM_STEP_VARIABLES + ("SLURM_JOB_ID",):
        if name not in environ:
            raise ClusterError(
                f"{name} is not set, but {_set_ones(environ)} is: a "
                "multi-worker run under Slurm needs every task started "
                f"by srun, which sets {', '.join(SLURM_STEP_VARIABLES)} "
                "and SLURM_JOB_ID (see examples/slurm/train.sbatch)."
            )
    num_tasks = _positive_int(environ, "SLURM_STEP_NUM_TASKS")
    rank = _int(environ, "SLURM_PROCID")
    if not 0 <= rank < num_tasks:
        raise ClusterError(
            f"SLURM_PROCID={rank} is not a task of this step; expected 0 to "
            f"{num_tasks - 1} (SLURM_STEP_NUM_TASKS={num_tasks})."
        )
    nodes = _parsed(environ, "SLURM_STEP_NODELIST", expand_nodelist)
    counts = _parsed(environ, "SLURM_STEP_TASKS_PER_NODE", expand_tasks)
    if len(nodes) != len(counts):
        raise ClusterError(
            f"SLURM_STEP_TASKS_PER_NODE={environ['SLURM_STEP_TASKS_PER_NODE']}"
            f" gives {len(counts)} nodes but SLURM_STEP_NODELIST="
            f"{environ['SLURM_STEP_NODELIST']} names {len(nodes)}; expected "
            "one count per node."
        )
    if sum(counts) != num_tasks:
        raise ClusterError(
            f"SLURM_STEP_NUM_TASKS={num_tasks} does not match the node list: "
            f"SLURM_STEP_NODELIST={environ['SLURM_STEP_NODELIST']} with "
            f"SLURM_STEP_TASKS_PER_NODE="
            f"{environ['SLURM_STEP_TASKS_PER_NODE']} gives {sum(counts)} "
            "tasks."
        )
    base = PORT_BASE + _int(environ, "SLURM_JOB_ID") % 10_000
    placed = [
        (node_id, local_id, f"{node}:{base + local_id}")
        for node_id, (node, count) in enumerate(zip(nodes, counts))
        for local_id in range(count)
    ]
    _check_placement(environ, rank, *placed[rank][:2])
    return Cluster(tuple(address for *_, address in placed), rank)


def _check_placement(environ, rank, node_id, local_id):
    """Refuses a task that Slurm placed elsewhere than block distribution
    would (`srun --distribution=cyclic`): its address would be another's.
    Only checked where srun said (`SLURM_NODEID`, `SLURM_LOCALID`)."""
    for name, expected in (
        ("SLURM_NODEID", node_id),
        ("SLURM_LOCALID", local_id),
    ):
        if name in environ and _int(environ, name) != expected:
            raise ClusterError(
                f"{name}={environ[name]} but task SLURM_PROCID={rank} would "
                f"have {name}={expected} under block distribution, which "
                "the cluster's addresses follow; start the step with srun's "
                "default --distribution=block."
            )


def _set_ones(environ):
    return ", ".join(n for n in SLURM_STEP_VARIABLES if n in environ)


def _int(environ, name):
    try:
        return int(environ[name])
    except ValueError:
        raise ClusterError(
            f"{name}={environ[name]!r} is not an integer; expected the "
            "value srun sets."
        ) from None


def _positive_int(environ, name, required=True):
    """`environ[name]` as an integer over 0; 0 if unset and not
    `required`."""
    if not required and name not in environ:
        return 0
    value = _int(environ, name)
    if value < 1:
        raise ClusterError(
            f"{name}={value} is not a task count; expected 1 or more."
        )
    return value


def _parsed(environ, name, parse):
    try:
        return parse(environ[name])
    except ValueError as e:
        raise ClusterError(
            f"{name}={environ[name]!r} is invalid: {e}."
        ) from None


def expand_nodelist(text):
    """Slurm's compact host list as host names, in its order:
    `node[1-2],gpu07` -> `["node1", "node2", "gpu07"]`; `a[01-02]-b[1,3]`
    -> `["a01-b1", "a01-b3", "a02-b1", "a02-b3"]`.

    Raises:
        ValueError: `text` is not a host list.
    """
    # Split at the commas outside brackets.
    parts = re.findall(r"(?:[^,\[\]]|\[[^\[\]]*\])+", text)
    if not text or ",".join(parts) != text:
        raise ValueError("expected host names such as node[1-4],gpu07")
    return [host for part in parts for host in _expand_host(part)]


def _expand_host(pattern):
    match = re.fullmatch(r"([^\[\]]*)\[([^\[\]]*)\](.*)", pattern)
    if match is None:
        if not pattern or "[" in pattern or "]" in pattern:
            raise ValueError(f"{pattern!r} is not a host name")
        return [pattern]
    prefix, ranges, rest = match.groups()
    tails = _expand_host(rest) if rest else [""]
    return [
        prefix + number + tail for number in _numbers(ranges) for tail in tails
    ]


def _numbers(ranges):
    """`01-03,7` -> `["01", "02", "03", "7"]`: each range keeps the width
    of its first number, as Slurm writes zero-padded names."""
    numbers = []
    for part in ranges.split(","):
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if match is None:
            raise ValueError(f"[{ranges}] is not a list of numbers or ranges")
        first, last = match.group(1), match.group(2) or match.group(1)
        if int(last) < int(first):
            raise ValueError(f"range {part} runs backwards")
        width = len(first)
        numbers += [
            str(n).zfill(width) for n in range(int(first), int(last) + 1)
        ]
    return numbers


def expand_tasks(text):
    """Slurm's tasks per node, one count per node: `2(x3),1` ->
    `[2, 2, 2, 1]`.

    Raises:
        ValueError: `text` is not such a list.
    """
    counts = []
    for part in text.split(","):
        match = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part)
        if match is None:
            raise ValueError("expected counts such as 2(x3),1")
        counts += [int(match.group(1))] * int(match.group(2) or 1)
    return counts


def requeue_slurm_job(step, environ=os.environ):
    """Requeues this Slurm job (`scontrol requeue $SLURM_JOB_ID`) so that it
    starts again and resumes from `step`; returns the one line that says so
    (or that it failed), or None outside Slurm (no `SLURM_JOB_ID`)."""
    job = environ.get("SLURM_JOB_ID")
    if not job:
        return None
    command = ["scontrol", "requeue", job]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=60
        )
        failure = done.returncode and (
            f"exit {done.returncode}: "
            + " ".join((done.stderr or done.stdout).split())[:200]
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        failure = f"{type(e).__name__}: {e}"
    if failure:
        return (
            f"error: {' '.join(command)} failed ({failure}); the job is not "
            f"requeued: submit it again to resume from step {step}."
        )
    return (
        f"Requeued Slurm job {job} ({' '.join(command)}): it resumes from "
        f"step {step} when it starts again."
    )


def kubernetes_tf_config(index, job, service, num_workers, port):
    """The `TF_CONFIG` of pod `index` of Indexed Job `job` with `num_workers`
    completions, whose pods are reachable through headless Service
    `service` (the pod template's `subdomain`): pod i is `{job}-{i}` and
    resolves as `{job}-{i}.{service}`. Pod 0 is the chief.

    Raises:
        ClusterError: `index` is not one of 0 .. num_workers - 1.
    """
    if not 0 <= index < num_workers:
        raise ClusterError(
            f"JOB_COMPLETION_INDEX={index} is not a worker of "
            f"{num_workers}; expected 0 to {num_workers - 1}: --workers "
            "must equal the Job's completions."
        )
    workers = [f"{job}-{i}.{service}:{port}" for i in range(num_workers)]
    return Cluster(tuple(workers), index).tf_config()


def main(argv=None):
    """`python -m template_trainer.cluster kubernetes ...`: prints this
    pod's `TF_CONFIG` (one line of JSON); a bad argument or environment is
    one line on stderr and exit 2."""
    parser = argparse.ArgumentParser(
        prog="python -m template_trainer.cluster",
        description="Prints the TF_CONFIG of this pod of an Indexed Job.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    kubernetes = commands.add_parser(
        "kubernetes", help="from JOB_COMPLETION_INDEX and the Service's names"
    )
    kubernetes.add_argument("--job", required=True, help="the Job's name")
    kubernetes.add_argument(
        "--service", required=True, help="the headless Service's name"
    )
    kubernetes.add_argument(
        "--workers", type=int, required=True, help="the Job's completions"
    )
    kubernetes.add_argument("--port", type=int, default=2222)
    args = parser.parse_args(argv)
    try:
        index = _int(os.environ, "JOB_COMPLETION_INDEX")
        config = kubernetes_tf_config(
            index, args.job, args.service, args.workers, args.port
        )
    except KeyError:
        parser.exit(
            2,
            "error: JOB_COMPLETION_INDEX is not set; expected a pod of an "
            "Indexed Job (completionMode: Indexed).\n",
        )
    except ClusterError as e:
        parser.exit(2, f"error: {e}\n")
    print(json.dumps(config))


if __name__ == "__main__":
    sys.exit(main())
