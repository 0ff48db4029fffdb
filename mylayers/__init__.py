"""Custom Keras layers: forward-only ones, and ones with custom gradients."""

from mylayers.linear import Linear
from mylayers.manual_linear import ManualLinear

__all__ = ["Linear", "ManualLinear"]
