"""A small convolutional classifier for digits/MNIST-sized images."""

import keras

import mylayers
from models.custom_model import CustomModel
from mylayers import checks


@keras.saving.register_keras_serializable(package="models")
class CNNClassifier(CustomModel):
    """[Conv 3x3 -> activation -> MaxPool 2x2] x N -> `mylayers.Linear` head.

    Built from `mylayers`: the convolutions are `mylayers.Conv2D` ("same"
    padding) and the dense layers `mylayers.Linear`, as in `MLPClassifier`.
    Pooling, flattening and dropout, which hold no weights, are Keras's own.
    A Functional `CustomModel`; `get_config` holds only the arguments below,
    so the model is rebuilt from them.

    Args:
        input_shape: Shape of one image, `(height, width, channels)`.
        num_classes: Number of output logits.
        filters: Output channels of each convolution block; each block
            halves the height and width (rounding down).
        hidden_units: Sizes of the dense layers after the convolutions.
        activation: Activation of the convolutions and dense layers.
        dropout: Dropout rate after each dense hidden layer, in [0, 1).
        **kwargs: `keras.Model` arguments (`name`, ...).
    """

    def __init__(
        self,
        input_shape,
        num_classes,
        filters=(32, 64),
        hidden_units=(128,),
        activation="relu",
        dropout=0.0,
        **kwargs,
    ):
        checks.positive_ints(self, "filters", filters)
        checks.positive_ints(self, "hidden_units", hidden_units)
        checks.dropout_rate(self, dropout)
        input_shape = tuple(input_shape)
        if len(input_shape) != 3 or min(input_shape[:2]) < 2 ** len(filters):
            raise ValueError(
                "CNNClassifier expected an image shape (height, width, "
                f"channels) of at least {2 ** len(filters)} pixels a side for "
                f"{len(filters)} blocks. Received: input_shape={input_shape}"
            )
        inputs = keras.Input(shape=input_shape, name="image")
        x = inputs
        for channels in filters:
            x = mylayers.Conv2D(
                channels, 3, padding="same", activation=activation
            )(x)
            x = keras.layers.MaxPooling2D(2)(x)
        x = keras.layers.Flatten()(x)
        for units in hidden_units:
            x = mylayers.Linear(units, activation=activation)(x)
            if dropout:
                x = keras.layers.Dropout(dropout)(x)
        outputs = mylayers.Linear(num_classes, name="logits")(x)
        kwargs.setdefault("name", "cnn_classifier")
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)
        self.input_shape_ = input_shape
        self.num_classes = num_classes
        self.filters = tuple(filters)
        self.hidden_units = tuple(hidden_units)
        self.activation = activation
        self.dropout = dropout

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "input_shape": self.input_shape_,
            "num_classes": self.num_classes,
            "filters": self.filters,
            "hidden_units": self.hidden_units,
            "activation": self.activation,
            "dropout": self.dropout,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)
