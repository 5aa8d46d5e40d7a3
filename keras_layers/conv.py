"""Convolutions for compressible GANs.

- `SelectiveActivationConv2D` is the Conv -> Norm -> ChannelGate unit of GCC's
  selective-activation discriminator. It keeps its parts as the sub-layers
  `conv`, `norm` and `gate` so that `tfgancompress.slim` can take it apart.
- `SuperConv2D`, `SuperConv2DTranspose` and `SuperSeparableConv2D` are the
  once-for-all supernet layers of GAN Compression: every sub-network shares
  the weights of the *first k output channels*. Their width is a scalar int32
  variable `active_filters`, settable with `set_active_filters(k)` or per call
  with `layer(x, active_filters=k)`. The output keeps all `filters` channels
  (static shapes: one XLA program serves every sampled width) and channels
  `>= k` are exactly 0, which equals the conv sliced to `kernel[..., :k]`
  followed by zero channels. The next layer then sees zeros in the input
  channels beyond the previous width, i.e. acts as if its kernel were sliced
  on the input axis too.
- `SuperInstanceNormalization` and `SuperBatchNormalization` are the norms
  that follow super convolutions in a supernet: set to the same width, they
  zero the switched-off channels that an affine norm (its offset beta) or a
  batch norm (its moving statistics) would otherwise light up again.
- `plain_class(layer)` names the plain layer a super layer computes as.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from keras_layers.gates import ChannelGate
from keras_layers.norm import InstanceNormalization

NORMS = (None, "instance", "batch")


def _make_norm(norm: str | None, dtype):
    if norm == "instance":
        return InstanceNormalization(
            center=False, scale=False, dtype=dtype, name="norm"
        )
    if norm == "batch":
        return keras.layers.BatchNormalization(
            epsilon=1e-5, momentum=0.9, dtype=dtype, name="norm"
        )
    return None


@keras.saving.register_keras_serializable(package="tfgancompress")
class SelectiveActivationConv2D(keras.layers.Layer):
    """GCC's selective-activation unit: `gate(norm(conv(x)))`.

    The gate (a `ChannelGate`, straight-through binary by default) switches
    whole output channels of the convolution on or off; put the activation
    (LeakyReLU in a PatchGAN) after this layer. The three parts are the
    attributes `conv` (`keras.layers.Conv2D`), `norm`
    (`InstanceNormalization(center=False, scale=False)`, `BatchNormalization`
    or `None`) and `gate` (`ChannelGate`); channel surgery relies on these
    names.

    Args:
        filters: Number of output channels.
        kernel_size: Int or pair, size of the convolution window.
        strides: Int or pair, strides of the convolution.
        padding: `"valid"` or `"same"`.
        use_bias: Whether the convolution adds a bias.
        norm: `None`, `"instance"` (non-affine, PyTorch `InstanceNorm2d`
            semantics) or `"batch"`.
        gate_mode: `ChannelGate` mode: `"binary"`, `"dmad"`, `"scale"` or
            `"gumbel"`.
        kernel_initializer: Initializer of the convolution kernel.
        **kwargs: Base layer keyword arguments (`name`, `dtype`, ...).

    Raises:
        ValueError: If `norm` or `gate_mode` is not one of the accepted values,
            or the input is not a rank-4 NHWC tensor.

    Example:

    >>> layer = SelectiveActivationConv2D(16, 4, strides=2, padding="same",
    ...                                   norm="instance")
    >>> layer(keras.ops.ones((1, 32, 32, 3))).shape
    TensorShape([1, 16, 16, 16])
    """

    def __init__(
        self,
        filters: int,
        kernel_size,
        strides=1,
        padding: str = "valid",
        use_bias: bool = True,
        norm: str | None = None,
        gate_mode: str = "binary",
        kernel_initializer="glorot_uniform",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if norm not in NORMS:
            raise ValueError(
                f"SelectiveActivationConv2D norm must be one of {NORMS}, got {norm!r}."
            )
        self.filters = int(filters)
        self.norm_type = norm
        self.gate_mode = gate_mode
        self.conv = keras.layers.Conv2D(
            self.filters,
            kernel_size,
            strides=strides,
            padding=padding,
            use_bias=use_bias,
            kernel_initializer=kernel_initializer,
            dtype=self.dtype_policy,
            name="conv",
        )
        self.norm = _make_norm(norm, self.dtype_policy)
        self.gate = ChannelGate(mode=gate_mode, dtype=self.dtype_policy, name="gate")

    def build(self, input_shape):
        if len(input_shape) != 4:
            raise ValueError(
                f"{self.__class__.__name__} expects NHWC input of rank 4, "
                f"got shape {input_shape}."
            )
        self.conv.build(input_shape)
        conv_shape = self.conv.compute_output_shape(input_shape)
        if self.norm is not None:
            self.norm.build(conv_shape)
        self.gate.build(conv_shape)

    def call(self, inputs, training=None):
        outputs = self.conv(inputs)
        if isinstance(self.norm, keras.layers.BatchNormalization):
            outputs = self.norm(outputs, training=training)
        elif self.norm is not None:
            outputs = self.norm(outputs)
        return self.gate(outputs, training=training)

    def compute_output_shape(self, input_shape):
        return self.conv.compute_output_shape(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "kernel_size": self.conv.kernel_size,
                "strides": self.conv.strides,
                "padding": self.conv.padding,
                "use_bias": self.conv.use_bias,
                "norm": self.norm_type,
                "gate_mode": self.gate_mode,
                "kernel_initializer": keras.initializers.serialize(
                    self.conv.kernel_initializer
                ),
            }
        )
        return config


class _ActiveWidth:
    """The `active_filters` variable and the output mask of a super layer.

    `self.filters` is the layer's full output width.
    """

    def _add_active_filters(self):
        self.active_filters = self.add_weight(
            shape=(),
            dtype="int32",
            initializer=keras.initializers.Constant(self.filters),
            trainable=False,
            autocast=False,
            name="active_filters",
        )

    def _validate_width(self, k) -> int:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise ValueError(f"{self.name}: active_filters must be an int, got {k!r}.")
        if not 1 <= k <= self.filters:
            raise ValueError(
                f"{self.name}: active_filters must be in [1, {self.filters}] "
                f"(the layer's full width), got {k}."
            )
        return int(k)

    def set_active_filters(self, k: int) -> None:
        """Sets the width used by calls without an `active_filters` argument.

        Args:
            k: Number of leading output channels to keep, `1 <= k <= filters`.

        Raises:
            ValueError: If the layer is not built yet or `k` is not an int in
                `[1, filters]`.
        """
        if not self.built:
            raise ValueError(
                f"{self.name}: build the layer (call it once) before "
                "set_active_filters()."
            )
        self.active_filters.assign(self._validate_width(k))

    def _mask_channels(self, outputs, active_filters):
        if active_filters is None:
            active_filters = self.active_filters
        elif isinstance(active_filters, (int, np.integer)):
            active_filters = self._validate_width(active_filters)
        keep = ops.arange(self.filters, dtype="int32") < ops.cast(
            active_filters, "int32"
        )
        return outputs * ops.cast(keep, outputs.dtype)


class _ActiveFiltersMixin(_ActiveWidth):
    """A super convolution: `filters` from the constructor, masked output."""

    def __init__(self, filters, kernel_size, **kwargs):
        super().__init__(filters, kernel_size, **kwargs)
        self._check_channels_last()

    def build(self, input_shape):
        super().build(input_shape)
        self._add_active_filters()

    def call(self, inputs, active_filters=None):
        return self._mask_channels(super().call(inputs), active_filters)

    def _check_channels_last(self):
        if self.data_format != "channels_last":
            raise ValueError(
                f"{self.__class__.__name__} supports data_format='channels_last' "
                f"(NHWC) only, got {self.data_format!r}."
            )


class _ConvActiveFiltersMixin(_ActiveFiltersMixin):
    """Saves `active_filters` too: `Conv2D` saves only its kernel and bias."""

    def save_own_variables(self, store):
        super().save_own_variables(store)
        if self.built:
            store["active_filters"] = self.active_filters

    def load_own_variables(self, store):
        super().load_own_variables(store)
        if self.built:
            self.active_filters.assign(store["active_filters"])


@keras.saving.register_keras_serializable(package="tfgancompress")
class SuperConv2D(_ConvActiveFiltersMixin, keras.layers.Conv2D):
    """`keras.layers.Conv2D` whose active width is the first k filters.

    Takes the arguments of `keras.layers.Conv2D` (NHWC only). The output has
    all `filters` channels; channels `>= k` are exactly 0 (activation
    included), channels `< k` equal a `Conv2D` with `kernel[..., :k]` and
    `bias[:k]`. Input channels beyond the previous layer's active width
    arrive as zeros, so they contribute nothing: no input slicing is needed.
    Shapes never change with `k`, so an XLA train step compiles once for all
    sampled sub-networks.

    Attributes:
        active_filters: Non-trainable scalar int32 variable, initially
            `filters`; saved with the weights.

    Call arguments:
        inputs: NHWC tensor.
        active_filters: Optional python int or scalar int tensor that
            overrides the `active_filters` variable for this call. Python
            ints are validated; tensors are used as given.

    Example:

    >>> layer = SuperConv2D(8, 3, padding="same")
    >>> y = layer(keras.ops.ones((1, 4, 4, 3)), active_filters=5)
    >>> float(keras.ops.max(keras.ops.abs(y[..., 5:])))
    0.0
    """


@keras.saving.register_keras_serializable(package="tfgancompress")
class SuperConv2DTranspose(_ActiveFiltersMixin, keras.layers.Conv2DTranspose):
    """`keras.layers.Conv2DTranspose` whose active width is the first k filters.

    Takes the arguments of `keras.layers.Conv2DTranspose` (`padding`,
    `output_padding`, ...; NHWC only). The kernel has shape
    `(kh, kw, filters, in_channels)`: the active sub-layer uses
    `kernel[:, :, :k, :]` and `bias[:k]`. As in `SuperConv2D` the output
    keeps all `filters` channels and channels `>= k` are exactly 0, so
    shapes stay static for XLA; zero input channels contribute nothing.

    Attributes:
        active_filters: Non-trainable scalar int32 variable, initially
            `filters`; saved with the weights.

    Call arguments:
        inputs: NHWC tensor.
        active_filters: Optional python int or scalar int tensor that
            overrides the `active_filters` variable for this call.

    Example:

    >>> layer = SuperConv2DTranspose(8, 3, strides=2, padding="same")
    >>> layer.build((None, 4, 4, 3))
    >>> layer.set_active_filters(2)
    >>> layer(keras.ops.ones((1, 4, 4, 3))).shape
    TensorShape([1, 8, 8, 8])
    """


@keras.saving.register_keras_serializable(package="tfgancompress")
class SuperSeparableConv2D(_ActiveFiltersMixin, keras.layers.SeparableConv2D):
    """`keras.layers.SeparableConv2D` whose active width is the first k filters.

    Takes the arguments of `keras.layers.SeparableConv2D` (NHWC only). The
    depthwise part is shared whole (its zero input channels stay zero); the
    active sub-layer uses `pointwise_kernel[..., :k]` and `bias[:k]`. The
    output keeps all `filters` channels with channels `>= k` exactly 0.

    Attributes:
        active_filters: Non-trainable scalar int32 variable, initially
            `filters`; saved with the weights.

    Call arguments:
        inputs: NHWC tensor.
        active_filters: Optional python int or scalar int tensor that
            overrides the `active_filters` variable for this call.

    Example:

    >>> layer = SuperSeparableConv2D(8, 3, padding="same")
    >>> y = layer(keras.ops.ones((1, 4, 4, 3)), active_filters=3)
    >>> y.shape
    TensorShape([1, 4, 4, 8])
    """


class _NormActiveWidth(_ActiveWidth):
    """A super normalization: its full width is its input's channel count."""

    def build(self, input_shape):
        super().build(input_shape)
        self.filters = int(input_shape[-1])
        self._add_active_filters()


@keras.saving.register_keras_serializable(package="tfgancompress")
class SuperInstanceNormalization(_NormActiveWidth, InstanceNormalization):
    """`InstanceNormalization` whose active width is the first k channels.

    Takes the arguments of `InstanceNormalization`. Channels `>= k` of the
    output are exactly 0. A super convolution already zeroes them, and a
    non-affine norm keeps a zero channel at zero, but an affine one would
    emit its offset `beta` there: in a supernet the norm after each super
    convolution is a super norm set to the same width, so that the sub-net
    computes what its sliced plain model computes.

    Attributes:
        active_filters: Non-trainable scalar int32 variable, initially the
            channel count; saved with the weights.

    Call arguments:
        inputs: NHWC tensor.
        active_filters: Optional python int or scalar int tensor that
            overrides the `active_filters` variable for this call.

    Example:

    >>> norm = SuperInstanceNormalization(center=True, scale=True)
    >>> y = norm(keras.ops.ones((1, 4, 4, 8)), active_filters=3)
    >>> float(keras.ops.max(keras.ops.abs(y[..., 3:])))
    0.0
    """

    def call(self, inputs, active_filters=None):
        return self._mask_channels(super().call(inputs), active_filters)


@keras.saving.register_keras_serializable(package="tfgancompress")
class SuperBatchNormalization(_NormActiveWidth, keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization` whose active width is the first k channels.

    Takes the arguments of `keras.layers.BatchNormalization` (channels-last
    axis only). Channels `>= k` of the output are exactly 0, whatever the
    moving statistics and offsets hold there (see
    `SuperInstanceNormalization` for why a supernet needs this).

    Attributes:
        active_filters: Non-trainable scalar int32 variable, initially the
            channel count; saved with the weights.

    Call arguments:
        inputs: NHWC tensor.
        training: Whether to normalize with the batch's statistics (and
            update the moving ones).
        mask: Keras mask, as in `BatchNormalization`.
        active_filters: Optional python int or scalar int tensor that
            overrides the `active_filters` variable for this call.

    Example:

    >>> norm = SuperBatchNormalization()
    >>> y = norm(keras.ops.ones((2, 4, 4, 8)), active_filters=5)
    >>> y.shape
    TensorShape([2, 4, 4, 8])
    """

    def __init__(self, axis=-1, **kwargs):
        super().__init__(axis=axis, **kwargs)
        if self.axis not in (-1, 3):
            raise ValueError(
                f"{self.__class__.__name__} normalizes the channels-last axis "
                f"only (axis=-1), got axis={self.axis}."
            )

    def call(self, inputs, training=None, mask=None, active_filters=None):
        outputs = super().call(inputs, training=training, mask=mask)
        return self._mask_channels(outputs, active_filters)


SUPER_LAYERS = (
    SuperConv2D,
    SuperConv2DTranspose,
    SuperSeparableConv2D,
    SuperInstanceNormalization,
    SuperBatchNormalization,
)


def plain_class(layer_or_class) -> type:
    """The plain layer class a super layer computes as at its active width.

    That is the nearest base class that is not a super layer:
    `keras.layers.Conv2D` for `SuperConv2D`, `InstanceNormalization` for
    `SuperInstanceNormalization`, and for a super subclass of another plain
    layer (say, a transposed convolution with PyTorch padding) that layer.
    Any other class is its own plain class.

    Args:
        layer_or_class: A layer instance or a layer class.

    Returns:
        The plain class.

    Example:

    >>> plain_class(SuperConv2D(8, 3))
    <class 'keras.src.layers.convolutional.conv2d.Conv2D'>
    """
    cls = layer_or_class if isinstance(layer_or_class, type) else type(layer_or_class)
    return next(base for base in cls.__mro__ if not issubclass(base, _ActiveWidth))
