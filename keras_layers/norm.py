"""Normalization and padding layers used by image-to-image generators."""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
from keras import ops


@keras.saving.register_keras_serializable(package="tfgancompress")
class InstanceNormalization(keras.layers.Layer):
    """Instance normalization over the spatial axes of NHWC images.

    Matches PyTorch's `InstanceNorm2d`: statistics per sample and channel,
    biased variance, `epsilon` inside the square root, optional affine
    parameters (`affine=True` in PyTorch is `center=True, scale=True` here).

    The statistics are taken in two passes (mean, then the mean squared
    deviation: stable when the mean is large against the spread). The
    normalization and `gamma` are folded into one per-channel factor,
    `(x - mean) * (gamma * rsqrt(var + eps)) + beta`, and `x - mean` is
    computed once, so an exported graph makes four full-size passes
    (subtract, square, multiply, add) instead of five, all of which XNNPACK
    runs in float32 and in int8. (Folding the mean into the shift as well,
    `x * scale + (beta - mean * scale)`, saves one more pass but loses
    precision on near-constant channels, where `x * scale` is large.)

    Args:
        center: If `True`, add a learned per-channel offset `beta`.
        scale: If `True`, multiply by a learned per-channel factor `gamma`.
        epsilon: Small float added to the variance. PyTorch uses `1e-5`.
            Also accepted: one value per channel. `tfgancompress.export`
            uses that for int8 export, where it rescales the channels of the
            convolution in front by `a` and the epsilons by `a**2`: the same
            function, with the channels sharing one int8 range evenly.
        one_pass: Take the statistics as `E[x]` and `E[x**2]` (two
            reductions of `x` and one full-size square), the variance as
            `E[x**2] - E[x]**2`, and normalize as `x * scale + shift`: one
            full-size pass fewer than the default (no `x - mean`). The
            same function up to float rounding, which grows with
            `mean**2 / variance` (cancellation); `tfgancompress.lowering`
            uses it for export.
        statistics_stride: Take the statistics on every
            `statistics_stride`-th pixel of each spatial axis (a 1x1
            depthwise convolution of that stride with unit weights, which
            XNNPACK runs; a strided slice it does not), then normalize
            every pixel: `statistics_stride**2` times less statistics work,
            still per image, but approximate. `1` (the default) is exact.
            Odd only: an even stride samples one phase of a 2x
            up-sampling's output (measured: stride 2 took a trained 1/20
            vintage student from 24.7 to 14.0 dB, stride 3 kept it).
        **kwargs: Base layer keyword arguments (`name`, `dtype`, ...).

    Example:

    >>> x = keras.random.normal((2, 8, 8, 4))
    >>> y = InstanceNormalization(center=False, scale=False)(x)
    >>> y.shape
    TensorShape([2, 8, 8, 4])
    """

    def __init__(
        self,
        center: bool = False,
        scale: bool = False,
        epsilon: float | Sequence[float] = 1e-5,
        one_pass: bool = False,
        statistics_stride: int = 1,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if (
            int(statistics_stride) != statistics_stride
            or statistics_stride < 1
            or statistics_stride % 2 == 0
        ):
            raise ValueError(
                f"{self.__class__.__name__} statistics_stride must be a positive "
                f"odd integer, got {statistics_stride!r} (an even stride sees one "
                "phase of a 2x up-sampling's output)."
            )
        self.one_pass = bool(one_pass)
        self.statistics_stride = int(statistics_stride)
        self.center = center
        self.scale = scale
        if isinstance(epsilon, Sequence | np.ndarray):
            epsilon = [float(e) for e in np.asarray(epsilon).reshape(-1)]
            smallest = min(epsilon, default=0.0)
        else:
            epsilon = smallest = float(epsilon)
        if not smallest > 0.0:
            raise ValueError(
                f"{self.__class__.__name__} epsilon must be positive, got {epsilon}."
            )
        self.epsilon = epsilon
        self.supports_masking = True

    def build(self, input_shape):
        if len(input_shape) != 4:
            raise ValueError(
                f"{self.__class__.__name__} expects NHWC input of rank 4, "
                f"got shape {input_shape}."
            )
        channels = input_shape[-1]
        if channels is None:
            raise ValueError(
                f"{self.__class__.__name__} needs a known channel count, "
                f"got shape {input_shape}."
            )
        if isinstance(self.epsilon, list) and len(self.epsilon) != channels:
            raise ValueError(
                f"{self.__class__.__name__} got {len(self.epsilon)} per-channel "
                f"epsilons for {channels} channels (input shape {input_shape})."
            )
        self.gamma = None
        self.beta = None
        if self.scale:
            self.gamma = self.add_weight(
                shape=(channels,), initializer="ones", name="gamma"
            )
        if self.center:
            self.beta = self.add_weight(
                shape=(channels,), initializer="zeros", name="beta"
            )

    def call(self, inputs):
        x = ops.cast(inputs, "float32")
        if self.one_pass or self.statistics_stride > 1:
            outputs = self._normalize_as_affine(x)
            return ops.cast(outputs, self.compute_dtype)
        mean = self._channel_mean(x)
        # `centered * centered`, not `square(x - mean)`: the converter turns
        # the latter into SQUARED_DIFFERENCE, which XNNPACK has no int8
        # kernel for; the centered values are reused below.
        centered = x - mean
        variance = ops.mean(centered * centered, axis=(1, 2), keepdims=True)
        # The normalization and the affine scale fold into one per-channel
        # factor of shape (batch, 1, 1, channels).
        outputs = centered * self._scale(variance)
        if self.center:
            outputs = outputs + ops.cast(self.beta, "float32")
        return ops.cast(outputs, self.compute_dtype)

    def _scale(self, variance):
        """`gamma * rsqrt(variance + epsilon)`, per sample and channel."""
        scale = ops.rsqrt(variance + ops.convert_to_tensor(self.epsilon, "float32"))
        if self.scale:
            scale = scale * ops.cast(self.gamma, "float32")
        return scale

    def _normalize_as_affine(self, x):
        """`x * scale + shift`, the statistics one-pass or subsampled."""
        if self.statistics_stride > 1:
            ones = ops.ones((1, 1, x.shape[-1], 1), "float32")
            sample = ops.depthwise_conv(
                x, ones, strides=self.statistics_stride, padding="valid"
            )
            mean = ops.mean(sample, axis=(1, 2), keepdims=True)
            centered = sample - mean
            variance = ops.mean(centered * centered, axis=(1, 2), keepdims=True)
        else:
            mean = ops.mean(x, axis=(1, 2), keepdims=True)
            squares = ops.mean(x * x, axis=(1, 2), keepdims=True)
            variance = ops.maximum(squares - mean * mean, 0.0)
        scale = self._scale(variance)
        if self.center:
            shift = ops.cast(self.beta, "float32") - mean * scale
        else:
            shift = -mean * scale
        return x * scale + shift

    def _channel_mean(self, x):
        """The per-sample, per-channel mean `(B, 1, 1, C)` the norm subtracts."""
        return ops.mean(x, axis=(1, 2), keepdims=True)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "center": self.center,
                "scale": self.scale,
                "epsilon": self.epsilon,
                "one_pass": self.one_pass,
                "statistics_stride": self.statistics_stride,
            }
        )
        return config


def _normalize_padding(padding) -> tuple[tuple[int, int], tuple[int, int]]:
    if isinstance(padding, int):
        return ((padding, padding), (padding, padding))
    rows, cols = padding
    if isinstance(rows, int):
        rows = (rows, rows)
    if isinstance(cols, int):
        cols = (cols, cols)
    return (tuple(int(p) for p in rows), tuple(int(p) for p in cols))


def _edge(x, axis: int, start: int, stop: int | None):
    index = [slice(None)] * 4
    index[axis] = slice(start, stop)
    return x[tuple(index)]


def _reflect(x, axis: int, before: int, after: int):
    """Reflection padding of one axis as one-row slices and concatenations.

    Row `i` of the top margin is row `before - i` of `x`; row `i` of the
    bottom margin is row `-2 - i`. Slices and concatenations are copies, so
    the result is exactly `ops.pad(..., mode="reflect")`; unlike LiteRT's
    MIRROR_PAD, XNNPACK runs them, so the exported graph stays in one
    delegate partition. The margins are joined first so that `x` itself is
    copied once.
    """
    top = [_edge(x, axis, i, i + 1) for i in range(before, 0, -1)]
    bottom = [_edge(x, axis, -2 - i, -1 - i) for i in range(after)]
    margins = [_concatenate(rows, axis) if rows else None for rows in (top, bottom)]
    parts = [part for part in (margins[0], x, margins[1]) if part is not None]
    return _concatenate(parts, axis)


def _concatenate(parts: list, axis: int, group: int = 3):
    """Concatenates `group` tensors at a time (XNNPACK takes few inputs)."""
    while len(parts) > 1:
        parts = [
            parts[i]
            if len(parts[i : i + group]) == 1
            else ops.concatenate(parts[i : i + group], axis=axis)
            for i in range(0, len(parts), group)
        ]
    return parts[0]


@keras.saving.register_keras_serializable(package="tfgancompress")
class ReflectionPadding2D(keras.layers.Layer):
    """Reflection padding of the spatial axes, like PyTorch `ReflectionPad2d`.

    Args:
        padding: An int (same on all four sides), a pair `(rows, cols)`, or
            `((top, bottom), (left, right))`.
        **kwargs: Base layer keyword arguments.

    Example:

    >>> x = keras.ops.ones((1, 4, 4, 2))
    >>> ReflectionPadding2D(3)(x).shape
    TensorShape([1, 10, 10, 2])
    """

    def __init__(self, padding=1, **kwargs):
        super().__init__(**kwargs)
        self.padding = _normalize_padding(padding)

    def build(self, input_shape):
        (top, bottom), (left, right) = self.padding
        height, width = input_shape[1], input_shape[2]
        if (height is not None and height <= max(top, bottom)) or (
            width is not None and width <= max(left, right)
        ):
            raise ValueError(
                f"Reflection padding {self.padding} needs each spatial size "
                f"larger than the padding; got input shape {input_shape}."
            )

    def call(self, inputs):
        (top, bottom), (left, right) = self.padding
        return _reflect(_reflect(inputs, 1, top, bottom), 2, left, right)

    def compute_output_shape(self, input_shape):
        (top, bottom), (left, right) = self.padding
        batch, height, width, channels = input_shape
        height = None if height is None else height + top + bottom
        width = None if width is None else width + left + right
        return (batch, height, width, channels)

    def get_config(self):
        config = super().get_config()
        config.update({"padding": self.padding})
        return config
