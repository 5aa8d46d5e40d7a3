"""Building blocks shared by the model zoo: PyTorch-exact layers and units.

`TorchConv2DTranspose` is a `keras.layers.Conv2DTranspose` with PyTorch's
`ConvTranspose2d(padding=p, output_padding=op)` semantics. Keras'
`padding="same"` is shifted one pixel against PyTorch for kernel 3, stride 2
(TF pads "SAME" asymmetrically), so this layer runs the transposed
convolution with `padding="valid"` and crops `p` pixels at the start and
`p - op` at the end of each spatial axis. Its output is exactly PyTorch's
(`2H x 2W` for `k3 s2 p1 op1`), so profilers count its MACs on that grid.
`SuperTorchConv2DTranspose` is its once-for-all supernet version (a
`keras_layers.SuperConv2DTranspose` with the same PyTorch semantics).
"""

from __future__ import annotations

import keras

from keras_layers import ChannelGate, InstanceNormalization, SuperConv2DTranspose

NORMS = ("instance", "batch")
GATE_MODES = ("binary", "dmad", "scale", "gumbel")


@keras.saving.register_keras_serializable(package="tfgancompress")
class TorchConv2DTranspose(keras.layers.Conv2DTranspose):
    """`Conv2DTranspose` with PyTorch `ConvTranspose2d` padding semantics.

    The output size along each spatial axis is
    `(size - 1) * strides - 2 * torch_padding + kernel_size + torch_output_padding`,
    and the values are those of PyTorch's layer given the same weights
    (PyTorch weight `(in, out, kh, kw)` is this kernel transposed
    `(2, 3, 1, 0)`).

    Args:
        filters: Number of output channels.
        kernel_size: Int, size of the square window.
        strides: Int, stride of the transposed convolution.
        torch_padding: PyTorch's `padding`: pixels cropped at both ends.
        torch_output_padding: PyTorch's `output_padding`: pixels given back
            at the end; must not exceed `torch_padding`.
        **kwargs: Other `keras.layers.Conv2DTranspose` arguments (`use_bias`,
            `kernel_initializer`, `name`, ...), except `padding` and
            `output_padding`.

    Raises:
        ValueError: If `torch_output_padding` exceeds `torch_padding` or is
            not smaller than `strides`.

    Example:

    >>> layer = TorchConv2DTranspose(8, 3, strides=2, torch_padding=1,
    ...                              torch_output_padding=1)
    >>> layer(keras.ops.ones((1, 16, 16, 4))).shape
    TensorShape([1, 32, 32, 8])
    """

    def __init__(
        self,
        filters: int,
        kernel_size: int | tuple[int, int],
        strides: int | tuple[int, int] = 1,
        torch_padding: int = 0,
        torch_output_padding: int = 0,
        **kwargs,
    ):
        if "padding" in kwargs or "output_padding" in kwargs:
            raise ValueError(
                "TorchConv2DTranspose takes torch_padding/torch_output_padding, "
                f"not padding/output_padding; got {sorted(kwargs)}."
            )
        super().__init__(
            filters, kernel_size, strides=strides, padding="valid", **kwargs
        )
        if not 0 <= torch_output_padding <= torch_padding:
            raise ValueError(
                "TorchConv2DTranspose needs 0 <= torch_output_padding <= "
                f"torch_padding, got {torch_output_padding} and {torch_padding}."
            )
        if torch_output_padding and torch_output_padding >= min(self.strides):
            raise ValueError(
                f"torch_output_padding ({torch_output_padding}) must be smaller "
                f"than strides ({strides}), as in PyTorch."
            )
        self.torch_padding = int(torch_padding)
        self.torch_output_padding = int(torch_output_padding)

    def call(self, inputs):
        outputs = super().call(inputs)
        start = self.torch_padding
        end_crop = self.torch_padding - self.torch_output_padding
        if start == 0 and end_crop == 0:
            return outputs
        stop = -end_crop if end_crop else None
        return outputs[:, start:stop, start:stop, :]

    def compute_output_shape(self, input_shape):
        batch, height, width, _ = super().compute_output_shape(input_shape)
        shrink = 2 * self.torch_padding - self.torch_output_padding
        height = None if height is None else height - shrink
        width = None if width is None else width - shrink
        return (batch, height, width, self.filters)

    def get_config(self):
        config = super().get_config()
        config.pop("padding")
        config.pop("output_padding")
        config.update(
            {
                "torch_padding": self.torch_padding,
                "torch_output_padding": self.torch_output_padding,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="tfgancompress")
class SuperTorchConv2DTranspose(SuperConv2DTranspose, TorchConv2DTranspose):
    """`TorchConv2DTranspose` whose active width is the first k filters.

    The supernet layer of the ResNet generators' up-sampling
    (`ConvTranspose2d(k3, s2, padding=1, output_padding=1)` in PyTorch):
    takes `TorchConv2DTranspose`'s arguments, computes its output, and like
    `keras_layers.SuperConv2DTranspose` keeps all `filters` channels with
    channels `>= k` exactly 0 (`kernel[:, :, :k, :]`, `bias[:k]` active).
    `tfgancompress.slim` rebuilds it as a plain `TorchConv2DTranspose`.

    Attributes:
        active_filters: Non-trainable scalar int32 variable, initially
            `filters`; saved with the weights.

    Call arguments:
        inputs: NHWC tensor.
        active_filters: Optional python int or scalar int tensor that
            overrides the `active_filters` variable for this call.

    Example:

    >>> layer = SuperTorchConv2DTranspose(8, 3, strides=2, torch_padding=1,
    ...                                   torch_output_padding=1)
    >>> y = layer(keras.ops.ones((1, 16, 16, 4)), active_filters=5)
    >>> y.shape, float(keras.ops.max(keras.ops.abs(y[..., 5:])))
    (TensorShape([1, 32, 32, 8]), 0.0)
    """


def weight_initializer() -> keras.initializers.Initializer:
    """pix2pix's N(0, 0.02) kernel initializer; call it once per layer.

    A new initializer per layer takes its seed from Keras' global seed
    (`keras.utils.set_random_seed`) when the layer is made: the same seed
    gives the same weights in every process (a multi-worker run and its
    single-worker reference), and same-shaped layers differ. One instance
    shared by layers and made at import time gives every same-shaped
    kernel the same values, different in every process.
    """
    return keras.initializers.RandomNormal(mean=0.0, stddev=0.02)


def check_choice(name: str, value, choices) -> None:
    """Raises a `ValueError` naming `name` if `value` is not in `choices`."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}.")


def normalization(kind: str, affine: bool, name: str) -> keras.layers.Layer:
    """A PyTorch-compatible norm layer.

    Args:
        kind: `"instance"` (`InstanceNorm2d`) or `"batch"` (`BatchNorm2d`:
            epsilon 1e-5, Keras momentum 0.9 = PyTorch momentum 0.1).
        affine: Whether the norm has a learned scale and offset.
        name: Layer name.

    Returns:
        The norm layer.
    """
    check_choice("norm", kind, NORMS)
    if kind == "instance":
        return InstanceNormalization(center=affine, scale=affine, name=name)
    return keras.layers.BatchNormalization(
        epsilon=1e-5, momentum=0.9, center=affine, scale=affine, name=name
    )


def norm_gate(
    x, kind: str, affine: bool, gated: str | None, prefix: str, suffix: str = ""
):
    """`Norm -> [ChannelGate]` named `{prefix}_norm{suffix}`, `{prefix}_gate{suffix}`.

    A `"scale"` gate is the affine part of its norm (GAN Slimming), so the
    norm in front of it is non-affine.
    """
    if gated is None:
        return normalization(kind, affine, f"{prefix}_norm{suffix}")(x)
    x = normalization(kind, affine and gated != "scale", f"{prefix}_norm{suffix}")(x)
    return ChannelGate(mode=gated, name=f"{prefix}_gate{suffix}")(x)


def input_layer(input_shape, channels: int, name: str = "image"):
    """A `keras.Input` of NHWC images with `channels` channels.

    Raises:
        ValueError: If `input_shape` is not `(height, width, channels)`.
    """
    shape = (None, None, channels) if input_shape is None else tuple(input_shape)
    if len(shape) != 3 or shape[-1] != channels:
        raise ValueError(
            f"input_shape must be (height, width, {channels}), got {input_shape}."
        )
    return keras.Input(shape=shape, name=name)
