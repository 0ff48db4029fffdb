"""Models: `CustomModel` and architectures built from `mylayers`."""

from models.custom_model import CustomModel
from models.mlp import MLPClassifier

# Names the trainer's `config.model.name` accepts.
ARCHITECTURES = {"mlp": MLPClassifier}

__all__ = ["ARCHITECTURES", "CustomModel", "MLPClassifier"]
