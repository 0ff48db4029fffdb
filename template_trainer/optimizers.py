"""Keras optimizers and learning-rate schedules built from config values."""

import keras

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "warmup_cosine", "piecewise")


def create_schedule(
    name, learning_rate, total_steps, warmup_steps, boundaries, decay_factor
):
    """Returns a float or a `keras.optimizers.schedules` schedule.

    Args:
        name: One of `SCHEDULES`.
        learning_rate: Peak (or constant) learning rate.
        total_steps: Steps in the whole run; cosine decays to 0 at its end.
        warmup_steps: Linear warm-up steps before the cosine decay.
        boundaries: For `piecewise`: steps at which the rate is multiplied by
            `decay_factor`.
        decay_factor: For `piecewise`: factor applied at each boundary.
    """
    if name == "constant":
        return learning_rate
    if name == "warmup_cosine":
        return keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=0.0 if warmup_steps else learning_rate,
            decay_steps=max(total_steps - warmup_steps, 1),
            warmup_target=learning_rate if warmup_steps else None,
            warmup_steps=warmup_steps,
        )
    if name == "piecewise":
        values = [
            learning_rate * decay_factor**i for i in range(len(boundaries) + 1)
        ]
        return keras.optimizers.schedules.PiecewiseConstantDecay(
            list(boundaries), values
        )
    raise ValueError(f"Unknown schedule {name!r}; expected one of {SCHEDULES}.")


def create_optimizer(name, learning_rate, momentum, nesterov, weight_decay):
    """Returns a Keras optimizer; `learning_rate` may be a schedule."""
    if name == "sgd":
        return keras.optimizers.SGD(
            learning_rate=learning_rate, momentum=momentum, nesterov=nesterov
        )
    if name == "adam":
        return keras.optimizers.Adam(learning_rate=learning_rate)
    if name == "adamw":
        return keras.optimizers.AdamW(
            learning_rate=learning_rate, weight_decay=weight_decay
        )
    raise ValueError(
        f"Unknown optimizer {name!r}; expected one of {OPTIMIZERS}."
    )
