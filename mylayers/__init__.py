"""Custom Keras layers: forward-only ones, and ones with custom gradients."""

# First, before anything here loads TensorFlow.
from mylayers import _onednn  # noqa: F401, I001
from mylayers.causal_self_attention import CausalSelfAttention
from mylayers.clip_gradient import ClipGradient
from mylayers.conv2d import Conv2D
from mylayers.examples import Example
from mylayers.gelu import gelu
from mylayers.gradcheck import GradcheckError, gradcheck
from mylayers.gradient_checkpoint import GradientCheckpoint
from mylayers.gradient_reversal import GradientReversal
from mylayers.linear import Linear
from mylayers.manual_linear import ManualLinear
from mylayers.mlp_block import MLPBlock
from mylayers.numpy_bridge import numpy_op
from mylayers.numpy_linear import NumpyLinear
from mylayers.rms_norm import RMSNorm
from mylayers.stable_softplus import StableSoftplus
from mylayers.straight_through_quantize import StraightThroughQuantize
from mylayers.tiled_causal_self_attention import TiledCausalSelfAttention
from mylayers.token_embedding import TokenEmbedding
from mylayers.transformer_block import TransformerBlock

__all__ = [
    "CausalSelfAttention",
    "ClipGradient",
    "Conv2D",
    "Example",
    "GradcheckError",
    "GradientCheckpoint",
    "GradientReversal",
    "Linear",
    "MLPBlock",
    "ManualLinear",
    "NumpyLinear",
    "RMSNorm",
    "StableSoftplus",
    "StraightThroughQuantize",
    "TiledCausalSelfAttention",
    "TokenEmbedding",
    "TransformerBlock",
    "gelu",
    "gradcheck",
    "numpy_op",
]
