"""A cluster's environment turned into a TensorFlow cluster: Slurm's
variables (faked in the environment, as TensorFlow's own resolver tests
fake them), `scontrol requeue`, and a Kubernetes pod's `TF_CONFIG`."""

import json
import os
import signal
import stat
import subprocess
import sys

import pytest
import tensorflow as tf
from run_helpers import REPO

import template_trainer
from template_trainer import cluster, distribution, loop

JOB = "1234567"
BASE = cluster.PORT_BASE + 4567  # the job id's last four digits


def _slurm(rank=0, tasks=4, nodes="node[1-2]", per_node="2(x2)", **more):
    """A task's Slurm variables, as `srun` sets them."""
    return {
        "SLURM_JOB_ID": JOB,
        "SLURM_PROCID": str(rank),
        "SLURM_STEP_NUM_TASKS": str(tasks),
        "SLURM_STEP_NODELIST": nodes,
        "SLURM_STEP_TASKS_PER_NODE": per_node,
        **more,
    }


@pytest.mark.parametrize(
    "nodelist, hosts",
    [
        ("localhost", ["localhost"]),
        ("node[1-2]", ["node1", "node2"]),
        ("gpu[08-10]", ["gpu08", "gpu09", "gpu10"]),
        # TensorFlow's own example.
        (
            "n[1-2],m5,o[3-4,6,7-9]",
            ["n1", "n2", "m5", "o3", "o4", "o6", "o7", "o8", "o9"],
        ),
        ("r[1-2]-n[1,3]", ["r1-n1", "r1-n3", "r2-n1", "r2-n3"]),
    ],
)
def test_nodelist_expands_in_slurms_order(nodelist, hosts):
    assert cluster.expand_nodelist(nodelist) == hosts


@pytest.mark.parametrize(
    "per_node, counts",
    [("4", [4]), ("2(x2),1", [2, 2, 1]), ("1,3(x3)", [1, 3, 3, 3])],
)
def test_tasks_per_node_expand(per_node, counts):
    assert cluster.expand_tasks(per_node) == counts


@pytest.mark.parametrize(
    "per_node, nodelist",
    [
        ("2(x2),1", "n[1-3]"),
        ("1(x4)", "n[01-04]"),
        ("1(x3)", "a,b[7-8]"),
        ("2,1", "gpu[1-2]"),
    ],
)
def test_cluster_is_tensorflows_where_its_resolver_works(
    per_node, nodelist, monkeypatch
):
    """Where `SlurmClusterResolver` works (GPUs counted for it, host names
    of one length), both give the same workers in the same order."""
    tasks = sum(cluster.expand_tasks(per_node))
    for rank in range(tasks):
        env = _slurm(rank, tasks, nodelist, per_node)
        monkeypatch.setattr(os, "environ", env)
        resolver = tf.distribute.cluster_resolver.SlurmClusterResolver(
            port_base=BASE, gpus_per_node=4, gpus_per_task=1, auto_set_gpu=False
        )
        theirs = resolver.cluster_spec().as_dict()["worker"]
        ours = cluster.slurm_cluster("multi_worker", env)
        assert list(ours.workers) == theirs
        assert (ours.index, resolver.task_id) == (rank, rank)


def test_tasks_are_placed_in_the_node_lists_order():
    """On node[9-10] rank 0 runs on node9; TensorFlow's resolver, which
    sorts host names as text, would give it node10's address."""
    env = _slurm(0, 2, "node[9-10]", "1(x2)")
    ours = cluster.slurm_cluster("multi_worker", env)
    assert ours.workers == (f"node9:{BASE}", f"node10:{BASE}")


def test_tasks_of_a_node_take_consecutive_ports_from_the_job_id():
    env = _slurm(3, 4, "node[1-2]", "2(x2)")
    assert cluster.slurm_cluster("multi_worker", env) == cluster.Cluster(
        workers=(
            f"node1:{BASE}",
            f"node1:{BASE + 1}",
            f"node2:{BASE}",
            f"node2:{BASE + 1}",
        ),
        index=3,
    )
    assert cluster.slurm_cluster("multi_worker", env).tf_config() == {
        "cluster": {
            "worker": [
                f"node1:{BASE}",
                f"node1:{BASE + 1}",
                f"node2:{BASE}",
                f"node2:{BASE + 1}",
            ]
        },
        "task": {"type": "worker", "index": 3},
    }


@pytest.mark.parametrize(
    "distribution_name, env, formed",
    [
        ("multi_worker", _slurm(), True),
        ("auto", _slurm(), True),
        # One task: nothing to form; auto trains on this task's devices.
        ("auto", _slurm(0, 1, "node1", "1"), False),
        ("multi_worker", _slurm(0, 1, "node1", "1"), True),
        # The user's own TF_CONFIG wins.
        ("multi_worker", {**_slurm(), "TF_CONFIG": "{}"}, False),
        ("auto", {**_slurm(), "TF_CONFIG": "{}"}, False),
        ("one_device", _slurm(), False),
        ("mirrored", _slurm(), False),
        # A batch script's own environment, outside any srun step.
        ("auto", {"SLURM_JOB_ID": JOB}, False),
        ("multi_worker", {"SLURM_JOB_ID": JOB}, False),
        ("multi_worker", {}, False),
    ],
)
def test_which_runs_form_a_slurm_cluster(distribution_name, env, formed):
    assert bool(cluster.slurm_cluster(distribution_name, env)) == formed


def _without(name):
    env = _slurm()
    del env[name]
    return env


@pytest.mark.parametrize(
    "distribution_name, env, named",
    [
        ("multi_worker", _without("SLURM_PROCID"), "SLURM_PROCID is not set"),
        ("auto", _without("SLURM_PROCID"), "SLURM_PROCID is not set"),
        (
            "multi_worker",
            _without("SLURM_STEP_NUM_TASKS"),
            "SLURM_STEP_NUM_TASKS is not set",
        ),
        (
            "multi_worker",
            _without("SLURM_STEP_NODELIST"),
            "SLURM_STEP_NODELIST is not set",
        ),
        (
            "multi_worker",
            _without("SLURM_STEP_TASKS_PER_NODE"),
            "SLURM_STEP_TASKS_PER_NODE is not set",
        ),
        ("multi_worker", _without("SLURM_JOB_ID"), "SLURM_JOB_ID is not set"),
        # Three tasks, but the node list holds four.
        (
            "multi_worker",
            _slurm(0, 3, "node[1-2]", "2(x2)"),
            "SLURM_STEP_NUM_TASKS=3 does not match the node list",
        ),
        (
            "multi_worker",
            _slurm(0, 4, "node[1-3]", "2(x2)"),
            "SLURM_STEP_TASKS_PER_NODE=2(x2) gives 2 nodes but "
            "SLURM_STEP_NODELIST=node[1-3] names 3",
        ),
        (
            "multi_worker",
            _slurm(4, 4),
            "SLURM_PROCID=4 is not a task of this step",
        ),
        ("multi_worker", _slurm("x"), "SLURM_PROCID='x' is not an integer"),
        ("auto", _slurm(0, "two"), "SLURM_STEP_NUM_TASKS='two' is not"),
        ("multi_worker", _slurm(0, 0), "SLURM_STEP_NUM_TASKS=0 is not"),
        (
            "multi_worker",
            _slurm(nodes="node[1-2"),
            "SLURM_STEP_NODELIST='node[1-2' is invalid",
        ),
        (
            "multi_worker",
            _slurm(nodes="node[2-1]"),
            "SLURM_STEP_NODELIST='node[2-1]' is invalid: range 2-1 runs",
        ),
        (
            "multi_worker",
            _slurm(per_node="2(x)"),
            "SLURM_STEP_TASKS_PER_NODE='2(x)' is invalid",
        ),
        # srun --distribution=cyclic: rank 1 on the second node.
        (
            "multi_worker",
            _slurm(1, SLURM_NODEID="1", SLURM_LOCALID="0"),
            "SLURM_NODEID=1 but task SLURM_PROCID=1 would have SLURM_NODEID=0",
        ),
        (
            "multi_worker",
            _slurm(1, SLURM_NODEID="0", SLURM_LOCALID="0"),
            "SLURM_LOCALID=0 but task SLURM_PROCID=1 would have "
            "SLURM_LOCALID=1",
        ),
    ],
)
def test_a_wrong_slurm_environment_is_one_line_naming_the_variable(
    distribution_name, env, named
):
    with pytest.raises(cluster.ClusterError) as raised:
        cluster.slurm_cluster(distribution_name, env)
    assert named in str(raised.value)
    assert "\n" not in str(raised.value)
    assert raised.value.exit_code == 2
    assert isinstance(raised.value, template_trainer.RunError)


def test_block_placement_as_srun_reports_it_is_accepted():
    env = _slurm(3, SLURM_NODEID="1", SLURM_LOCALID="1")
    assert cluster.slurm_cluster("multi_worker", env).index == 3


class _Strategy:
    """Records what `create_strategy` passes to
    `MultiWorkerMirroredStrategy`, instead of starting a server."""

    def __init__(self, cluster_resolver=None, communication_options=None):
        self.cluster_resolver = cluster_resolver


@pytest.mark.parametrize("name", ["multi_worker", "auto"])
def test_the_strategy_gets_the_slurm_cluster_and_this_tasks_devices(
    name, monkeypatch
):
    monkeypatch.setattr(os, "environ", _slurm(2, SLURM_LOCALID="0"))
    monkeypatch.setattr(tf.distribute, "MultiWorkerMirroredStrategy", _Strategy)
    resolver = distribution.create_strategy(name, 0).cluster_resolver
    assert resolver.cluster_spec().as_dict() == {
        "worker": [
            f"node1:{BASE}",
            f"node1:{BASE + 1}",
            f"node2:{BASE}",
            f"node2:{BASE + 1}",
        ]
    }
    assert (resolver.task_type, resolver.task_id) == ("worker", 2)
    assert resolver.rpc_layer == "grpc"
    # This CPU machine's GPUs: none, where TensorFlow's resolver counts
    # an empty CUDA_VISIBLE_DEVICES as one.
    assert resolver.num_accelerators() == {"GPU": 0}


def test_a_wrong_slurm_environment_stops_create_strategy(monkeypatch):
    monkeypatch.setattr(os, "environ", _without("SLURM_PROCID"))
    with pytest.raises(cluster.ClusterError, match="SLURM_PROCID"):
        distribution.create_strategy("multi_worker", 0)


@pytest.fixture
def scontrol(tmp_path, monkeypatch):
    """A fake `scontrol` first on PATH; returns the file it writes its
    arguments to, one call a line."""
    calls = tmp_path / "scontrol-calls"
    script = tmp_path / "bin" / "scontrol"
    script.parent.mkdir()
    script.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv(
        "PATH", f"{script.parent}{os.pathsep}{os.environ['PATH']}"
    )
    calls.write_text("")
    return calls


def test_requeue_calls_scontrol_with_the_job_id(scontrol):
    said = cluster.requeue_slurm_job(20, {"SLURM_JOB_ID": JOB})
    assert scontrol.read_text().splitlines() == [f"requeue {JOB}"]
    assert said == (
        f"Requeued Slurm job {JOB} (scontrol requeue {JOB}): it resumes "
        "from step 20 when it starts again."
    )


def test_outside_slurm_nothing_is_requeued(scontrol):
    assert cluster.requeue_slurm_job(20, {}) is None
    assert scontrol.read_text() == ""


def test_a_failed_requeue_says_so_in_one_line(scontrol):
    scontrol.parent.joinpath("bin", "scontrol").write_text(
        "#!/bin/sh\necho 'Invalid job id specified' >&2\nexit 1\n"
    )
    said = cluster.requeue_slurm_job(20, {"SLURM_JOB_ID": JOB})
    assert said == (
        f"error: scontrol requeue {JOB} failed (exit 1: Invalid job id "
        "specified); the job is not requeued: submit it again to resume "
        "from step 20."
    )


def test_sigusr1_is_caught_like_sigterm():
    """Inside the loop's handlers SIGUSR1 is recorded like SIGTERM; a
    handler of the test's own sees any that escape them (rather than the
    default action ending the test process)."""
    escaped = []
    original = signal.signal(signal.SIGUSR1, lambda s, _: escaped.append(s))
    try:
        with loop._catch_preemption() as received:
            os.kill(os.getpid(), signal.SIGUSR1)
            os.kill(os.getpid(), signal.SIGTERM)
        restored = signal.getsignal(signal.SIGUSR1)
    finally:
        signal.signal(signal.SIGUSR1, original)
    assert received == [signal.SIGUSR1, signal.SIGTERM]
    assert escaped == []
    assert restored is not signal.SIG_DFL  # the test's own, back


@pytest.mark.parametrize("num_workers", [1, 2, 3])
def test_kubernetes_tf_config_of_every_pod(num_workers, monkeypatch):
    """Every pod's `TF_CONFIG` names the same cluster, by the headless
    Service's host names, and the pod's own index; TensorFlow reads it
    so."""
    hosts = [f"train-{i}.workers:2222" for i in range(num_workers)]
    for index in range(num_workers):
        config = cluster.kubernetes_tf_config(
            index, "train", "workers", num_workers, 2222
        )
        assert config == {
            "cluster": {"worker": hosts},
            "task": {"type": "worker", "index": index},
        }
        monkeypatch.setenv("TF_CONFIG", json.dumps(config))
        resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
        assert resolver.cluster_spec().as_dict() == {"worker": hosts}
        assert (resolver.task_type, resolver.task_id) == ("worker", index)


def test_kubernetes_index_past_the_workers_is_refused():
    with pytest.raises(cluster.ClusterError, match="JOB_COMPLETION_INDEX=2"):
        cluster.kubernetes_tf_config(2, "train", "workers", 2, 2222)


def test_kubernetes_command_prints_the_pods_tf_config(monkeypatch, capsys):
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "1")
    cluster.main(["kubernetes", "--job=train", "--service=w", "--workers=2"])
    assert json.loads(capsys.readouterr().out) == {
        "cluster": {"worker": ["train-0.w:2222", "train-1.w:2222"]},
        "task": {"type": "worker", "index": 1},
    }


def test_kubernetes_command_outside_an_indexed_job_exits_2(monkeypatch, capsys):
    monkeypatch.delenv("JOB_COMPLETION_INDEX", raising=False)
    with pytest.raises(SystemExit) as exited:
        cluster.main(["kubernetes", "--job=t", "--service=w", "--workers=2"])
    assert exited.value.code == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("error: JOB_COMPLETION_INDEX is not set")


@pytest.mark.slow
def test_train_py_refuses_a_half_set_slurm_environment(tmp_path):
    """The command line's exit code and one line, before TensorFlow (and
    its cluster) starts: here TensorFlow cannot even be imported."""
    fake = tmp_path / "no_tensorflow" / "tensorflow"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('imported')\n")
    env = {**os.environ, **_without("SLURM_PROCID")}
    env["PYTHONPATH"] = os.pathsep.join([str(fake.parent), REPO])
    env.pop("TF_CONFIG", None)
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(REPO, "train.py"),
            "--config",
            os.path.join(REPO, "configs", "default.py"),
            "--workdir",
            str(tmp_path / "run"),
            "--config.distribution=multi_worker",
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    [line] = result.stderr.splitlines()
    assert line.startswith("error: SLURM_PROCID is not set, but ")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_kubernetes_example_builds_the_cluster_its_manifest_describes():
    """The example's pods run the builder with the Job's name, the
    Service's, the completions and the port the Service exposes; its shell
    line, run here for pod 1, gives the trainer that pod's TF_CONFIG."""
    yaml = pytest.importorskip("yaml")
    path = os.path.join(REPO, "examples", "kubernetes", "train.yaml")
    with open(path) as f:
        service, job = yaml.safe_load_all(f)
    pod = job["spec"]["template"]["spec"]
    [container] = pod["containers"]
    [line] = container["args"]
    name, workers = job["metadata"]["name"], job["spec"]["completions"]
    port = service["spec"]["ports"][0]["port"]
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["parallelism"] == workers
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"] == {"job-name": name}
    assert pod["subdomain"] == service["metadata"]["name"]
    assert container["ports"] == [{"containerPort": port}]
    # The shell line, with the trainer replaced by a print of TF_CONFIG.
    script = line.replace("exec python train.py", 'echo "$TF_CONFIG" #')
    script = script.replace("python -m", f"{sys.executable} -m")
    assert script.count(sys.executable) == 1
    printed = subprocess.run(
        ["/bin/sh", "-c", script],
        cwd=REPO,
        env={**os.environ, "JOB_COMPLETION_INDEX": "1"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    hosts = [f"{name}-{i}.{pod['subdomain']}:{port}" for i in range(workers)]
    assert json.loads(printed) == {
        "cluster": {"worker": hosts},
        "task": {"type": "worker", "index": 1},
    }
