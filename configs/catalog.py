"""What the TFDS catalog experiments (mnist, fashion_mnist, cifar10) share.

Each of those config files names its dataset and run length and takes the
rest from here; the rest comes from `configs/default.py`.
"""

from configs import default


def get_config(dataset, num_epochs):
    config = default.get_config()

    # data
    config.dataset = dataset
    config.batch_size = 128
    config.shuffle_buffer = 10_000  # of 50-60k examples: enough mixing
    config.max_shift = 2  # a few pixels of play on 28-32 pixel images

    # model
    config.model.hidden_units = (1024, 1024)
    config.model.dropout = 0.2

    # optimizer
    config.learning_rate = 1e-3
    config.warmup_steps = 500
    # Accuracy not yet measured: the development machine has no network.
    config.num_epochs = num_epochs

    # training step
    # Skip NaN/Inf steps, stop after 10 in a row (~2% of a step at this size).
    config.max_consecutive_non_finite = 10

    # training loop
    config.steps_per_loop = 100
    config.val_every_epochs = 1

    return config
