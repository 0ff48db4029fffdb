"""This project's experiment: its own model on its own CSV.

  python train.py --config examples/my_project/config.py \
    --workdir runs/my_project

Everything not set here is `configs/default.py`'s. This folder is
importable while the config is loaded, so `my_models` needs no install.
"""

import os

from configs import default

HERE = os.path.dirname(os.path.abspath(__file__))


def get_config():
    config = default.get_config()

    # data: numeric columns and a `label` column (make_data.py wrote it);
    # 10% of each class is held out for validation and 10% for test.
    config.dataset = "csv:" + os.path.join(HERE, "moons.csv")
    config.label_column = "label"
    config.max_shift = 0  # no images to shift
    config.batch_size = 32

    # model: my_models.MoonsNet's arguments, besides input_shape and
    # num_classes, which come from the data.
    config.model = {
        "name": "my_models:MoonsNet",
        "bumps": 16,
        "hidden_units": 32,
    }

    # optimizer: 10 steps an epoch; 40 epochs reach 100% validation
    # accuracy on these moons (seed 0).
    config.learning_rate = 1e-2
    config.warmup_steps = 20
    config.num_epochs = 40
    config.val_every_epochs = 5
    config.steps_per_loop = 10
    return config
