"""Export-time rewrites: the same function, in ops LiteRT runs faster.

`tfgancompress.export.to_litert` applies `lower_for_litert` by default
(`lowering=True`). Each rewrite computes what the layer it replaces
computes (float rounding aside); none changes a trained model's weights in
any way that matters to its user, only how its file spends the time.

- Transposed convolutions whose output is exactly `stride` times their
  input (PyTorch's `ConvTranspose2d(k3, s2, padding=1, output_padding=1)`
  of the ResNet generators, `(k4, s2, padding=1)` of the U-Net, Keras's
  `padding="same"`) become `keras_layers.SubPixelConv2D`: an ordinary
  convolution on the input grid to `stride**2` times the channels, then
  depth-to-space. Output pixel `s * i + a` of a transposed convolution
  with kernel `w` and crop `p` at the start sums `x[i + d] * w[a + p - s * d]`
  over the offsets `d` that index into `w`: per phase `a` a small stride-1
  convolution, all phases stacked on the channel axis. XNNPACK runs
  LiteRT's `TRANSPOSE_CONV` much slower per useful MAC than `CONV_2D`
  (measured in `benchmarks/results/ops.md`).
- Instance norms (`keras_layers.InstanceNormalization`, the plain class)
  take their statistics in one pass (`one_pass=True`: `E[x]` and
  `E[x**2]`, then `x * scale + shift`): five full-size passes instead of
  six, the same function up to float rounding. An approximate option,
  `norm_statistics_stride` (statistics on every k-th pixel of each axis,
  still per image), is not applied unless asked for; its cost is measured
  in the README ("A cheaper norm that stays adaptive").
"""

from __future__ import annotations

import math

import keras
import numpy as np

from keras_layers.norm import InstanceNormalization
from keras_layers.subpixel import SubPixelConv2D
from tfgancompress.models.layers import TorchConv2DTranspose


class _SubPixelAxis:
    """One spatial axis of a transposed convolution seen as sub-pixel phases.

    Attributes:
        low: The smallest input offset `d` any phase reads.
        size: The sub-pixel kernel's extent (`high - low + 1`).
        taps: Per phase `a`, `{d - low: k}` (kernel index `k` of the
            transposed convolution for input offset `d`).
    """

    def __init__(self, kernel: int, stride: int, crop: int):
        offsets = {}
        for phase in range(stride):
            first = math.ceil((phase + crop - kernel + 1) / stride)
            last = (phase + crop) // stride
            offsets[phase] = {
                d: phase + crop - stride * d for d in range(first, last + 1)
            }
        every = [d for taps in offsets.values() for d in taps] or [0]
        self.low, high = min(every), max(every)
        self.size = high - self.low + 1
        self.padding = (-self.low, high)
        self.taps = {
            phase: {d - self.low: k for d, k in taps.items()}
            for phase, taps in offsets.items()
        }


def _crops(layer: keras.layers.Conv2DTranspose, stride: int) -> tuple | None:
    """Per axis, pixels cropped at the start, if the output is `stride`x.

    Read off the layer's own output-size rules at one probe size (every
    rule is affine in the input size, with slope `stride`): Keras's
    `"same"` crops the start by half the excess of the full output
    `(size - 1) * stride + kernel` over its output size (TensorFlow's rule,
    also with `output_padding`), `"valid"` crops nothing, and
    `TorchConv2DTranspose` crops `torch_padding` more.
    """
    probe = (1, 16, 17, layer.kernel.shape[-1])
    keras_sizes = keras.layers.Conv2DTranspose.compute_output_shape(layer, probe)
    sizes = layer.compute_output_shape(probe)
    torch_crop = layer.torch_padding if type(layer) is TorchConv2DTranspose else 0
    crops = []
    for axis, kernel in enumerate(layer.kernel_size, start=1):
        if sizes[axis] != stride * probe[axis]:
            return None
        full = (probe[axis] - 1) * stride + kernel
        excess = max(full - keras_sizes[axis], 0) if layer.padding == "same" else 0
        crops.append(excess // 2 + torch_crop)
    return tuple(crops)


def subpixel_weights(layer: keras.layers.Conv2DTranspose) -> dict | None:
    """The `SubPixelConv2D` equivalent of a transposed convolution.

    Args:
        layer: A built `keras.layers.Conv2DTranspose` or
            `TorchConv2DTranspose` (channels last).

    Returns:
        `{"config": SubPixelConv2D arguments, "weights": [kernel, bias?]}`,
        or `None` if the layer is not an exact fit: output not exactly
        `stride` times the input, unequal strides, dilation, or a crop
        larger than the kernel's reach.
    """
    exact_type = type(layer) in (keras.layers.Conv2DTranspose, TorchConv2DTranspose)
    stride = layer.strides[0]
    if (
        not exact_type
        or layer.data_format != "channels_last"
        or layer.strides[0] != layer.strides[1]
        or tuple(layer.dilation_rate) != (1, 1)
    ):
        return None
    crops = _crops(layer, stride)
    if crops is None:
        return None
    axes = [
        _SubPixelAxis(kernel, stride, crop)
        for kernel, crop in zip(layer.kernel_size, crops, strict=True)
    ]
    if any(min(axis.padding) < 0 for axis in axes):
        return None
    transposed = np.asarray(layer.kernel)  # (kh, kw, out, in)
    filters, inputs = transposed.shape[2:]
    rows, cols = axes
    kernel = np.zeros((rows.size, cols.size, inputs, stride * stride, filters))
    for a, row_taps in rows.taps.items():
        for b, col_taps in cols.taps.items():
            for ty, ky in row_taps.items():
                for tx, kx in col_taps.items():
                    kernel[ty, tx, :, a * stride + b, :] = transposed[ky, kx].T
    weights = [kernel.reshape(rows.size, cols.size, inputs, -1).astype(np.float32)]
    if layer.use_bias:
        weights.append(np.tile(np.asarray(layer.bias), stride * stride))
    config = {
        "name": layer.name,
        "filters": int(filters),
        "kernel_size": (rows.size, cols.size),
        "block_size": stride,
        "padding": (rows.padding, cols.padding),
        "use_bias": layer.use_bias,
        "activation": keras.activations.serialize(layer.activation),
        "dtype": layer.dtype_policy,
    }
    return {"config": config, "weights": weights}


def _conv_padding(layer: keras.layers.Conv2D) -> tuple | None:
    """The zeros a stride-1 `Conv2D` adds before and after, per axis."""
    if layer.padding == "valid":
        return ((0, 0), (0, 0))
    if layer.padding == "same":
        return tuple(((k - 1) // 2, k // 2) for k in layer.kernel_size)
    return None


def space_to_depth_weights(layer: keras.layers.Conv2D, block: int) -> dict | None:
    """A stride-1 convolution as one on a `block`-times coarser grid.

    Output pixel `block * i + a` of a convolution with kernel `w` reads
    padded input `block * i + a + t` for each tap `t`; written as input
    block `i + q`, phase `r`, that is `w[block * q + r - a]`. So
    space-to-depth of the (padded) input, a convolution to `block**2`
    times the channels, and depth-to-space give the same output: more
    multiply-adds (by zero), in a shape XNNPACK runs much faster when the
    layer has few output channels (its kernels compute 8 or 16 output
    channels at a time).

    Args:
        layer: A built plain `keras.layers.Conv2D`, stride 1, no dilation or
            groups, channels last.
        block: The grid coarsening factor.

    Returns:
        `{"config": SubPixelConv2D arguments, "weights": [...]}`, or `None`
        if the layer is not of that kind. The output size must also be a
        multiple of `block` (checked when the layer is built).
    """
    padding = _conv_padding(layer)
    if (
        type(layer) is not keras.layers.Conv2D
        or padding is None
        or layer.data_format != "channels_last"
        or tuple(layer.strides) != (1, 1)
        or tuple(layer.dilation_rate) != (1, 1)
        or layer.groups != 1
    ):
        return None
    original = np.asarray(layer.kernel)  # (kh, kw, in, out)
    inputs, filters = original.shape[2:]
    extents = [(block + k - 2) // block + 1 for k in layer.kernel_size]
    kernel = np.zeros((*extents, block, block, inputs, block, block, filters))
    for qy, qx, ry, rx, ay, ax in np.ndindex(*extents, *(block,) * 4):
        ty, tx = block * qy + ry - ay, block * qx + rx - ax
        if 0 <= ty < layer.kernel_size[0] and 0 <= tx < layer.kernel_size[1]:
            kernel[qy, qx, ry, rx, :, ay, ax, :] = original[ty, tx]
    weights = [kernel.reshape(*extents, -1, block * block * filters).astype(np.float32)]
    if layer.use_bias:
        weights.append(np.tile(np.asarray(layer.bias), block * block))
    config = {
        "name": layer.name,
        "filters": int(filters),
        "kernel_size": tuple(extents),
        "block_size": block,
        "input_block_size": block,
        "padding": tuple(
            (before, after + block * (extent - 1) - (k - 1))
            for (before, after), extent, k in zip(
                padding, extents, layer.kernel_size, strict=True
            )
        ),
        "use_bias": layer.use_bias,
        "activation": keras.activations.serialize(layer.activation),
        "dtype": layer.dtype_policy,
    }
    return {"config": config, "weights": weights}


FEW_OUTPUT_CHANNELS = 4
"""Convolutions with at most this many outputs are run on a 2x coarser grid.

XNNPACK's float and int8 convolution kernels compute 8 or 16 output
channels at a time: a 7x7 convolution to 3 channels (the generators' last
layer) runs at a fifth of the speed per multiply-add of the others. On a 2x
coarser grid it has 12 output channels (and 1.3x the multiply-adds):
measured 2.0-2.4x faster at 256x256, 14 or 64 inputs. More channels in (a
3-channel stem) gain nothing.
"""


def _output_sizes(model: keras.Model, layers: list, input_shape) -> list:
    """Height and width of each layer's output at `input_shape` (or `None`)."""
    if not layers:
        return []
    known = [tuple(layer.output.shape[1:3]) for layer in layers]
    if input_shape is None or all(None not in size for size in known):
        return [None if None in size else size for size in known]
    probe = keras.Model(model.inputs, [layer.output for layer in layers])
    specs = probe.compute_output_spec(keras.KerasTensor(tuple(input_shape)))
    specs = specs if isinstance(specs, list | tuple) else [specs]
    return [tuple(spec.shape[1:3]) for spec in specs]


def _replacements(model: keras.Model, input_shape) -> dict:
    """`{layer name: SubPixelConv2D config and weights}` of every rewrite."""
    found = {}
    few_channels = []
    for layer in model.layers:
        if not layer.built:
            continue
        if isinstance(layer, keras.layers.Conv2DTranspose):
            replacement = subpixel_weights(layer)
            if replacement is not None:
                found[layer.name] = replacement
        elif (
            type(layer) is keras.layers.Conv2D
            and layer.filters <= FEW_OUTPUT_CHANNELS
            and np.prod(layer.kernel_size) > 1
        ):
            few_channels.append(layer)
    for layer, size in zip(
        few_channels, _output_sizes(model, few_channels, input_shape), strict=True
    ):
        if size is not None and size[0] % 2 == 0 and size[1] % 2 == 0:
            replacement = space_to_depth_weights(layer, 2)
            if replacement is not None:
                found[layer.name] = replacement
    return found


def _norm_configs(model: keras.Model, one_pass: bool, statistics_stride: int) -> dict:
    """`{layer name: InstanceNormalization config}` of every norm rewrite."""
    found = {}
    for layer in model.layers:
        if type(layer) is InstanceNormalization:
            config = layer.get_config()
            config["one_pass"] = config["one_pass"] or one_pass
            if statistics_stride != 1:
                config["statistics_stride"] = statistics_stride
            if config != layer.get_config():
                found[layer.name] = config
    return found


def lower_for_litert(
    model: keras.Model,
    input_shape=None,
    one_pass_norms: bool = True,
    norm_statistics_stride: int = 1,
) -> keras.Model:
    """A copy of `model` with every exact export-time rewrite applied.

    Layer names are kept (a rewritten layer's replacement has its name), so
    name-based choices such as `to_litert`'s `float_layers` still apply.

    Args:
        model: A functional Keras model.
        input_shape: The `(batch, height, width, channels)` it will run at,
            if its own input shape leaves sizes open (the coarse-grid
            rewrite needs even output sizes).
        one_pass_norms: Instance norms take one-pass statistics
            (`InstanceNormalization(one_pass=True)`, exact). `False` keeps
            the layers' own setting (two passes by default).
        norm_statistics_stride: `k > 1` (approximate, still per image):
            instance norms take their statistics on every `k`-th pixel of
            each spatial axis (`InstanceNormalization(statistics_stride=k)`).

    Returns:
        The rewritten copy (weightless `Lambda` layers are shared with
        `model`, every other layer copied), or `model` itself when nothing
        applies.

    Example:

    >>> fast = lower_for_litert(generator, (1, 256, 256, 3))
    >>> [type(fast.get_layer(n)).__name__ for n in ("up1_conv", "out_conv")]
    ['SubPixelConv2D', 'SubPixelConv2D']
    """
    if not getattr(model, "inputs", None):
        return model  # not a graph of layers to clone
    replacements = _replacements(model, input_shape)
    norms = _norm_configs(model, one_pass_norms, norm_statistics_stride)
    if not replacements and not norms:
        return model

    def clone_layer(layer):
        if layer.name in replacements:
            return SubPixelConv2D(**replacements[layer.name]["config"])
        if layer.name in norms:
            return InstanceNormalization.from_config(norms[layer.name])
        if isinstance(layer, keras.layers.Lambda):
            # Shared, not copied: a Python lambda does not round-trip its
            # config, and the layer holds no weights or state.
            return layer
        return layer.__class__.from_config(layer.get_config())

    twin = keras.models.clone_model(model, clone_function=clone_layer)
    for layer in twin.layers:
        if layer.name in replacements:
            layer.set_weights(replacements[layer.name]["weights"])
        elif layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    return twin
