"""Reference image-to-image networks and their PyTorch checkpoint import.

Every builder returns a flat functional `keras.Model` with stable layer names
(see each module's docstring), so that gates, weights and distillation taps
are addressed by name.
"""

from tfgancompress.models import supernet
from tfgancompress.models.discriminator import patchgan_discriminator
from tfgancompress.models.layers import SuperTorchConv2DTranspose, TorchConv2DTranspose
from tfgancompress.models.pth import (
    CheckpointError,
    UnsafeCheckpointError,
    load_pytorch_state_dict,
)
from tfgancompress.models.pytorch import (
    infer_architecture,
    load_pytorch_generator,
    pretrained,
)
from tfgancompress.models.resnet import mobile_resnet_generator, resnet_generator
from tfgancompress.models.skip import (
    fit_colour_map,
    gaussian_kernel,
    with_colour_skip,
    with_detail_skip,
)
from tfgancompress.models.taps import tap_names, with_taps
from tfgancompress.models.unet import unet_generator

__all__ = [
    "CheckpointError",
    "SuperTorchConv2DTranspose",
    "TorchConv2DTranspose",
    "UnsafeCheckpointError",
    "fit_colour_map",
    "gaussian_kernel",
    "infer_architecture",
    "load_pytorch_generator",
    "load_pytorch_state_dict",
    "mobile_resnet_generator",
    "patchgan_discriminator",
    "pretrained",
    "resnet_generator",
    "supernet",
    "tap_names",
    "unet_generator",
    "with_colour_skip",
    "with_detail_skip",
    "with_taps",
]
