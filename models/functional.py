"""`CustomModel(inputs, outputs)`: a Functional model of a subclass,
without Keras rewriting the subclass for good.

Keras makes `keras.Model(inputs, outputs)` called on a subclass Functional
by rewriting the `__bases__` of every class up to `keras.Model`, in place
(`keras.Model.__init__` calls `inject_functional_model_class` when its
arguments are inputs and outputs; Keras 3.15): after one
Functional `CustomModel`, every later subclassed one (`MLPClassifier`,
a user's model) is Functional too, and breaks. `CustomModel.__init__`
builds Functional instances from a twin class instead, made here, and
leaves the class itself untouched. Nothing in the training step depends
on this: it is apart from `custom_model.py` so the step reads alone.
"""

import functools

import keras


def is_functional_call(args, kwargs):
    """Keras's rule for `Model(inputs, outputs)`-style arguments."""
    return (
        len(args) == 2
        or (len(args) == 1 and "outputs" in kwargs)
        or ("inputs" in kwargs and "outputs" in kwargs)
    )


@functools.cache
def functional_base():
    """Keras's Functional model class (private, so found through a model)."""
    tensor = keras.Input((1,))
    return type(keras.Model(tensor, tensor))


@functools.cache
def functional_twin(cls):
    """`cls` with Keras's Functional class mixed in, named and saved as
    `cls` is."""
    twin = type(
        cls.__name__,
        (cls, functional_base()),
        {"__module__": cls.__module__, "__qualname__": cls.__qualname__},
    )
    package, _, name = keras.saving.get_registered_name(cls).rpartition(">")
    if package:
        keras.saving.register_keras_serializable(package, name)(twin)
    return twin


def init_functional_or_subclassed(model, cls, args, kwargs):
    """`keras.Model.__init__` for `model`, an instance of `cls`: a
    Functional model when called with inputs and outputs, through the twin;
    otherwise the subclass as it is."""
    if not is_functional_call(args, kwargs):
        super(cls, model).__init__(*args, **kwargs)
        return
    base = functional_base()
    if not isinstance(model, base):
        model.__class__ = functional_twin(type(model))
    base.__init__(model, *args, **kwargs)
