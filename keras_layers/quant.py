"""Straight-through fake quantization that LiteRT turns into int8 kernels.

`FakeQuant` rounds a tensor onto an 8-bit (by default) grid in the forward
pass and lets the gradient through unchanged inside the range (zero outside:
the clamp). It runs TensorFlow's own `FakeQuantWithMinMaxVars` ops, the ones
the LiteRT converter reads as quantization-aware-training ranges, so a model
built with it converts to int8 kernels without representative data.

How a Keras model becomes an int8 `.tflite` (measured with TF 2.21):

- A convolution runs in int8 when **both its input and its output** carry a
  `FakeQuant`: `FakeQuant -> Conv2D -> FakeQuant -> InstanceNormalization
  -> ...`. With a range on the input only, the converter keeps a float
  convolution behind a quantize/dequantize pair.
- Weights need no `FakeQuant`: the converter quantizes each kernel itself,
  symmetric int8 per output channel (scale `max|W_c| / 127`), as for any
  int8 conversion. A custom layer that wants training to see its rounded
  weights may call `FakeQuant(signed=True, per_channel=True)` on its kernel;
  the converter then keeps those ranges.
- Ops between two ranges that LiteRT cannot run in int8 (the statistics of
  an instance norm, for example) stay float32 with quantize/dequantize ops
  around them; the file is still builtin-only.
- The converter gives an instance norm's MEAN the range of the FakeQuant in
  front of it, so the exported mean is rounded to that grid while Keras
  computes it in float: a FakeQuant right before an instance norm makes the
  LiteRT file differ from the Keras model by about half a grid step divided
  by the channel's standard deviation. Keep such ranges tight (moving
  ranges fit the data).

GAN Slimming's activation quantizer (ReLU clamped to [0, 4], 8 bits) is
`FakeQuant(min_value=0.0, max_value=4.0)`; its ReLU may even be dropped,
the clamp at 0 is the same function. Its weight quantizer (signed, one
scale `max|W| / 127` per tensor) is `FakeQuantWeights(conv)`: the
converter keeps that per-tensor range in the int8 file, so the file
computes with the very weights training saw.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from keras_layers.norm import InstanceNormalization

RANGES = ("fixed", "moving")
_KERNEL_LAYERS = (
    keras.layers.Conv2D,
    keras.layers.Conv2DTranspose,
    keras.layers.DepthwiseConv2D,
)

_MIN_WIDTH = 1e-6


def _as_float_or_list(value):
    if value is None:
        return None
    if isinstance(value, Sequence | np.ndarray):
        return [float(v) for v in np.asarray(value, np.float32).reshape(-1)]
    return float(value)


@keras.saving.register_keras_serializable(package="tfgancompress")
class FakeQuant(keras.layers.Layer):
    """Fake-quantizes its input with a straight-through gradient.

    The forward pass clamps `x` to the range `[min, max]` (nudged so that 0
    is exactly representable) and rounds it to one of `2**num_bits` levels;
    the gradient is 1 inside the range and 0 outside.

    Args:
        num_bits: Bits of the grid, 2 to 16. LiteRT's int8 kernels need 8.
        signed: `True`: symmetric range `[-max_value, max_value]` on the
            narrow grid `-127..127` (how int8 weights are stored); the
            moving range tracks `max|x|`. `False`: range
            `[min_value, max_value]` with `min_value <= 0 <= max_value`
            (`min_value` defaults to 0: an unsigned, clamped activation).
        min_value: Lower end of the range (`signed=False` only). A scalar,
            or one value per channel when `per_channel=True`.
        max_value: Upper end of the range. Required when `ranges="fixed"`;
            with `ranges="moving"` it is the starting value, and when left
            out the first training batch sets the range.
        ranges: `"fixed"`: the range stays as given. `"moving"`: in
            training, an exponential moving average of each batch's
            min/max (non-trainable variables); frozen in inference.
        per_channel: One range per channel of the last axis instead of one
            for the whole tensor.
        momentum: Moving-average momentum of `ranges="moving"`.
        **kwargs: Base layer keyword arguments.

    Raises:
        ValueError: For an unknown `ranges`, `num_bits` outside 2..16, a
            fixed range without `max_value`, a range that does not contain
            0, or a `min_value` given with `signed=True`.

    Example:

    >>> quant = FakeQuant(min_value=0.0, max_value=4.0)
    >>> y = quant(keras.ops.convert_to_tensor([[-1.0, 0.01, 9.0]]))
    >>> [round(float(v), 4) for v in y[0]]
    [0.0, 0.0157, 4.0]
    """

    def __init__(
        self,
        num_bits: int = 8,
        signed: bool = False,
        min_value: float | Sequence[float] | None = None,
        max_value: float | Sequence[float] | None = None,
        ranges: str = "fixed",
        per_channel: bool = False,
        momentum: float = 0.99,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if ranges not in RANGES:
            raise ValueError(
                f"FakeQuant ranges must be one of {RANGES}, got {ranges!r}."
            )
        if not 2 <= int(num_bits) <= 16:
            raise ValueError(f"FakeQuant num_bits must be in 2..16, got {num_bits}.")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"FakeQuant momentum must be in [0, 1), got {momentum}.")
        if ranges == "fixed" and max_value is None:
            raise ValueError('FakeQuant with ranges="fixed" needs max_value.')
        if signed and min_value is not None:
            raise ValueError(
                "FakeQuant(signed=True) is symmetric: give max_value only, "
                f"got min_value={min_value!r}."
            )
        self.num_bits = int(num_bits)
        self.signed = bool(signed)
        self.min_value = _as_float_or_list(min_value)
        self.max_value = _as_float_or_list(max_value)
        self.ranges = ranges
        self.per_channel = bool(per_channel)
        self.momentum = float(momentum)

    def _range_array(self, value, default: float, shape: tuple, input_shape):
        array = np.asarray(default if value is None else value, np.float32)
        if array.ndim and array.shape != shape:
            raise ValueError(
                f"{self.name}: min_value/max_value must be a scalar or have "
                f"shape {shape} (one value per channel) for input shape "
                f"{input_shape}, got {value!r}."
            )
        return np.broadcast_to(array, shape).copy()

    def build(self, input_shape):
        shape = ()
        if self.per_channel:
            channels = input_shape[-1]
            if channels is None:
                raise ValueError(
                    f"FakeQuant(per_channel=True) needs a known last axis, got "
                    f"shape {input_shape}."
                )
            shape = (int(channels),)
        high = self._range_array(self.max_value, 1.0, shape, input_shape)
        if self.signed:
            low = -high
        else:
            low = self._range_array(self.min_value, 0.0, shape, input_shape)
        if np.any(low > 0.0) or np.any(high < 0.0) or np.any(high - low <= 0.0):
            raise ValueError(
                f"{self.name}: the range [min_value, max_value] must contain 0 "
                f"and have max > min, got min={low.tolist()}, max={high.tolist()}."
            )
        self.min_range = self.add_weight(
            shape=shape,
            initializer=keras.initializers.Constant(low),
            trainable=False,
            name="min_range",
        )
        self.max_range = self.add_weight(
            shape=shape,
            initializer=keras.initializers.Constant(high),
            trainable=False,
            name="max_range",
        )
        if self.ranges == "moving":
            self.initialized = self.add_weight(
                shape=(),
                initializer=keras.initializers.Constant(
                    0.0 if self.max_value is None else 1.0
                ),
                trainable=False,
                name="initialized",
            )

    def _batch_range(self, x):
        axes = list(range(len(x.shape) - 1)) if self.per_channel else None
        x = ops.stop_gradient(x)
        if self.signed:
            high = ops.max(ops.abs(x), axis=axes)
            return -high, high
        low = ops.minimum(ops.min(x, axis=axes), 0.0)
        high = ops.maximum(ops.max(x, axis=axes), 0.0)
        return low, high

    def _update_ranges(self, x) -> None:
        low, high = self._batch_range(x)
        high = ops.maximum(high, low + _MIN_WIDTH)
        seen = self.initialized > 0.0
        keep = self.momentum
        self.min_range.assign(
            ops.where(seen, keep * self.min_range + (1.0 - keep) * low, low)
        )
        self.max_range.assign(
            ops.where(seen, keep * self.max_range + (1.0 - keep) * high, high)
        )
        self.initialized.assign(1.0)

    def call(self, inputs, training=None):
        x = ops.cast(inputs, "float32")
        if self.ranges == "moving" and training:
            self._update_ranges(x)
        quantize = (
            tf.quantization.fake_quant_with_min_max_vars_per_channel
            if self.per_channel
            else tf.quantization.fake_quant_with_min_max_vars
        )
        outputs = quantize(
            x,
            tf.convert_to_tensor(self.min_range),
            tf.convert_to_tensor(self.max_range),
            num_bits=self.num_bits,
            narrow_range=self.signed,
        )
        return ops.cast(outputs, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_bits": self.num_bits,
                "signed": self.signed,
                "min_value": self.min_value,
                "max_value": self.max_value,
                "ranges": self.ranges,
                "per_channel": self.per_channel,
                "momentum": self.momentum,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="tfgancompress")
class FakeQuantWeights(keras.layers.Wrapper):
    """Runs a convolution with its kernel fake-quantized (straight-through).

    The kernel is rounded onto the signed narrow grid `-127..127` with one
    scale `max|W| / 127` for the whole tensor (GAN Slimming's weight
    quantizer); the gradient reaches the float kernel unchanged. In
    training the range follows the kernel (`max|W|` of the current
    weights, every call); in inference it is the stored one, so a model
    whose channels were removed (`tfgancompress.slim`) keeps its grid. The
    LiteRT converter reads the range and stores the kernel as int8 on the
    same grid.

    Args:
        layer: A `Conv2D`, `Conv2DTranspose` or `DepthwiseConv2D` (or a
            subclass), built or not.
        num_bits: Bits of the weight grid (8 for LiteRT's int8 kernels).
        **kwargs: Base layer keyword arguments.

    Raises:
        ValueError: If `layer` is not one of those convolutions.

    Example:

    >>> conv = FakeQuantWeights(keras.layers.Conv2D(4, 3))
    >>> y = conv(keras.ops.ones((1, 8, 8, 3)))
    >>> kernel = conv.quantized_kernel()
    >>> int(len(np.unique(np.abs(kernel)))) <= 128
    True
    """

    def __init__(self, layer: keras.layers.Layer, num_bits: int = 8, **kwargs):
        if not isinstance(layer, _KERNEL_LAYERS):
            raise ValueError(
                "FakeQuantWeights wraps a Conv2D, Conv2DTranspose or "
                f"DepthwiseConv2D; got {type(layer).__name__} {layer.name!r}."
            )
        kwargs.setdefault("name", f"{layer.name}_quant")
        super().__init__(layer, **kwargs)
        self.num_bits = int(num_bits)
        self.kernel_quant = FakeQuant(
            num_bits=self.num_bits,
            signed=True,
            ranges="moving",
            momentum=0.0,
            name="kernel_quant",
        )

    @property
    def _kernel_attribute(self) -> str:
        # Conv2D exposes `kernel` as a property over `_kernel`.
        return "_kernel" if hasattr(self.layer, "_kernel") else "kernel"

    def build(self, input_shape=None):
        if not self.layer.built:
            self.layer.build(input_shape)
        kernel = getattr(self.layer, self._kernel_attribute)
        self.kernel_quant.build(tuple(kernel.shape))
        self.reset_range()
        self.built = True

    def reset_range(self) -> None:
        """Sets the stored range to the current kernel's `max|W|`."""
        kernel = getattr(self.layer, self._kernel_attribute)
        high = ops.maximum(ops.max(ops.abs(kernel)), _MIN_WIDTH)
        self.kernel_quant.max_range.assign(high)
        self.kernel_quant.min_range.assign(-high)
        self.kernel_quant.initialized.assign(1.0)

    def quantized_kernel(self) -> np.ndarray:
        """The kernel on its stored grid, as the inference pass uses it."""
        kernel = getattr(self.layer, self._kernel_attribute)
        return keras.ops.convert_to_numpy(self.kernel_quant(kernel, training=False))

    def call(self, inputs, training=None):
        attribute = self._kernel_attribute
        kernel = getattr(self.layer, attribute)
        quantized = self.kernel_quant(kernel, training=training)
        # The wrapped layer reads its kernel attribute in `call`; it sees the
        # quantized tensor for this call only (Keras' tracking is bypassed so
        # the variable stays the layer's weight).
        object.__setattr__(self.layer, attribute, quantized)
        try:
            return self.layer(inputs)
        finally:
            object.__setattr__(self.layer, attribute, kernel)

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    def get_config(self):
        config = super().get_config()
        config["num_bits"] = self.num_bits
        return config


@keras.saving.register_keras_serializable(package="tfgancompress")
class FakeQuantInstanceNormalization(InstanceNormalization):
    """An instance norm of a fake-quantized input, as LiteRT's int8 file runs it.

    The input (a convolution's output) goes through a moving-range
    `FakeQuant` (the range LiteRT needs to run that convolution in int8);
    the per-channel mean is then rounded onto the same grid, because the
    converter computes the mean with an int8 `MEAN` on the input's grid.
    The rest (variance, normalization, affine) is float, as in the file.
    With a plain `FakeQuant -> InstanceNormalization` pair the exported
    file would differ from the Keras model by up to half a grid step
    divided by each channel's standard deviation.

    Args:
        num_bits: Bits of the input grid.
        momentum: Moving-average momentum of the input range.
        **kwargs: `InstanceNormalization` arguments (`center`, `scale`,
            `epsilon`, `name`, ...).

    Example:

    >>> norm = FakeQuantInstanceNormalization()
    >>> y = norm(keras.random.normal((2, 8, 8, 4)), training=True)
    >>> float(norm.input_quant.initialized)
    1.0
    """

    def __init__(self, num_bits: int = 8, momentum: float = 0.99, **kwargs):
        super().__init__(**kwargs)
        self.num_bits = int(num_bits)
        self.momentum = float(momentum)
        self.input_quant = FakeQuant(
            num_bits=self.num_bits,
            ranges="moving",
            momentum=self.momentum,
            name="input_quant",
        )

    def build(self, input_shape):
        super().build(input_shape)
        self.input_quant.build(input_shape)

    def _channel_mean(self, x):
        return tf.quantization.fake_quant_with_min_max_vars(
            super()._channel_mean(x),
            tf.convert_to_tensor(self.input_quant.min_range),
            tf.convert_to_tensor(self.input_quant.max_range),
            num_bits=self.num_bits,
        )

    def call(self, inputs, training=None):
        return super().call(self.input_quant(inputs, training=training))

    def get_config(self):
        config = super().get_config()
        config.update({"num_bits": self.num_bits, "momentum": self.momentum})
        return config
