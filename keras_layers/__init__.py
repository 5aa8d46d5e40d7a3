"""Keras-serializable layers for compressible image-to-image GANs.

Nothing here imports `tfgancompress` or `training`: these layers stand alone.
"""

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

__all__ = [
    "ChannelGate",
    "FakeQuant",
    "FakeQuantInstanceNormalization",
    "FakeQuantWeights",
    "InstanceNormalization",
    "ReflectionPadding2D",
    "SelectiveActivationConv2D",
    "SuperBatchNormalization",
    "SuperConv2D",
    "SuperConv2DTranspose",
    "SuperInstanceNormalization",
    "SuperSeparableConv2D",
    "driven_gates",
    "set_keeps",
]
