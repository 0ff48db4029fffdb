"""CIFAR-10 (32x32 colour objects) + MLP from `mylayers`.

Launch:
  python train.py --config configs/cifar10.py --workdir runs/cifar10

Needs the TFDS catalog dataset `cifar10`: it is downloaded on first use,
which needs network access. Offline, prepare it elsewhere with
`tfds build cifar10 --data_dir=DIR`, copy DIR here and add
`--config.data_dir=DIR`; the trainer says so if the dataset is missing.
Shared settings: `configs/catalog.py`.
An MLP is a weak model for CIFAR-10: use this to exercise the trainer.
"""

from configs import catalog


def get_config():
    return catalog.get_config("cifar10", num_epochs=30)
