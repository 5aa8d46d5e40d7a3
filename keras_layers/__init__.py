"""Keras-serializable layers for compressible image-to-image GANs.

Nothing here imports `tfgancompress` or `training`: these layers stand alone.
"""

from keras_layers.agents import PruningAgent, gumbel_sigmoid, resource_loss
from keras_layers.conv import (
    SelectiveActivationConv2D,
    SuperBatchNormalization,
    SuperConv2D,
    SuperConv2DTranspose,
    SuperInstanceNormalization,
    SuperSeparableConv2D,
)
from keras_layers.gates import ChannelGate, driven_gates, set_keeps
from keras_layers.norm import InstanceNormalization, ReflectionPadding2D
from keras_layers.quant import (
    FakeQuant,
    FakeQuantInstanceNormalization,
    FakeQuantWeights,
)
from keras_layers.subpixel import SubPixelConv2D

__all__ = [
    "ChannelGate",
    "FakeQuant",
    "FakeQuantInstanceNormalization",
    "FakeQuantWeights",
    "InstanceNormalization",
    "PruningAgent",
    "ReflectionPadding2D",
    "SelectiveActivationConv2D",
    "SubPixelConv2D",
    "SuperBatchNormalization",
    "SuperConv2D",
    "SuperConv2DTranspose",
    "SuperInstanceNormalization",
    "SuperSeparableConv2D",
    "driven_gates",
    "gumbel_sigmoid",
    "resource_loss",
    "set_keeps",
]
