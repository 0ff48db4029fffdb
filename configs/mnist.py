"""MNIST (28x28 grey digits) + MLP from `mylayers`.

Launch:
  python train.py --config configs/mnist.py --workdir runs/mnist

Needs the TFDS catalog dataset `mnist`: it is downloaded on first use,
which needs network access. Offline, prepare it elsewhere with
`tfds build mnist --data_dir=DIR`, copy DIR here and add
`--config.data_dir=DIR`; the trainer says so if the dataset is missing.
Shared settings: `configs/catalog.py`.
"""

from configs import catalog


def get_config():
    return catalog.get_config("mnist", num_epochs=10)
