"""This project's model: what `config.model.name = "my_models:MoonsNet"`
builds."""

import keras
from my_layers import RadialBasis, Swish

import models
import mylayers


@keras.saving.register_keras_serializable(package="my_project")
class MoonsNet(models.CustomModel):
    """Normalization -> RadialBasis -> Linear -> Swish -> Linear logits.

    Called as the trainer calls every architecture: `input_shape` and
    `num_classes` from the dataset, then `config.model`'s other fields.
    `normalization=(mean, variance)` is the training split's feature
    statistics, which the trainer passes to an architecture that takes
    it: the model then scales raw CSV rows itself.
    """

    def __init__(
        self,
        input_shape,
        num_classes,
        bumps=16,
        hidden_units=32,
        normalization=None,
        **kwargs,
    ):
        inputs = keras.Input(shape=tuple(input_shape))
        x = inputs
        if normalization is not None:
            mean, variance = normalization
            x = keras.layers.Normalization(
                mean=list(mean), variance=list(variance)
            )(x)
        x = RadialBasis(bumps)(x)
        x = Swish()(mylayers.Linear(hidden_units)(x))
        outputs = mylayers.Linear(num_classes, name="logits")(x)
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)
        self.config = {
            "input_shape": tuple(input_shape),
            "num_classes": num_classes,
            "bumps": bumps,
            "hidden_units": hidden_units,
            "normalization": normalization,
        }

    def get_config(self):
        return {"name": self.name, "trainable": self.trainable, **self.config}

    @classmethod
    def from_config(cls, config):
        return cls(**config)
