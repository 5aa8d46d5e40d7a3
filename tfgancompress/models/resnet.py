"""CycleGAN/pix2pix ResNet generators, plain or with channel gates.

Both builders return flat functional models whose layer names are stable, so
that weights, gates and distillation taps are addressed by name:

- stem: `stem_pad`, `stem_conv`, `stem_norm`, [`stem_gate`], `stem_relu`
- down-sampling i (1, 2): `down{i}_pad`, `down{i}_conv`, `down{i}_norm`,
  [`down{i}_gate`], `down{i}_relu`
- ResBlock b (1..n_blocks): `block{b}_pad1`, `block{b}_conv1`,
  `block{b}_norm1`, [`block{b}_gate1`], `block{b}_relu1`, `block{b}_pad2`,
  `block{b}_conv2`, `block{b}_norm2`, [`block{b}_gate2`], `block{b}_add`
- up-sampling i (1, 2): `up{i}_conv`, `up{i}_norm`, [`up{i}_gate`],
  `up{i}_relu`
- output: `out_pad`, `out_conv`, `out_tanh`

In the mobile generator each ResBlock convolution `block{b}_conv{j}` is the
separable triple `block{b}_dwconv{j}` (depthwise 3x3), `block{b}_dwnorm{j}`
(non-affine instance norm), `block{b}_pwconv{j}` (pointwise 1x1).

Gates (`gated` is a `ChannelGate` mode) follow every norm of the stem,
down1, the ResBlocks' first convolution (inner width), up1 and up2. The
residual stream (down2 and each ResBlock's second norm) is gated too when
`gate_residual` is set, except in `"scale"` mode (GAN Slimming never prunes
the residual stream). A `"scale"` gate carries its norm's affine parameters,
so the norm in front of it is non-affine.
"""

from __future__ import annotations

import keras

from keras_layers import InstanceNormalization, ReflectionPadding2D
from tfgancompress.models.layers import (
    GATE_MODES,
    NORMS,
    TorchConv2DTranspose,
    check_choice,
    input_layer,
    norm_gate,
    weight_initializer,
)


def _check_args(
    ngf: int, n_blocks: int, norm: str, gated: str | None, input_shape
) -> None:
    if ngf < 1:
        raise ValueError(f"ngf must be >= 1, got {ngf}.")
    if n_blocks < 0:
        raise ValueError(f"n_blocks must be >= 0, got {n_blocks}.")
    check_choice("norm", norm, NORMS)
    check_choice("gated", gated, (None, *GATE_MODES))
    for size in (input_shape or (None, None))[:2]:
        if size is not None and size % 4:
            raise ValueError(
                "A ResNet generator halves the image twice and doubles it back, "
                "so height and width must be divisible by 4 (else its output "
                f"differs in size from its input); got input_shape {input_shape}."
            )


def _conv(filters: int, kernel: int, name: str, strides: int = 1, bias: bool = True):
    return keras.layers.Conv2D(
        filters,
        kernel,
        strides=strides,
        use_bias=bias,
        kernel_initializer=weight_initializer(),
        name=name,
    )


def _plain_conv(x, filters: int, prefix: str, index: int, bias: bool):
    x = ReflectionPadding2D(1, name=f"{prefix}_pad{index}")(x)
    return _conv(filters, 3, f"{prefix}_conv{index}", bias=bias)(x)


def _separable_conv(x, filters: int, prefix: str, index: int, bias: bool):
    x = ReflectionPadding2D(1, name=f"{prefix}_pad{index}")(x)
    x = keras.layers.DepthwiseConv2D(
        3,
        use_bias=bias,
        depthwise_initializer=weight_initializer(),
        name=f"{prefix}_dwconv{index}",
    )(x)
    x = InstanceNormalization(name=f"{prefix}_dwnorm{index}")(x)
    return _conv(filters, 1, f"{prefix}_pwconv{index}", bias=bias)(x)


def _build(
    block_conv,
    ngf: int,
    n_blocks: int,
    input_channels: int,
    output_channels: int,
    norm: str,
    affine: bool | None,
    gated: str | None,
    gate_residual: bool,
    input_shape,
    name: str,
) -> keras.Model:
    _check_args(ngf, n_blocks, norm, gated, input_shape)
    bias = norm == "instance"
    affine = norm == "batch" if affine is None else affine
    residual_gate = gated if gate_residual and gated != "scale" else None
    inputs = input_layer(input_shape, input_channels)

    x = ReflectionPadding2D(3, name="stem_pad")(inputs)
    x = _conv(ngf, 7, "stem_conv", bias=bias)(x)
    x = norm_gate(x, norm, affine, gated, "stem")
    x = keras.layers.ReLU(name="stem_relu")(x)
    for i, (filters, gate) in enumerate(
        [(2 * ngf, gated), (4 * ngf, residual_gate)], start=1
    ):
        x = keras.layers.ZeroPadding2D(1, name=f"down{i}_pad")(x)
        x = _conv(filters, 3, f"down{i}_conv", strides=2, bias=bias)(x)
        x = norm_gate(x, norm, affine, gate, f"down{i}")
        x = keras.layers.ReLU(name=f"down{i}_relu")(x)

    width = 4 * ngf
    for b in range(1, n_blocks + 1):
        prefix = f"block{b}"
        y = block_conv(x, width, prefix, 1, bias)
        y = norm_gate(y, norm, affine, gated, prefix, suffix="1")
        y = keras.layers.ReLU(name=f"{prefix}_relu1")(y)
        y = block_conv(y, width, prefix, 2, bias)
        y = norm_gate(y, norm, affine, residual_gate, prefix, suffix="2")
        x = keras.layers.Add(name=f"{prefix}_add")([x, y])

    for i, filters in enumerate([2 * ngf, ngf], start=1):
        x = TorchConv2DTranspose(
            filters,
            3,
            strides=2,
            torch_padding=1,
            torch_output_padding=1,
            use_bias=bias,
            kernel_initializer=weight_initializer(),
            name=f"up{i}_conv",
        )(x)
        x = norm_gate(x, norm, affine, gated, f"up{i}")
        x = keras.layers.ReLU(name=f"up{i}_relu")(x)

    x = ReflectionPadding2D(3, name="out_pad")(x)
    x = _conv(output_channels, 7, "out_conv")(x)
    outputs = keras.layers.Activation("tanh", name="out_tanh")(x)
    return keras.Model(inputs, outputs, name=name)


def resnet_generator(
    ngf: int = 64,
    n_blocks: int = 9,
    input_channels: int = 3,
    output_channels: int = 3,
    norm: str = "instance",
    affine: bool | None = None,
    gated: str | None = None,
    gate_residual: bool = True,
    input_shape: tuple | None = None,
    name: str = "resnet_generator",
) -> keras.Model:
    """The CycleGAN/pix2pix `ResnetGenerator` (`resnet_9blocks` by default).

    ReflectionPad(3) -> Conv7x7(ngf) -> Norm -> ReLU; two Conv3x3 stride-2
    down-samplings (ngf -> 2ngf -> 4ngf); `n_blocks` ResBlocks of width 4ngf;
    two ConvTranspose3x3 stride-2 up-samplings with PyTorch's
    `output_padding=1` semantics; ReflectionPad(3) -> Conv7x7 -> tanh.
    Convolutions carry a bias when `norm="instance"` (as in PyTorch). With
    the defaults: 11,378,179 parameters and 56.8 G MACs at 256x256.

    Args:
        ngf: Width of the stem (the residual width is `4 * ngf`).
        n_blocks: Number of ResBlocks.
        input_channels: Channels of the input image.
        output_channels: Channels of the output image.
        norm: `"instance"` or `"batch"`.
        affine: Whether the norms have learned scale/offset (PyTorch
            `affine=True`); `None` is pix2pix's default: affine for
            `"batch"`, not for `"instance"`.
        gated: `None` or a `ChannelGate` mode (`"binary"`, `"dmad"`,
            `"scale"`, `"gumbel"`): adds gates after the norms (see the
            module docstring for which).
        gate_residual: Also gate the residual stream (not in `"scale"` mode).
        input_shape: `(height, width, input_channels)`, height and width
            divisible by 4; defaults to `(None, None, input_channels)`.
        name: Model name.

    Returns:
        A flat functional `keras.Model` mapping images in [-1, 1] to images
        in [-1, 1].

    Raises:
        ValueError: On an unknown `norm`/`gated`, a non-positive `ngf`, or an
            `input_shape` that does not end in `input_channels` or whose
            height or width is not divisible by 4.

    Example:

    >>> model = resnet_generator(ngf=8, n_blocks=2)
    >>> model(keras.ops.zeros((1, 32, 32, 3))).shape
    TensorShape([1, 32, 32, 3])
    """
    return _build(
        _plain_conv,
        ngf,
        n_blocks,
        input_channels,
        output_channels,
        norm,
        affine,
        gated,
        gate_residual,
        input_shape,
        name,
    )


def mobile_resnet_generator(
    ngf: int = 64,
    n_blocks: int = 9,
    input_channels: int = 3,
    output_channels: int = 3,
    norm: str = "instance",
    affine: bool | None = None,
    gated: str | None = None,
    gate_residual: bool = True,
    input_shape: tuple | None = None,
    name: str = "mobile_resnet_generator",
) -> keras.Model:
    """GAN Compression's `MobileResnetGenerator`.

    The skeleton of `resnet_generator`, with each ResBlock convolution
    replaced by ReflectionPad(1) -> depthwise Conv3x3 -> non-affine
    InstanceNorm -> pointwise Conv1x1 (then the block's own Norm ->
    [gate] -> ReLU). With the defaults: 1,987,075 parameters.

    Args:
        ngf: Width of the stem (the residual width is `4 * ngf`).
        n_blocks: Number of ResBlocks.
        input_channels: Channels of the input image.
        output_channels: Channels of the output image.
        norm: `"instance"` or `"batch"` (the separable convolutions' inner
            norm is always a non-affine instance norm, as in GAN Compression).
        affine: Whether the block norms have learned scale/offset; `None`:
            affine for `"batch"`, not for `"instance"`.
        gated: `None` or a `ChannelGate` mode, as in `resnet_generator`.
        gate_residual: Also gate the residual stream (not in `"scale"` mode).
        input_shape: `(height, width, input_channels)`, height and width
            divisible by 4; defaults to `(None, None, input_channels)`.
        name: Model name.

    Returns:
        A flat functional `keras.Model`.

    Raises:
        ValueError: On an unknown `norm`/`gated` or a bad `input_shape`.

    Example:

    >>> model = mobile_resnet_generator(ngf=8, n_blocks=3)
    >>> model.get_layer("block1_dwconv1").kernel.shape
    TensorShape([3, 3, 32, 1])
    """
    return _build(
        _separable_conv,
        ngf,
        n_blocks,
        input_channels,
        output_channels,
        norm,
        affine,
        gated,
        gate_residual,
        input_shape,
        name,
    )
