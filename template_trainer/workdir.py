"""Guards on a run's workdir: one trainer at a time, one config per run."""

import contextlib
import fcntl
import json
import os

from template_trainer import errors, schema

# A field every config.json has had since the validation split; one
# without it comes from an older trainer.
_VALIDATION_FIELD = "val_fraction"


class WorkdirError(errors.RunError):
    """The workdir cannot be created, read or written."""


def prepare(workdir):
    """Creates `workdir` if needed; returns its absolute path.

    Raises:
        WorkdirError: the path is empty, or cannot be made a directory.
    """
    if not workdir:
        raise WorkdirError(
            "--workdir is empty; expected a directory path, such as "
            "runs/default."
        )
    workdir = os.path.abspath(workdir)
    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as e:
        raise _unusable(workdir, e) from None
    return workdir


def first_missing(workdir):
    """The outermost directory of `workdir`'s path that does not exist yet,
    which `prepare` would create (None: `workdir` exists). A run refused
    before it saved anything removes it again."""
    missing, path = None, os.path.abspath(workdir or ".")
    while not os.path.exists(path):
        missing, parent = path, os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return missing


def _unusable(workdir, error):
    return WorkdirError(
        f"workdir {workdir} cannot be used ({error.strerror}: "
        f"{error.filename}); expected a directory this user can create and "
        "write to."
    )


class WorkdirInUseError(errors.RunError):
    """Another live trainer holds the workdir."""


class ConfigMismatchError(errors.RunError):
    """The config differs from the one the workdir's run was started with."""


def lock(workdir, name="lock"):
    """Takes the workdir's lock; returns the open lock file (keep it open).

    `flock` locks die with their process, so a run killed with SIGKILL
    leaves no lock behind that could block the next one.

    Raises:
        WorkdirInUseError: another process holds the lock.
    """
    path = os.path.join(workdir, name)
    while True:
        try:
            handle = open(path, "a+")
        except OSError as e:
            raise _unusable(workdir, e) from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "another process"
            handle.close()
            raise WorkdirInUseError(
                f"workdir {workdir} is in use by a running trainer (pid "
                f"{owner}); wait for it to finish or use another --workdir."
            ) from None
        # A trainer that just finished removed the file it had locked: a
        # lock on that file guards nothing, so take the new one.
        if _same_file(handle, path):
            break
        handle.close()
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def _same_file(handle, path):
    try:
        return os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
    except FileNotFoundError:
        return False


@contextlib.contextmanager
def locked(workdir, name="lock"):
    """Holds the workdir's lock (see `lock`) for the block, and removes
    the lock file when it ends, so a finished run leaves none."""
    handle = lock(workdir, name)
    try:
        yield
    finally:
        # Removed while still held: a trainer waiting on this file then
        # sees it is gone (see `lock`).
        with contextlib.suppress(OSError):
            os.remove(os.path.join(workdir, name))
        handle.close()


def _flatten(tree, prefix=""):
    if isinstance(tree, dict):
        items = {}
        for key, value in tree.items():
            items.update(_flatten(value, f"{prefix}{key}."))
        return items
    return {prefix[:-1]: tree}


def config_differences(saved, current):
    """Lists `field: saved -> current` for every field that differs."""
    old, new = _flatten(saved), _flatten(current)
    # A run saved before a field existed resumes as it was.
    for key, value in schema.value_before_it_existed().items():
        old.setdefault(key, value)
    # The fields that leave the computation as it was (the run's length,
    # how often it saves and logs) may change.
    changeable = schema.changeable()
    return [
        f"{key}: {old.get(key, '<absent>')!r} -> {new.get(key, '<absent>')!r}"
        for key in sorted(set(old) | set(new))
        if key not in changeable and old.get(key) != new.get(key)
    ]


def check_config(workdir, config_json, allow_change, has_checkpoint):
    """Refuses to resume a run under a different config.

    Args:
        workdir: The run's directory.
        config_json: The resolved config as a JSON string.
        allow_change: Resume even if fields other than
            `schema.changeable()` differ.
        has_checkpoint: Whether the workdir holds a checkpoint. Without one
            there is nothing to resume (a run that failed before its first
            save), so any config may start afresh.

    Raises:
        ConfigMismatchError: fields differ, a checkpoint would be resumed,
            and `allow_change` is False; or the run is an older trainer's.
    """
    path = os.path.join(workdir, "config.json")
    if not (has_checkpoint and os.path.exists(path)):
        return
    with open(path) as f:
        saved = json.load(f)
    if _VALIDATION_FIELD not in saved:
        raise ConfigMismatchError(
            f"workdir {workdir} holds a run of an older version of this "
            "trainer, which had no validation split (it trained on all of "
            "the training split and chose its best model on the test "
            "split), so it cannot resume under this one; use a new "
            "--workdir, or keep that run's results as they are."
        )
    differences = config_differences(saved, json.loads(config_json))
    if differences and not allow_change:
        raise ConfigMismatchError(
            f"workdir {workdir} holds a run started with a different "
            f"config ({'; '.join(differences)}); use a new --workdir, or "
            "pass --allow_config_change to resume with the new config."
        )


def save_config(workdir, config_json):
    """Writes `config.json`; called once the run's checkpoint (if any) has
    been restored under this config, so a config that cannot resume the run
    never replaces the one that can."""
    path = os.path.join(workdir, "config.json")
    temporary = path + ".tmp"
    with errors.writing("run's config", path):
        with open(temporary, "w") as f:
            json.dump(json.loads(config_json), f, indent=2, sort_keys=True)
        os.replace(temporary, path)


class DataDriftError(ConfigMismatchError):
    """The data of a run's source changed since the run started."""


def keep_data(workdir, dataset, record, has_checkpoint):
    """Writes `data.json`, what the run keeps of its data (a
    `DatasetInfo.record()`: the source's content key, class names,
    vocabulary), after refusing to resume a run on changed data.

    Raises:
        DataDriftError: the workdir holds a checkpoint trained on
            `dataset` with another content key.
    """
    path = os.path.join(workdir, "data.json")
    if has_checkpoint and os.path.exists(path):
        with open(path) as f:
            saved = json.load(f)
        old, new = saved.get("content_key", ""), record["content_key"]
        if saved.get("dataset") == dataset and old != new:
            raise DataDriftError(
                f"workdir {workdir} holds a run trained on {dataset} as it "
                f"was (content sha256 {old[:12]}...), and its content has "
                f"changed since (now {new[:12]}...); restore the data, or "
                "train on it in a new --workdir."
            )
    temporary = path + ".tmp"
    with errors.writing("run's data record", path):
        with open(temporary, "w") as f:
            json.dump({"dataset": dataset, **record}, f, indent=2)
        os.replace(temporary, path)
