"""A multilayer perceptron classifier built from `mylayers`."""

import keras

import mylayers
from models.custom_model import CustomModel
from mylayers import checks


@keras.saving.register_keras_serializable(package="models")
class MLPClassifier(CustomModel):
    """[Normalization ->] Flatten -> [Linear -> activation -> Dropout] x N
    -> Linear logits.

    A Functional `CustomModel`, so `summary()`, plotting and `.keras` saving
    work as for any Functional model; `get_config` holds only the arguments
    below, so the model is rebuilt from them.

    Args:
        input_shape: Shape of one example, without the batch axis.
        num_classes: Number of output logits.
        hidden_units: Sizes of the hidden layers.
        activation: Activation of the hidden layers.
        dropout: Dropout rate after each hidden layer, in [0, 1).
        normalization: `(mean, variance)`, one value per input feature
            (e.g. of the training split): a `keras.layers.Normalization`
            scales the inputs with them first, so the model takes raw
            rows. None: inputs as they come.
        **kwargs: `keras.Model` arguments (`name`, ...).
    """

    def __init__(
        self,
        input_shape,
        num_classes,
        hidden_units=(256, 256),
        activation="relu",
        dropout=0.0,
        normalization=None,
        **kwargs,
    ):
        checks.positive_ints(self, "hidden_units", hidden_units)
        checks.dropout_rate(self, dropout)
        inputs = keras.Input(shape=tuple(input_shape), name="image")
        x = inputs
        if normalization is not None:
            mean, variance = normalization
            x = keras.layers.Normalization(
                mean=list(mean), variance=list(variance), name="normalization"
            )(x)
        x = keras.layers.Flatten()(x)
        for units in hidden_units:
            x = mylayers.Linear(units, activation=activation)(x)
            if dropout:
                x = keras.layers.Dropout(dropout)(x)
        outputs = mylayers.Linear(num_classes, name="logits")(x)
        kwargs.setdefault("name", "mlp_classifier")
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)
        self.input_shape_ = tuple(input_shape)
        self.num_classes = num_classes
        self.hidden_units = tuple(hidden_units)
        self.activation = activation
        self.dropout = dropout
        self.normalization = (
            None
            if normalization is None
            else tuple(tuple(float(v) for v in part) for part in normalization)
        )

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "input_shape": self.input_shape_,
            "num_classes": self.num_classes,
            "hidden_units": self.hidden_units,
            "activation": self.activation,
            "dropout": self.dropout,
            "normalization": self.normalization,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)
