"""Models: `CustomModel` and architectures built from `mylayers`."""

from models.cnn import CNNClassifier
from models.custom_model import CustomModel
from models.mlp import MLPClassifier

# Names the trainer's `config.model.name` accepts.
ARCHITECTURES = {"mlp": MLPClassifier, "cnn": CNNClassifier}

__all__ = ["ARCHITECTURES", "CNNClassifier", "CustomModel", "MLPClassifier"]
