"""The bundled and TFDS catalog datasets: `digits`, `python_docs` (built
offline), `mnist`, `fashion_mnist`, `cifar10` (downloaded on first use)."""

import os
import socket
import urllib.parse

import tensorflow_datasets as tfds

from template_trainer.data import (
    digits,  # noqa: F401  (importing it registers the builder with TFDS)
    names,
    python_docs,  # noqa: F401  (the same)
    store,
)
from template_trainer.data.problems import DatasetUnavailableError


def _reachable(urls, timeout=5.0):
    """Whether every host in `urls` accepts a TCP connection.

    Offline, TFDS retries each download for minutes before failing; this
    check fails in seconds instead.
    """
    for url in urls:
        parsed = urllib.parse.urlparse(url)
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        try:
            socket.create_connection((parsed.hostname, port), timeout).close()
        except OSError:
            return False
    return True


def _unavailable(name, builder, why):
    where = os.path.join(builder.data_dir_root, name)
    return DatasetUnavailableError(
        f"dataset '{name}' is not prepared under {where} and {why}. Prepare "
        f"it on a machine with network access (`tfds build {name} "
        f"--data_dir=DIR`), copy DIR here and pass --config.data_dir=DIR."
    )


def prepare(name, data_dir, download):
    """Returns the TFDS builder of `name`, prepared.

    Raises:
        DatasetUnavailableError: `name` is not prepared under `data_dir`
            and cannot be downloaded.
    """
    builder = tfds.builder(name, data_dir=data_dir)
    if name in names.OFFLINE or builder.is_prepared():
        with store.preparing(builder.data_dir_root, name), store.quiet():
            builder.download_and_prepare()
        # Anew: if another trainer prepared it while this one waited, this
        # builder's info still describes an empty dataset.
        return tfds.builder(name, data_dir=data_dir)
    if not download:
        raise _unavailable(
            name, builder, "downloading is off (config.download)"
        )
    if not _reachable(builder.url_infos or {}):
        raise _unavailable(
            name, builder, "its download servers are unreachable"
        )
    try:
        with store.preparing(builder.data_dir_root, name):
            builder.download_and_prepare()
    except Exception as e:  # TFDS raises many unrelated types offline.
        raise _unavailable(
            name, builder, f"downloading it failed ({type(e).__name__})"
        ) from e
    return tfds.builder(name, data_dir=data_dir)
