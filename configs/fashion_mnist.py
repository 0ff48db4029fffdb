"""Fashion-MNIST (28x28 grey clothing) + MLP from `mylayers`.

Launch:
  python train.py --config configs/fashion_mnist.py --workdir runs/fashion_mnist

Needs the TFDS catalog dataset `fashion_mnist`: it is downloaded on first use,
which needs network access. Offline, prepare it elsewhere with
`tfds build fashion_mnist --data_dir=DIR`, copy DIR here and add
`--config.data_dir=DIR`; the trainer says so if the dataset is missing.
Shared settings: `configs/catalog.py`.
"""

from configs import catalog


def get_config():
    return catalog.get_config("fashion_mnist", num_epochs=20)
