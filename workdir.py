"""Guards on a run's workdir: one trainer at a time, one config per run."""

import fcntl
import json
import os

# Changing these only makes the run shorter or longer, so a resumed run may.
RUN_LENGTH_FIELDS = ("num_epochs",)


class WorkdirInUseError(RuntimeError):
    """Another live trainer holds the workdir."""


class ConfigMismatchError(RuntimeError):
    """The config differs from the one the workdir's run was started with."""


def lock(workdir, name="lock"):
    """Takes the workdir's lock; returns the open lock file (keep it open).

    `flock` locks die with their process, so a run killed with SIGKILL
    leaves no lock behind that could block the next one.

    Raises:
        WorkdirInUseError: another process holds the lock.
    """
    path = os.path.join(workdir, name)
    handle = open(path, "a+")
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
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


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
    return [
        f"{key}: {old.get(key, '<absent>')!r} -> {new.get(key, '<absent>')!r}"
        for key in sorted(set(old) | set(new))
        if key not in RUN_LENGTH_FIELDS and old.get(key) != new.get(key)
    ]


def check_and_save_config(workdir, config_json, allow_change, write=True):
    """Refuses to resume a run under a different config; saves the config.

    Args:
        workdir: The run's directory.
        config_json: The resolved config as a JSON string.
        allow_change: Resume even if fields other than the run length
            differ (the new config is then saved).
        write: Save the config (False for the non-chief workers of a
            multi-worker run, which only check it).

    Raises:
        ConfigMismatchError: fields differ and `allow_change` is False.
    """
    path = os.path.join(workdir, "config.json")
    current = json.loads(config_json)
    if os.path.exists(path):
        with open(path) as f:
            saved = json.load(f)
        differences = config_differences(saved, current)
        if differences and not allow_change:
            raise ConfigMismatchError(
                f"workdir {workdir} holds a run started with a different "
                f"config ({'; '.join(differences)}); use a new --workdir, or "
                "pass --allow_config_change to resume with the new config."
            )
    if not write:
        return
    temporary = path + ".tmp"
    with open(temporary, "w") as f:
        json.dump(current, f, indent=2, sort_keys=True)
    os.replace(temporary, path)
