"""Models: `CustomModel` and architectures built from `mylayers`."""

# First, before anything here loads TensorFlow.
from mylayers import _onednn  # noqa: F401, I001
from models import sampling
from models.cnn import CNNClassifier
from models.custom_model import CustomModel
from models.metrics import BitsPerCharacter
from models.mlp import MLPClassifier
from models.transformer_lm import TransformerLM

# Names the trainer's `config.model.name` accepts.
ARCHITECTURES = {
    "mlp": MLPClassifier,
    "cnn": CNNClassifier,
    "transformer_lm": TransformerLM,
}

__all__ = [
    "ARCHITECTURES",
    "BitsPerCharacter",
    "CNNClassifier",
    "CustomModel",
    "MLPClassifier",
    "TransformerLM",
    "sampling",
]
