"""Convolutions for compressible GANs: GCC's gated discriminator unit.

`SelectiveActivationConv2D` is the Conv -> Norm -> ChannelGate unit of GCC's
selective-activation discriminator. It keeps its parts as the sub-layers
`conv`, `norm` and `gate` so that `tfgancompress.slim` can take it apart.
"""

from __future__ import annotations

import keras

from keras_layers.gates import ChannelGate
from keras_layers.norm import InstanceNormalization

NORMS = (None, "instance", "batch")


def _make_norm(norm: str | None):
    if norm == "instance":
        return InstanceNormalization(center=False, scale=False, name="norm")
    if norm == "batch":
        return keras.layers.BatchNormalization(name="norm")
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
        self.kernel_size = kernel_size
        self.strides = strides
        self.padding = padding
        self.use_bias = bool(use_bias)
        self.norm_type = norm
        self.gate_mode = gate_mode
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.conv = keras.layers.Conv2D(
            self.filters,
            kernel_size,
            strides=strides,
            padding=padding,
            use_bias=self.use_bias,
            kernel_initializer=self.kernel_initializer,
            name="conv",
        )
        self.norm = _make_norm(norm)
        self.gate = ChannelGate(mode=gate_mode, name="gate")

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
                "kernel_size": self.kernel_size,
                "strides": self.strides,
                "padding": self.padding,
                "use_bias": self.use_bias,
                "norm": self.norm_type,
                "gate_mode": self.gate_mode,
                "kernel_initializer": keras.initializers.serialize(
                    self.kernel_initializer
                ),
            }
        )
        return config
