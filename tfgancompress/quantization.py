"""Quantization-aware generators: `FakeQuant` inserted where LiteRT needs it.

`quantize_generator(model)` returns a copy of a functional generator that
computes in simulated 8-bit arithmetic, GAN Slimming's quantizer (GS-8):

- every convolution's kernel: signed, one scale `max|W| / 127` per tensor,
  straight-through (`keras_layers.FakeQuantWeights`);
- every ReLU output: unsigned, clamped to `[0, activation_max]` (4 in the
  paper), 8 bits (`keras_layers.FakeQuant`);
- every other convolution input (a residual-stream sum, which is signed)
  and every convolution output: a range that follows the data (an
  exponential moving average of each training batch's min/max, frozen in
  inference). GAN Slimming quantizes convolution inputs only (its
  accumulators stay float); LiteRT runs a convolution in int8 only when
  its output carries a range too. The paper clamps the residual stream at
  0 as well, which the dense float teacher we start from does not survive;
- the image input is not quantized (as in the paper) unless
  `quantize_input=True`: then the first convolution runs in int8 too;
- a final tanh: the grid LiteRT's int8 TANH writes (scale 1/128), so the
  Keras model and the file round their outputs alike.

An instance norm fed by a convolution becomes a
`keras_layers.FakeQuantInstanceNormalization`: it holds that convolution's
output range and rounds its mean onto the same grid, as the int8 file
computes it. Given calibration images, each such convolution is also
centred (its bias minus the channel's mean: the norm ignores the shift),
so the channels share their tensor's int8 range evenly.

How close the int8 file stays to the Keras model: LiteRT's fixed-point
requantization rounds values within ~0.002 of a grid half-step upward
(measured), which no float model reproduces. Those rare ties (~0.2% of a
tensor's values) grow at every instance norm, which divides by each
channel's spread. Measured at 32x32 with random weights: two
conv-norm-gate-ReLU blocks match the file exactly but for ~0.4% of their
outputs; an ngf-8 ResNet generator with one block differs on ~75% of its
outputs, by 1.5 output steps (1/128) on average: 42 dB PSNR between the
two (`tests/test_quantization.py`).

`tgc.slim` keeps every quantizer: closed channels whose constant output is
0 leave the model exactly as it was; constant channels folded into a bias
(float sums in another order) or merged into a zero-padded convolution's
carrier channel (its kernel re-rounded onto the grid) change the model by
about as much as its int8 file does (44 dB in the same test).

The result trains like any Keras model (`fit`, the project's trainers) and
exports as a true int8 LiteRT file without calibration data:
`tgc.export.to_litert(model, path, "int8")`. `tgc.slim` removes channels
from it (the ranges stay: the grid of every tensor is unchanged).

Example:

```python
quantized = tgc.quantization.quantize_generator(generator, calibration=images)
path = tgc.export.to_litert(quantized, "g_int8.tflite", "int8",
                            input_shape=(1, 256, 256, 3))
```
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np

from keras_layers import (
    FakeQuant,
    FakeQuantInstanceNormalization,
    FakeQuantWeights,
    InstanceNormalization,
    ReflectionPadding2D,
)

_KERNEL_LAYERS = (
    keras.layers.Conv2D,
    keras.layers.Conv2DTranspose,
    keras.layers.DepthwiseConv2D,
)
_PADDING_LAYERS = (ReflectionPadding2D, keras.layers.ZeroPadding2D)


def _is_relu(layer) -> bool:
    if isinstance(layer, keras.layers.ReLU):
        return (
            layer.max_value is None
            and float(layer.threshold) == 0.0
            and float(layer.negative_slope) == 0.0
        )
    if isinstance(layer, keras.layers.Activation):
        return keras.activations.serialize(layer.activation) == "relu"
    return False


def _is_tanh(layer) -> bool:
    return isinstance(layer, keras.layers.Activation) and (
        keras.activations.serialize(layer.activation) == "tanh"
    )


def _producer(tensor):
    """The layer that computed a symbolic tensor, skipping paddings."""
    layer = tensor._keras_history.operation
    while isinstance(layer, _PADDING_LAYERS):
        tensor = layer._inbound_nodes[0].arguments.keras_tensors[0]
        layer = tensor._keras_history.operation
    return layer


def _consumer_map(model: keras.Model) -> dict[int, list]:
    """`{id(layer): [layers that take its output]}` within `model`'s graph."""
    consumers: dict[int, list] = {}
    for nodes in model._nodes_by_depth.values():
        for node in nodes:
            for tensor in node.arguments.keras_tensors:
                producer = tensor._keras_history.operation
                consumers.setdefault(id(producer), []).append(node.operation)
    return consumers


class _Quantizer:
    """Rebuilds a functional model layer by layer, inserting quantizers."""

    def __init__(
        self,
        model: keras.Model,
        activation_max: float,
        quantize_input: bool,
        num_bits: int,
    ):
        self.consumers = _consumer_map(model)
        self.activation_max = float(activation_max)
        self.quantize_input = quantize_input
        self.num_bits = int(num_bits)
        self.copies: list[tuple[keras.layers.Layer, keras.layers.Layer]] = []

    def feeds_kernels_only(self, layer) -> bool:
        """Whether every consumer of `layer` is a convolution (through paddings)."""
        consumers = self.consumers.get(id(layer), [])
        return bool(consumers) and all(
            isinstance(c, _KERNEL_LAYERS)
            or (isinstance(c, _PADDING_LAYERS) and self.feeds_kernels_only(c))
            for c in consumers
        )

    def feeds_norms_only(self, layer) -> bool:
        """Whether `layer` is a convolution read only by instance norms."""
        consumers = self.consumers.get(id(layer), [])
        return (
            isinstance(layer, _KERNEL_LAYERS)
            and bool(consumers)
            and all(type(c) is InstanceNormalization for c in consumers)
        )

    def clone(self, layer: keras.layers.Layer) -> keras.layers.Layer:
        """A fresh copy; a norm of a convolution's output quantizes its input."""
        if type(layer) is InstanceNormalization:
            tensor = layer._inbound_nodes[0].arguments.keras_tensors[0]
            if self.feeds_norms_only(tensor._keras_history.operation):
                return FakeQuantInstanceNormalization(
                    num_bits=self.num_bits, **layer.get_config()
                )
        return type(layer).from_config(layer.get_config())

    def activation_quantizer(self, name: str) -> FakeQuant:
        """GAN Slimming's ReLU quantizer: unsigned, `[0, activation_max]`."""
        return FakeQuant(
            self.num_bits, min_value=0.0, max_value=self.activation_max, name=name
        )

    def input_quantizer(self, tensor, name: str):
        """The quantizer in front of a convolution, or None."""
        producer = _producer(tensor)
        if isinstance(producer, FakeQuant):
            return None
        if isinstance(producer, keras.layers.InputLayer):
            if not self.quantize_input:
                return None
            return FakeQuant(self.num_bits, signed=True, max_value=1.0, name=name)
        if _is_relu(producer):
            return self.activation_quantizer(name)
        return FakeQuant(self.num_bits, ranges="moving", name=name)

    def call(self, layer):
        def run(*args, **kwargs):
            if isinstance(layer, keras.Model):
                raise ValueError(
                    f"quantize_generator needs a flat functional model; layer "
                    f"{layer.name!r} is a nested model."
                )
            copy = self.clone(layer)
            self.copies.append((layer, copy))
            if isinstance(layer, _KERNEL_LAYERS):
                (x,) = args
                quantizer = self.input_quantizer(x, f"{layer.name}_input_quant")
                if quantizer is not None:
                    x = quantizer(x)
                outputs = FakeQuantWeights(copy, self.num_bits)(x)
                if self.feeds_norms_only(layer):  # they quantize their input
                    return outputs
                return FakeQuant(
                    self.num_bits, ranges="moving", name=f"{layer.name}_output_quant"
                )(outputs)
            outputs = copy(*args, **kwargs)
            if _is_tanh(layer):
                # The grid of LiteRT's int8 TANH (scale 1/128, zero point 0).
                return FakeQuant(
                    self.num_bits,
                    min_value=-1.0,
                    max_value=127.0 / 128.0,
                    name=f"{layer.name}_quant",
                )(outputs)
            if _is_relu(layer) and self.feeds_kernels_only(layer):
                outputs = self.activation_quantizer(f"{layer.name}_quant")(outputs)
            return outputs

        return run


def quantize_generator(
    model: keras.Model,
    activation_max: float = 4.0,
    quantize_input: bool = False,
    num_bits: int = 8,
    calibration: np.ndarray | Sequence[np.ndarray] | None = None,
) -> keras.Model:
    """A quantization-aware copy of a generator (see the module docstring).

    Args:
        model: A flat functional Keras model (the zoo's generators, gated or
            not, slimmed or not). It is not changed.
        activation_max: Upper end of the ReLU outputs' fixed range.
        quantize_input: Also quantize the image (signed, `[-1, 1]`, 8 bits),
            so that the first convolution runs in int8 too.
        num_bits: Bits of every grid (LiteRT's int8 kernels need 8).
        calibration: Optional images (an array, or a sequence of batches):
            run through the copy in training mode to set the moving ranges.
            Without it the first training batch sets them.

    Returns:
        A new functional model, same input and output, with copies of the
        weights; its `FakeQuantWeights` wrap the convolutions (named
        `<conv>_quant`) and its `FakeQuant` layers are named
        `<conv>_input_quant`, `<conv>_output_quant` and `<relu>_quant`.

    Raises:
        ValueError: If the model is not functional, has several inputs or a
            nested model, or `activation_max` is not positive.

    Example:

    >>> g = tgc.models.resnet_generator(ngf=8, n_blocks=2, gated="scale")
    >>> q = quantize_generator(g)
    >>> sum(isinstance(l, keras_layers.FakeQuantWeights) for l in q.layers)
    10
    """
    if not activation_max > 0:
        raise ValueError(f"activation_max must be > 0, got {activation_max}.")
    if not callable(getattr(model, "_run_through_graph", None)):
        raise ValueError(
            f"quantize_generator needs a functional model; {model.name!r} is a "
            f"{type(model).__name__}."
        )
    if len(model.inputs) != 1:
        raise ValueError(
            f"quantize_generator needs a single-input model; {model.name!r} has "
            f"{len(model.inputs)} inputs."
        )
    quantizer = _Quantizer(model, activation_max, quantize_input, num_bits)
    source = model.inputs[0]
    inputs = keras.Input(source.shape[1:], name=source._keras_history.operation.name)
    outputs = model._run_through_graph([inputs], operation_fn=quantizer.call)
    quantized = keras.Model(inputs, outputs, name=f"{model.name}_quantized")
    for original, copy in quantizer.copies:
        # A copy's own weights come first; a quantizer adds its ranges after.
        for source, target in zip(original.weights, copy.weights, strict=False):
            target.assign(source)
    batches = None
    if calibration is not None:
        batches = [calibration] if isinstance(calibration, np.ndarray) else calibration
        batches = [np.asarray(batch, np.float32) for batch in batches]
        _center_pre_norm_convs(model, quantized, quantizer, batches)
    for layer in quantized.layers:
        if isinstance(layer, FakeQuantWeights):
            layer.reset_range()
    if batches is not None:
        calibrate(quantized, batches)
    return quantized


def _center_pre_norm_convs(model, quantized, quantizer: _Quantizer, batches) -> None:
    """Centres every convolution that feeds only instance norms.

    An instance norm ignores a constant per channel, so each such
    convolution's bias may drop the channel's mean over the calibration
    images: the function is the same, and the channels, no longer offset
    from each other, share the tensor's int8 range more evenly (a narrow
    grid step relative to each channel's spread: less rounding error for
    the norm to amplify).
    """
    convs = [
        layer
        for layer in model.layers
        if getattr(layer, "use_bias", False) and quantizer.feeds_norms_only(layer)
    ]
    if not convs:
        return
    probe = keras.Model(model.inputs[0], [conv.output for conv in convs])
    sums = [0.0] * len(convs)
    for batch in batches:
        outputs = probe(batch, training=False)
        outputs = outputs if isinstance(outputs, list | tuple) else [outputs]
        for i, output in enumerate(outputs):
            sums[i] = sums[i] + np.mean(np.asarray(output, np.float64), axis=(0, 1, 2))
    for conv, total in zip(convs, sums, strict=True):
        copy = quantized.get_layer(f"{conv.name}_quant").layer
        copy.bias.assign(copy.bias.numpy() - (total / len(batches)).astype(np.float32))


def is_quantized(model: keras.Model) -> bool:
    """Whether a model carries `FakeQuant` ranges (so its int8 LiteRT file
    needs no calibration data: `to_litert(model, path, "int8")`)."""
    return any(
        isinstance(layer, FakeQuant | FakeQuantWeights | FakeQuantInstanceNormalization)
        for layer in model._flatten_layers()
    )


def calibrate(model: keras.Model, images) -> None:
    """Sets the moving ranges of a model's `FakeQuant` layers from images.

    Runs the model in training mode on each batch (a norm or dropout layer
    behaves as in training too; the zoo's instance-norm generators are
    unaffected).

    Args:
        model: A model with `FakeQuant` layers.
        images: An array `(N, H, W, C)` (one batch) or a sequence of batches.
    """
    batches = [images] if isinstance(images, np.ndarray) else list(images)
    for batch in batches:
        model(np.asarray(batch, np.float32), training=True)
