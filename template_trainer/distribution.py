"""`tf.distribute` strategies from a config name.

`config.batch_size` is always the global batch; each strategy splits it
across its replicas, and Keras losses divide by the replica count.
"""

import contextlib
import json
import os
import signal

import tensorflow as tf

from template_trainer import cluster, errors, upstream

STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker", "tpu")


class DistributionError(errors.RunError):
    """The requested strategy cannot run here."""


def split_cpu(num_devices):
    """Splits the CPU into `num_devices` logical devices (0: leave as is).

    A stand-in for several GPUs when testing `mirrored` on a CPU. It must
    run before TensorFlow initialises its devices.
    """
    if not num_devices:
        return
    cpu = tf.config.list_physical_devices("CPU")[0]
    wanted = [tf.config.LogicalDeviceConfiguration()] * num_devices
    if tf.config.get_logical_device_configuration(cpu) == wanted:
        return
    try:
        tf.config.set_logical_device_configuration(cpu, wanted)
    except RuntimeError:
        raise DistributionError(
            f"config.cpu_devices={num_devices} needs a fresh process: "
            "TensorFlow's devices were already initialised."
        ) from None


def _workers_in_tf_config():
    cluster = json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
    return len(cluster.get("worker", [])) + len(cluster.get("chief", []))


def create_strategy(name, collective_timeout_s):
    """Returns the strategy for `name` (one of `STRATEGIES`).

    Args:
        name: `auto` picks `multi_worker` when TF_CONFIG names several
            workers or a Slurm step has several tasks, else `mirrored`
            over several GPUs, else one device. `multi_worker` takes its
            cluster from TF_CONFIG, else from Slurm's variables
            (`cluster.slurm_cluster`).
        collective_timeout_s: If > 0, how long each multi-worker collective
            may wait before failing. 0 leaves lost peers to TensorFlow's
            health checks, which catch dead and frozen workers alike.
    """
    # Before any TensorFlow set-up: a wrong Slurm environment is one line.
    slurm = cluster.slurm_cluster(name, os.environ)
    # Physical, not logical, devices: listing logical ones starts the
    # runtime, after which multi-worker collectives can't be configured.
    gpus = tf.config.list_physical_devices("GPU")
    if name == "auto":
        if _workers_in_tf_config() > 1 or slurm:
            name = "multi_worker"
        elif len(gpus) > 1:
            name = "mirrored"
        else:
            name = "one_device"
    if name == "one_device":
        gpus = tf.config.list_logical_devices("GPU")
        return tf.distribute.OneDeviceStrategy(
            gpus[0].name if gpus else "/cpu:0"
        )
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [
            d.name for d in gpus or tf.config.list_logical_devices("CPU")
        ]
        return tf.distribute.MirroredStrategy(devices)
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ and not slurm:
            raise DistributionError(
                "config.distribution='multi_worker' needs the TF_CONFIG "
                "environment variable or a Slurm job step (srun) (see "
                "README, 'Several devices and machines', 'On a cluster')."
            )
        options = tf.distribute.experimental.CommunicationOptions(
            timeout_seconds=collective_timeout_s or None
        )
        return tf.distribute.MultiWorkerMirroredStrategy(
            cluster_resolver=_slurm_resolver(slurm, len(gpus)),
            communication_options=options,
        )
    if name == "tpu":
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
        except (ValueError, tf.errors.OpError) as e:
            raise DistributionError(
                f"config.distribution='tpu' found no TPU ({e})."
            ) from None
        return tf.distribute.TPUStrategy(resolver)
    raise DistributionError(
        f"config.distribution={name!r} is unknown; expected one of "
        f"{', '.join(STRATEGIES)}."
    )


def _slurm_resolver(slurm, num_gpus):
    """The resolver of a Slurm cluster, or None (TensorFlow reads TF_CONFIG).

    `num_gpus` are the GPUs this task sees, those Slurm left visible (none
    on a CPU node): `SlurmClusterResolver` would count them itself, and
    wrongly on a CPU node (see `cluster`).
    """
    if not slurm:
        return None
    return tf.distribute.cluster_resolver.SimpleClusterResolver(
        tf.train.ClusterSpec({"worker": list(slurm.workers)}),
        task_type="worker",
        task_id=slurm.index,
        num_accelerators={"GPU": num_gpus},
        rpc_layer="grpc",
    )


def worker_info(strategy):
    """Returns `(num_workers, worker_index, is_chief)` of this process."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return 1, 0, True
    cluster = resolver.cluster_spec().as_dict()
    chiefs = len(cluster.get("chief", []))
    num_workers = chiefs + len(cluster.get("worker", []))
    task_type, task_id = resolver.task_type, resolver.task_id
    index = task_id if task_type == "chief" else chiefs + task_id
    is_chief = task_type == "chief" or (not chiefs and task_id == 0)
    return num_workers, index, is_chief


def split_batch(strategy, batch):
    """Gives each replica its contiguous slice of the global batch.

    Every worker reads the same global batches from a plain `tf.data`
    iterator, which, unlike `experimental_distribute_dataset`'s, can be
    checkpointed. So every worker's iterator is in the same state: the
    chief's checkpoint resumes them all, and any replica count sees exactly
    the batches of a single-device run. The price: each worker reads the
    whole global batch and keeps only its slice.
    """
    replicas = strategy.num_replicas_in_sync
    if replicas == 1:
        return batch

    def replica_slice(context):
        index = context.replica_id_in_sync_group
        return tf.nest.map_structure(
            lambda t: tf.split(t, replicas)[index], batch
        )

    return strategy.experimental_distribute_values_from_function(replica_slice)


# The signals the trainer stops on, in the order `agreed_signal` prefers:
# a machine going away (SIGTERM), the user (SIGINT), Slurm's warning
# before the time limit (SIGUSR1, after which the chief requeues the job).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


def agreed_signal(strategy):
    """Returns `agree(received)`: the stop signal, the same on every worker.

    `received` is this worker's list of signal numbers received so far;
    `agree` returns the signal that stops the run, or 0. A signal reaches
    one worker, but every save runs collectives on all of them, so they
    must all stop, and save, at the same step: each call all-reduces one
    flag per signal in `STOP_SIGNALS` (the first wins), and every worker must
    make the call at the same point of the loop.

    Written by hand because `tf.distribute.experimental.
    PreemptionCheckpointHandler`, which does this for multi-worker runs,
    also restores at creation and saves and exits on its own, outside the
    trainer's checkpoint state, its damaged-checkpoint fallback and its
    exit codes; and it does not cover one-worker runs.
    """
    if worker_info(strategy)[0] == 1:
        return lambda received: received[0] if received else 0

    def agree(received):
        flags = tf.constant([float(s in received) for s in STOP_SIGNALS])
        summed = strategy.reduce(
            tf.distribute.ReduceOp.SUM,
            strategy.experimental_distribute_values_from_function(
                lambda _: flags
            ),
            axis=None,
        ).numpy()
        return next((int(s) for s, n in zip(STOP_SIGNALS, summed) if n), 0)

    return agree


class WorkerLostError(errors.RunError):
    """A multi-worker collective failed: a peer died or stopped answering."""


_COLLECTIVE_ERRORS = (
    tf.errors.AbortedError,
    tf.errors.CancelledError,
    tf.errors.DeadlineExceededError,
    tf.errors.UnavailableError,
)


@contextlib.contextmanager
def peers_watched(strategy):
    """Turns a failed collective of a multi-worker run into `WorkerLostError`.

    A peer that dies resets its connections, and one that hangs runs into
    the collective timeout; either way the survivors stop with a message
    naming the peer, instead of a traceback or a hang.
    """
    if worker_info(strategy)[0] == 1:
        yield
        return
    try:
        yield
    except _COLLECTIVE_ERRORS as e:
        resolver = strategy.cluster_resolver
        me = f"/job:{resolver.task_type}/replica:0/task:{resolver.task_id}"
        who = ", ".join(upstream.peers_named(e, me)) or "a peer worker"
        summary = str(e).strip().splitlines()[0][:200]
        raise WorkerLostError(
            f"lost contact with {who} ({type(e).__name__}: {summary}). "
            "Restart every worker with the same command to resume from the "
            "last checkpoint."
        ) from None
