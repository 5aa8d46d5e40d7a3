"""Sub-pixel convolution: a convolution on the input grid, then depth-to-space."""

from __future__ import annotations

import keras
from keras import ops


def _pair(value, name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or any(int(v) != v or v < 0 for v in pair):
        raise ValueError(f"{name} must be a non-negative int or pair, got {value!r}.")
    return int(pair[0]), int(pair[1])


@keras.saving.register_keras_serializable(package="tfgancompress")
class SubPixelConv2D(keras.layers.Layer):
    """Up-sampling by a convolution to `block_size**2 * filters` channels.

    The input is zero-padded by `padding`, optionally rearranged by
    space-to-depth (`input_block_size`), convolved with stride 1 to
    `block_size**2 * filters` channels, and rearranged by depth-to-space
    (DCR order: channel `(a * block_size + b) * filters + c` goes to output
    pixel `(block_size * i + a, block_size * j + b)`, channel `c`).

    `tfgancompress.lowering` builds these from other layers, computing the
    same function with ops XNNPACK runs faster: any transposed convolution
    whose output is exactly `block_size` times its input (LiteRT's
    `TRANSPOSE_CONV` becomes `CONV_2D` + `DEPTH_TO_SPACE`), and a
    convolution with few output channels (with `input_block_size ==
    block_size`: a convolution on a coarser grid with more channels).

    Args:
        filters: Output channels (after depth-to-space).
        kernel_size: Int or pair: the window on the input grid.
        block_size: The up-sampling factor.
        padding: Zeros added to the input: an int, a pair `(rows, cols)`
            or `((top, bottom), (left, right))`.
        input_block_size: Space-to-depth block of the padded input (1:
            none); its height and width must be multiples of it.
        use_bias: Whether to add a per-output-channel bias.
        activation: Activation applied last (name or callable).
        **kwargs: Base layer keyword arguments (`name`, `dtype`, ...).

    Example:

    >>> layer = SubPixelConv2D(8, 2, block_size=2, padding=((0, 1), (0, 1)))
    >>> layer(keras.ops.ones((1, 16, 16, 4))).shape
    (1, 32, 32, 8)
    """

    def __init__(
        self,
        filters: int,
        kernel_size,
        block_size: int = 2,
        padding=0,
        input_block_size: int = 1,
        use_bias: bool = True,
        activation=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if min(int(filters), int(block_size), int(input_block_size)) < 1:
            raise ValueError(
                "SubPixelConv2D needs filters, block_size and input_block_size "
                f">= 1, got {filters}, {block_size} and {input_block_size}."
            )
        self.input_block_size = int(input_block_size)
        self.filters = int(filters)
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.block_size = int(block_size)
        rows, cols = (padding, padding) if isinstance(padding, int) else padding
        self.padding = (_pair(rows, "padding"), _pair(cols, "padding"))
        self.use_bias = bool(use_bias)
        self.activation = keras.activations.get(activation)

    def build(self, input_shape):
        if len(input_shape) != 4 or input_shape[-1] is None:
            raise ValueError(
                "SubPixelConv2D expects NHWC input with known channels, got "
                f"shape {input_shape}."
            )
        for size, pads in zip(input_shape[1:3], self.padding, strict=True):
            if size is not None and (size + sum(pads)) % self.input_block_size:
                raise ValueError(
                    f"SubPixelConv2D with input_block_size={self.input_block_size} "
                    f"needs padded height and width divisible by it; got input "
                    f"shape {input_shape} padded by {self.padding}."
                )
        channels = self.filters * self.block_size**2
        inputs = input_shape[-1] * self.input_block_size**2
        self.kernel = self.add_weight(
            shape=(*self.kernel_size, inputs, channels), name="kernel"
        )
        self.bias = (
            self.add_weight(shape=(channels,), initializer="zeros", name="bias")
            if self.use_bias
            else None
        )

    def _same_padding(self) -> bool:
        """Whether `padding` is what stride-1 "same" convolution adds."""
        return self.input_block_size == 1 and all(
            pads == ((size - 1) // 2, size // 2)
            for pads, size in zip(self.padding, self.kernel_size, strict=True)
        )

    def call(self, inputs):
        if self._same_padding():
            x = ops.conv(inputs, self.kernel, padding="same")
        else:
            x = inputs
            if any(any(pads) for pads in self.padding):
                x = ops.pad(x, ((0, 0), *self.padding, (0, 0)))
            if self.input_block_size > 1:
                x = ops.space_to_depth(x, self.input_block_size)
            x = ops.conv(x, self.kernel, padding="valid")
        if self.use_bias:
            x = x + self.bias
        x = ops.depth_to_space(x, self.block_size, data_format="channels_last")
        return self.activation(x)

    def compute_output_shape(self, input_shape):
        batch, height, width, _ = input_shape
        sizes = []
        for size, pads, kernel in zip(
            (height, width), self.padding, self.kernel_size, strict=True
        ):
            if size is not None:
                size = (size + sum(pads)) // self.input_block_size
                size = (size - kernel + 1) * self.block_size
            sizes.append(size)
        return (batch, *sizes, self.filters)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "kernel_size": self.kernel_size,
                "block_size": self.block_size,
                "padding": self.padding,
                "input_block_size": self.input_block_size,
                "use_bias": self.use_bias,
                "activation": keras.activations.serialize(self.activation),
            }
        )
        return config
