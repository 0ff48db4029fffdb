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
    partial = os.path.join(workdir, f"{prefix}model.partial.keras")
    with errors.writing("model export", keras_path):
        try:
            model.save(partial)
            os.replace(partial, keras_path)
        finally:
            if os.path.exists(partial):
                os.remove(partial)
    saved_path = os.path.join(workdir, f"{prefix}saved_model")
    partial = saved_path + ".partial"
    with errors.writing("model export", saved_path):
        try:
            model.export(partial, verbose=False)
            # A directory cannot be swapped in one step: the old one is
            # moved aside only once the new one is complete, and deleted
            # once the new one is in place.
            old = saved_path + ".old"
            if os.path.exists(saved_path):
                os.replace(saved_path, old)
            os.replace(partial, saved_path)
            shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
