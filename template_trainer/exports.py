"""The trained model, written for use outside the trainer.

`{prefix}model.keras` (`keras.models.load_model`, after `import models`)
and `{prefix}saved_model/` (`tf.saved_model.load(...).serve(x)`). Each is
written beside its final name and then moved into place, so a failed write
(a full disk) never replaces a good export with a broken one.
"""

import os
import shutil

from template_trainer import errors


def export(model, workdir, prefix=""):
    """Writes `model` as `{prefix}model.keras` and `{prefix}saved_model/`.

    Raises:
        errors.WriteError: either could not be written; what was there
            before is left as it was.
    """
    keras_path = os.path.join(workdir, f"{prefix}model.keras")
    _write_file(keras_path, model.save)
    _write_directory(
        os.path.join(workdir, f"{prefix}saved_model"),
        lambda path: model.export(path, verbose=False),
    )


def copy(workdir, prefix):
    """Copies the export of `export(model, workdir)` to `prefix`'s names:
    for a model whose weights are those of the exported one (the best
    model is the final one), the same files, for a fraction of the time.

    Raises:
        errors.WriteError: as `export`.
    """
    _write_file(
        os.path.join(workdir, f"{prefix}model.keras"),
        lambda path: shutil.copyfile(
            os.path.join(workdir, "model.keras"), path
        ),
    )
    _write_directory(
        os.path.join(workdir, f"{prefix}saved_model"),
        lambda path: shutil.copytree(
            os.path.join(workdir, "saved_model"), path
        ),
    )


def _write_file(path, write):
    """`write(partial)` beside `path`, then moved onto it."""
    root, extension = os.path.splitext(path)
    partial = f"{root}.partial{extension}"
    with errors.writing("model export", path):
        try:
            write(partial)
            os.replace(partial, path)
        finally:
            if os.path.exists(partial):
                os.remove(partial)


def _write_directory(path, write):
    """`write(partial)` beside directory `path`, then swapped in."""
    partial = path + ".partial"
    with errors.writing("model export", path):
        try:
            write(partial)
            # A directory cannot be swapped in one step: the old one is
            # moved aside only once the new one is complete, and deleted
            # once the new one is in place.
            old = path + ".old"
            if os.path.exists(path):
                os.replace(path, old)
            os.replace(partial, path)
            shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
