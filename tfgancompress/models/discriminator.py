"""The pix2pix/CycleGAN PatchGAN discriminator, plain or GCC-gated.

Layers (i = 1..n_layers+1, every convolution 4x4 with PyTorch `padding=1`,
made explicit by a `ZeroPadding2D`):

- `layer1_pad`, `layer1_conv`, `layer1_lrelu`
- `layer{i}_pad`, `layer{i}_conv`, `layer{i}_norm`, `layer{i}_lrelu` (i > 1)
- `out_pad`, `out_conv` (one channel of patch logits)

Layers 1..n_layers have stride 2, layer n_layers+1 and the output stride 1.
With `gated` set to a `ChannelGate` mode (`True` means `"binary"`), each
`layer{i}_conv` is a `SelectiveActivationConv2D` (its sub-layers `.conv`,
`.norm`, `.gate`, the gate named `layer{i}_conv_gate` by
`tfgancompress.surgery.gate_layers`) and there is no separate
`layer{i}_norm`. `gated="binary"` is GCC's selective-activation
discriminator; other modes let other methods prune the discriminator with
their own gates. `tfgancompress.slim` turns any of them into the plain
discriminator with the switched-off channels removed.
"""

from __future__ import annotations

import keras

from keras_layers import SelectiveActivationConv2D
from tfgancompress.models.layers import (
    GATE_MODES,
    NORMS,
    check_choice,
    input_layer,
    normalization,
    weight_initializer,
)


def _gate_mode(gated) -> str | None:
    """The `ChannelGate` mode `gated` asks for (`True`: binary), or `None`."""
    if gated is None or gated is False:
        return None
    if gated is True:
        return "binary"
    check_choice("gated", gated, (None, False, True, *GATE_MODES))
    return gated


def _unit(x, i: int, filters: int, strides: int, norm, bias: bool, gate_mode):
    x = keras.layers.ZeroPadding2D(1, name=f"layer{i}_pad")(x)
    unit_norm = norm if i > 1 else None
    if gate_mode is not None:
        x = SelectiveActivationConv2D(
            filters,
            4,
            strides=strides,
            use_bias=bias or i == 1,
            norm=unit_norm,
            gate_mode=gate_mode,
            kernel_initializer=weight_initializer(),
            name=f"layer{i}_conv",
        )(x)
    else:
        x = keras.layers.Conv2D(
            filters,
            4,
            strides=strides,
            use_bias=bias or i == 1,
            kernel_initializer=weight_initializer(),
            name=f"layer{i}_conv",
        )(x)
        if unit_norm is not None:
            x = normalization(norm, norm == "batch", f"layer{i}_norm")(x)
    return keras.layers.LeakyReLU(0.2, name=f"layer{i}_lrelu")(x)


def patchgan_discriminator(
    ndf: int = 64,
    n_layers: int = 3,
    input_channels: int = 3,
    conditional: bool = False,
    norm: str = "instance",
    gated: bool | str | None = False,
    input_shape: tuple | None = None,
    name: str = "patchgan_discriminator",
) -> keras.Model:
    """pix2pix's `NLayerDiscriminator` (70x70 PatchGAN for `n_layers=3`).

    Conv4x4 s2 (ndf) -> LReLU 0.2; then `n_layers - 1` Conv4x4 s2 -> Norm ->
    LReLU with widths `ndf * min(2**n, 8)`; Conv4x4 s1 -> Norm -> LReLU;
    Conv4x4 s1 -> 1 channel of logits. As in PyTorch, convolutions followed
    by a batch norm have no bias, instance norms are non-affine and batch
    norms affine. Defaults: 2,764,737 parameters.

    Args:
        ndf: Width of the first layer (64 in CycleGAN, 128 in GAN
            Compression's pix2pix).
        n_layers: Number of stride-2 convolutions.
        input_channels: Channels of one image.
        conditional: If `True` the input is `concat(x, y)` with
            `2 * input_channels` channels (pix2pix).
        norm: `"instance"` or `"batch"`.
        gated: `False`/`None` for a plain discriminator, or the
            `ChannelGate` mode of a gate after each conv(+norm) of layers
            1..n_layers+1 (`SelectiveActivationConv2D` units): `"binary"`
            (GCC's selective activation, also `True`), `"dmad"`, `"scale"`
            or `"gumbel"`.
        input_shape: `(height, width, channels)`; defaults to
            `(None, None, channels)`.
        name: Model name.

    Returns:
        A flat functional `keras.Model` mapping images to patch logits.

    Raises:
        ValueError: On an unknown `norm` or `gated` mode, `n_layers < 1` or
            a bad `input_shape`.

    Example:

    >>> model = patchgan_discriminator(ndf=8)
    >>> model(keras.ops.zeros((1, 64, 64, 3))).shape
    TensorShape([1, 6, 6, 1])
    """
    check_choice("norm", norm, NORMS)
    gate_mode = _gate_mode(gated)
    if n_layers < 1:
        raise ValueError(f"n_layers must be >= 1, got {n_layers}.")
    if ndf < 1:
        raise ValueError(f"ndf must be >= 1, got {ndf}.")
    bias = norm == "instance"
    channels = 2 * input_channels if conditional else input_channels
    inputs = input_layer(input_shape, channels)
    x = inputs
    for i in range(1, n_layers + 2):
        filters = ndf * min(2 ** (i - 1), 8)
        strides = 2 if i <= n_layers else 1
        x = _unit(x, i, filters, strides, norm, bias, gate_mode)
    x = keras.layers.ZeroPadding2D(1, name="out_pad")(x)
    outputs = keras.layers.Conv2D(
        1, 4, kernel_initializer=weight_initializer(), name="out_conv"
    )(x)
    return keras.Model(inputs, outputs, name=name)
