"""Reference image-to-image networks and their PyTorch checkpoint import.

Every builder returns a flat functional `keras.Model` with stable layer names
(see each module's docstring), so that gates, weights and distillation taps
are addressed by name.
"""

from tfgancompress.models.layers import TorchConv2DTranspose
from tfgancompress.models.resnet import mobile_resnet_generator, resnet_generator

__all__ = [
    "TorchConv2DTranspose",
    "mobile_resnet_generator",
    "resnet_generator",
]
