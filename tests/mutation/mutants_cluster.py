"""Mutants of the cluster launch: Slurm's cluster, SIGUSR1 and requeue,
Kubernetes' TF_CONFIG."""

from tests.mutation.mutant import Mutant

FAST = ("tests/cluster_test.py",)
# The two faked Slurm tasks (minutes): what only real processes show.
TWO_TASKS = (
    "tests/distribution_test.py::"
    "test_slurm_tasks_requeued_by_sigusr1_resume_equal_to_one_device",
)

MUTANTS = [
    Mutant(
        name="sigusr1-not-caught",
        feature="SIGUSR1 stops the run at a saved step, as SIGTERM does",
        file="template_trainer/distribution.py",
        old="STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)",
        new="STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)",
        tests=FAST,
    ),
    Mutant(
        name="requeue-not-called",
        feature="after SIGUSR1's save the chief runs scontrol requeue",
        file="template_trainer/loop.py",
        old="                        _requeue(run)\n",
        new="                        pass\n",
        tests=TWO_TASKS,
    ),
    Mutant(
        name="requeue-by-every-worker",
        feature="the job is requeued once, by the chief",
        file="template_trainer/loop.py",
        old="    if run.is_chief:\n        said = cluster.requeue_slurm_job(",
        new="    if True:\n        said = cluster.requeue_slurm_job(",
        tests=TWO_TASKS,
    ),
    Mutant(
        name="requeue-without-job-id",
        feature="scontrol requeue is given $SLURM_JOB_ID",
        file="template_trainer/cluster.py",
        old='    command = ["scontrol", "requeue", job]',
        new='    command = ["scontrol", "requeue"]',
        tests=FAST,
    ),
    Mutant(
        name="slurm-task-index-wrong",
        feature="task SLURM_PROCID is worker SLURM_PROCID",
        file="template_trainer/cluster.py",
        old="address in placed), rank)",
        new="address in placed), 0)",
        tests=FAST,
    ),
    Mutant(
        name="slurm-port-shared-on-a-node",
        feature="the tasks of one node listen on consecutive ports",
        file="template_trainer/cluster.py",
        old='f"{node}:{base + local_id}"',
        new='f"{node}:{base}"',
        tests=FAST,
    ),
    Mutant(
        name="slurm-hosts-sorted-as-text",
        feature="tasks are placed in the node list's order",
        file="template_trainer/cluster.py",
        old="enumerate(zip(nodes, counts))",
        new="enumerate(sorted(zip(nodes, counts)))",
        tests=FAST,
    ),
    Mutant(
        name="slurm-task-count-unchecked",
        feature="SLURM_STEP_NUM_TASKS must match the node list (exit 2)",
        file="template_trainer/cluster.py",
        old="    if sum(counts) != num_tasks:\n",
        new="    if False:\n",
        tests=FAST,
    ),
    Mutant(
        name="slurm-missing-variable-unchecked",
        feature="a half-set Slurm environment names the missing variable",
        file="template_trainer/cluster.py",
        old="        if name not in environ:\n            raise ClusterError(",
        new="        if False:\n            raise ClusterError(",
        tests=FAST,
    ),
    Mutant(
        name="slurm-cluster-not-given-to-strategy",
        feature="multi_worker under srun trains on Slurm's cluster",
        file="template_trainer/distribution.py",
        old="            cluster_resolver=_slurm_resolver(slurm, len(gpus)),\n",
        new="            cluster_resolver=None,\n",
        tests=FAST,
    ),
    Mutant(
        name="auto-ignores-slurm",
        feature="auto trains multi-worker in a Slurm step of several tasks",
        file="template_trainer/distribution.py",
        old="        if _workers_in_tf_config() > 1 or slurm:\n",
        new="        if _workers_in_tf_config() > 1:\n",
        tests=FAST,
    ),
    Mutant(
        name="slurm-checked-after-tensorflow",
        feature="train.py refuses a wrong Slurm environment before "
        "importing TensorFlow",
        file="template_trainer/command_line.py",
        old="        cluster.slurm_cluster(config.distribution)\n",
        new="        pass\n",
        tests=FAST,
    ),
    Mutant(
        name="kubernetes-hosts-without-service",
        feature="each pod's TF_CONFIG names the pods by the Service's names",
        file="template_trainer/cluster.py",
        old='    workers = [f"{job}-{i}.{service}:{port}" for i in range(',
        new='    workers = [f"{job}-{i}:{port}" for i in range(',
        tests=FAST,
    ),
]
