"""The pix2pix U-Net generator, plain or with channel gates.

Units are numbered by depth, 1 the outermost, `num_downs` the innermost;
down unit i and up unit i mirror each other:

- down 1: `down1_pad`, `down1_conv`
- down i (1 < i < num_downs): `down{i}_lrelu`, `down{i}_pad`, `down{i}_conv`,
  `down{i}_norm`, [`down{i}_gate`]
- down num_downs (innermost): `down{n}_lrelu`, `down{n}_pad`, `down{n}_conv`
- up i (i > 1): `up{i}_relu`, `up{i}_conv`, `up{i}_norm`, [`up{i}_gate`],
  [`up{i}_dropout`]; then `skip{i-1}` concatenates `[down{i-1} output,
  up{i} output]` (PyTorch's `torch.cat([x, model(x)], 1)`)
- up 1: `up1_relu`, `up1_conv`, `out_tanh`

Down-sampling is ZeroPadding2D(1) + Conv4x4 stride 2 (PyTorch `padding=1`);
up-sampling is `Conv2DTranspose(4, 2, padding="same")`, which equals PyTorch's
`ConvTranspose2d(k4, s2, padding=1)` exactly.
"""

from __future__ import annotations

import keras

from tfgancompress.models.layers import (
    GATE_MODES,
    NORMS,
    check_choice,
    input_layer,
    norm_gate,
    weight_initializer,
)


def _widths(ngf: int, num_downs: int) -> list[int]:
    """Output channels of down units 1..num_downs."""
    return [ngf * min(2**i, 8) for i in range(num_downs)]


def _check_args(ngf, num_downs, norm, gated, input_shape) -> None:
    if ngf < 1:
        raise ValueError(f"ngf must be >= 1, got {ngf}.")
    if num_downs < 5:
        raise ValueError(f"num_downs must be >= 5 (pix2pix U-Net), got {num_downs}.")
    check_choice("norm", norm, NORMS)
    check_choice("gated", gated, (None, *GATE_MODES))
    factor = 2**num_downs
    for size in (input_shape or (None, None))[:2]:
        if size is not None and size % factor:
            raise ValueError(
                f"A U-Net with num_downs={num_downs} needs height and width "
                f"divisible by {factor}, got input_shape {input_shape}."
            )


def _down(x, i: int, filters: int, num_downs: int, norm, gated, bias: bool):
    if i > 1:
        x = keras.layers.LeakyReLU(0.2, name=f"down{i}_lrelu")(x)
    x = keras.layers.ZeroPadding2D(1, name=f"down{i}_pad")(x)
    x = keras.layers.Conv2D(
        filters,
        4,
        strides=2,
        use_bias=bias,
        kernel_initializer=weight_initializer(),
        name=f"down{i}_conv",
    )(x)
    if 1 < i < num_downs:
        x = norm_gate(x, norm, not bias, gated, f"down{i}")
    return x


def _up(x, i: int, filters: int, norm, gated, bias, dropout: bool):
    x = keras.layers.ReLU(name=f"up{i}_relu")(x)
    x = keras.layers.Conv2DTranspose(
        filters,
        4,
        strides=2,
        padding="same",
        use_bias=bias or i == 1,
        kernel_initializer=weight_initializer(),
        name=f"up{i}_conv",
    )(x)
    if i == 1:
        return keras.layers.Activation("tanh", name="out_tanh")(x)
    x = norm_gate(x, norm, not bias, gated, f"up{i}")
    if dropout:
        x = keras.layers.Dropout(0.5, name=f"up{i}_dropout")(x)
    return x


def unet_generator(
    ngf: int = 64,
    num_downs: int = 8,
    input_channels: int = 3,
    output_channels: int = 3,
    norm: str = "batch",
    use_dropout: bool = False,
    gated: str | None = None,
    input_shape: tuple | None = (256, 256, 3),
    name: str = "unet_generator",
) -> keras.Model:
    """pix2pix's `UnetGenerator` (`unet_256` by default).

    `num_downs` Conv4x4 stride-2 down-samplings (LeakyReLU 0.2 before each but
    the first, a norm after each but the first and the innermost), then the
    mirrored ConvTranspose4x4 stride-2 up-samplings (ReLU before, norm after
    each but the outermost, which ends in tanh), with skip concatenations.
    Widths: ngf, 2ngf, 4ngf, then 8ngf. As in PyTorch, `norm="batch"` is
    affine and its convolutions have no bias (except the output one);
    `norm="instance"` is non-affine and its convolutions have a bias. With
    the defaults: 54,413,955 trainable parameters, 18.14 G MACs at 256x256
    (torchprofile rule; papers quote about 18.6 G).

    Args:
        ngf: Width of the outermost down-sampling.
        num_downs: Number of down-samplings (>= 5); the input side must be
            divisible by `2**num_downs`.
        input_channels: Channels of the input image.
        output_channels: Channels of the output image.
        norm: `"batch"` or `"instance"`.
        use_dropout: Dropout 0.5 after the norms of up units 5..num_downs-1.
        gated: `None` or a `ChannelGate` mode: a gate after every norm.
        input_shape: `(height, width, input_channels)`, or `None` for
            `(None, None, input_channels)`.
        name: Model name.

    Returns:
        A flat functional `keras.Model`.

    Raises:
        ValueError: On an unknown `norm`/`gated`, `num_downs < 5` or an input
            size not divisible by `2**num_downs`.

    Example:

    >>> model = unet_generator(ngf=8, num_downs=5, input_shape=(32, 32, 3))
    >>> model(keras.ops.zeros((1, 32, 32, 3))).shape
    TensorShape([1, 32, 32, 3])
    """
    _check_args(ngf, num_downs, norm, gated, input_shape)
    bias = norm == "instance"
    widths = _widths(ngf, num_downs)
    inputs = input_layer(input_shape, input_channels)

    downs = []
    x = inputs
    for i, filters in enumerate(widths, start=1):
        x = _down(x, i, filters, num_downs, norm, gated, bias)
        downs.append(x)

    for i in range(num_downs, 0, -1):
        filters = widths[i - 2] if i > 1 else output_channels
        dropout = use_dropout and 5 <= i < num_downs
        x = _up(x, i, filters, norm, gated, bias, dropout)
        if i > 1:
            x = keras.layers.Concatenate(name=f"skip{i - 1}")([downs[i - 2], x])
    return keras.Model(inputs, x, name=name)
