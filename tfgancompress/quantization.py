"""Preparing a generator for int8: calibration, equalisation, sensitivity, QAT.

`tfgancompress.export.to_litert(..., quantization="int8")` calls these;
they are public so that a pipeline can run them as phases and report them.

Where int8 loses quality on instance-norm generators, and what each piece
does about it (measured on the vintage teacher's students at 256x256):

- Instance-norm statistics on one int8 grid collapse: the norms stay
  float32 (`export.to_litert(float_norms=True)`).
- A convolution in front of a norm has channels a hundredfold apart in
  range: `equalize_for_int8` rescales them (exact in float).
- One tensor may still defeat a single int8 grid. In the least-squares-
  refitted 1/20 student, every channel of the last up-sampling
  convolution's output has a sparse negative tail at 50 standard
  deviations (range [-240, 24], bulk std ~4). The norm after it needs
  those pixels (they carry a large part of the variance), so clipping
  them does not help; one int8 grid over the whole range leaves the bulk
  with two levels per standard deviation. That one tensor took the file
  from 37.5 dB to 26.2 dB PSNR against the float model; every other
  tensor, quantized on its own, costs less than 0.002 of the output's
  power (>= 44 dB). `int8_sensitivity` measures this per tensor, in Keras,
  by fake-quantizing one tensor at a time with the calibration ranges
  (the simulation agrees with the LiteRT file: 26.2 vs 27.0 dB), and
  `plan_int8` keeps the convolutions whose output alone costs more than
  `min_layer_psnr` in float32 (`to_litert` keeps the activation after such
  a convolution in float32 too, so the int8 rounding comes after a ReLU
  that discards the tail; with the norms folded into the convolutions,
  `export.fold_instance_norms`, that made 20.97 -> 22.63 dB against the
  teacher, fp32 22.91).
- What remains is many small roundings adding up along the network
  (37.9 dB simulated for that student, 36.8 dB measured: 0.14 dB PSNR
  against the teacher). `fake_quantized` gives the Keras model that
  simulates the file (`keras_layers.FakeQuant` on every rounded tensor):
  the starting point of quantization-aware training, should a student
  ever need more than the plan. (`quantize_generator`, below, is the
  quantization-aware model GAN Slimming trains from the start.)
- On trained students those small roundings can add up to far more
  (the bench's `gs_perc` row: 26.0 dB against the float model with the
  per-layer plan, 0.95 dB lost against the teacher), and a single tensor
  can cost a lot without being a convolution's output: the ReLU output
  of the last up-sampling norm (float32, outliers again) rounded on its
  way into the output convolution, 24.6 dB alone. A whole-output target
  (`plan_int8(..., target_psnr=...)`, `to_litert`'s
  `int8_target_psnr`) keeps more layers float32, the costliest first,
  until the simulated output meets it. The simulation rounds a tensor
  where the file does: where an int8 op writes or reads it, so keeping
  the output convolution float32 removes that ReLU's rounding (with the
  padding in between kept float32 too), and keeping residual adds
  float32 leaves the residual stream unrounded but for its copies into
  each block's int8 convolution. One add alone gains little (its int8
  neighbours round the stream anyway), so the greedy also offers every
  add at once and takes them when that gains the most PSNR per float32
  operation (`float_work`).

Example:

```python
plan = tgc.quantization.plan_int8(student, calibration_images, target_psnr=35)
plan.float_layers          # ['block8_add', ..., 'up2_conv', 'out_conv']
plan.sensitivity["up2_conv"]  # 28.0 (dB, that tensor alone in int8)
plan.planned_psnr          # 35.7 (dB against the float model, simulated)
tgc.export.to_litert(student, "s8.tflite", "int8", calibration_images)
```

Quantization-aware training: `quantize_generator(model)` returns a copy of a
functional generator that computes in simulated 8-bit arithmetic, GAN
Slimming's quantizer (GS-8):

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
two (`tests/test_quantization_aware.py`).

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

import dataclasses
import warnings
from collections.abc import Iterable, Mapping, Sequence

import keras
import numpy as np
import tensorflow as tf

from keras_layers.conv import SuperConv2D, SuperConv2DTranspose
from keras_layers.norm import InstanceNormalization, ReflectionPadding2D
from keras_layers.quant import (
    FakeQuant,
    FakeQuantInstanceNormalization,
    FakeQuantWeights,
)
from tfgancompress.profile import profile

MAX_CALIBRATION_SAMPLES = 200
MIN_CALIBRATION_SAMPLES = 16

# Layers whose output LiteRT keeps on their input's int8 grid (copies,
# zero padding), so they add no rounding of their own.
_SAME_GRID = (
    ReflectionPadding2D,
    keras.layers.ZeroPadding2D,
    keras.layers.Cropping2D,
    keras.layers.Reshape,
)
_CONVOLUTIONS = (
    keras.layers.Conv2D,
    keras.layers.Conv2DTranspose,
    keras.layers.DepthwiseConv2D,
)


def calibration_batches(representative_data, shape: tuple) -> Iterable[np.ndarray]:
    """Yields float32 batches of exactly `shape` from an array or iterable.

    Args:
        representative_data: An array of model inputs, or an iterable of
            input batches (of tuples/lists the first element is used).
        shape: The batch shape `(batch, height, width, channels)`.

    Yields:
        At most `MAX_CALIBRATION_SAMPLES` samples, in batches of `shape`.

    Raises:
        ValueError: If a batch does not fit `shape`.
    """
    if isinstance(representative_data, np.ndarray | tf.Tensor):
        representative_data = [representative_data]
    count = 0
    for item in representative_data:
        if isinstance(item, tuple | list):
            item = item[0]
        batch = np.asarray(item, np.float32)
        if batch.shape[1:] != shape[1:]:
            raise ValueError(
                f"representative_data batches must have shape (n,) + "
                f"{shape[1:]} to match the export input shape {shape}; got "
                f"{batch.shape}."
            )
        for start in range(0, len(batch) - shape[0] + 1, shape[0]):
            yield batch[start : start + shape[0]]
            count += shape[0]
            if count >= MAX_CALIBRATION_SAMPLES:
                return


def check_calibration_size(batches: list[np.ndarray]) -> None:
    samples = sum(len(batch) for batch in batches)
    if samples < MIN_CALIBRATION_SAMPLES:
        warnings.warn(
            f"int8 calibration on {samples} samples: activation ranges from "
            f"fewer than {MIN_CALIBRATION_SAMPLES} images miss the extremes of "
            "other images, which then clip. Pass more representative_data.",
            stacklevel=3,
        )


def _single_input_layer(layer: keras.layers.Layer):
    """The layer whose output is `layer`'s only input, or `None`."""
    nodes = getattr(layer, "_inbound_nodes", [])
    if len(nodes) != 1 or len(nodes[0].input_tensors) != 1:
        return None
    return nodes[0].input_tensors[0]._keras_history.operation


def _rescalable_conv(layer) -> bool:
    """A plain convolution whose output channels can be scaled and shifted."""
    return (
        isinstance(layer, keras.layers.Conv2D | keras.layers.Conv2DTranspose)
        and not isinstance(layer, SuperConv2D | SuperConv2DTranspose)
        and getattr(layer, "groups", 1) == 1
        and layer.data_format == "channels_last"
        and layer.activation is keras.activations.linear
        and len(layer._inbound_nodes) == 1
    )


def conv_norm_pairs(model: keras.Model) -> list[tuple]:
    """`(conv, norm)` for each instance norm fed only by a plain convolution.

    The convolution's output channels can be scaled and shifted (its
    output goes to the norm alone): what equalisation and norm folding
    rewrite. Only the model's own layers (not those of nested models) are
    searched.

    Args:
        model: A functional model.

    Returns:
        The pairs of layers, in graph order.
    """
    pairs = []
    for layer in getattr(model, "layers", []):
        if not isinstance(layer, InstanceNormalization):
            continue
        conv = _single_input_layer(layer)
        if (
            conv is not None
            and _rescalable_conv(conv)
            and [node.operation for node in conv._outbound_nodes] == [layer]
        ):
            pairs.append((conv, layer))
    return pairs


def _channel_scales(model: keras.Model, convs: list, batches) -> list[tuple]:
    """Per conv: the channel means over `batches` and equalising factors.

    Channel `c` of a conv's output spans `mean_c +- spread_c` over the
    calibration data; the factor `max(spread) / spread_c` (at most 1000)
    stretches every channel to the widest one.
    """
    probe = keras.Model(model.inputs[0], [conv.output for conv in convs])
    sums = [0.0] * len(convs)
    lows = [np.inf] * len(convs)
    highs = [-np.inf] * len(convs)
    for batch in batches:
        outputs = probe(batch, training=False)
        if len(convs) == 1:
            outputs = [outputs]
        for i, output in enumerate(outputs):
            output = np.asarray(output, np.float64)
            sums[i] = sums[i] + output.mean(axis=(0, 1, 2))
            lows[i] = np.minimum(lows[i], output.min(axis=(0, 1, 2)))
            highs[i] = np.maximum(highs[i], output.max(axis=(0, 1, 2)))
    scales = []
    for total, low, high in zip(sums, lows, highs, strict=True):
        mean = total / len(batches)
        spread = np.maximum(high - mean, mean - low)
        widest = max(float(spread.max()), 1e-12)
        scales.append((mean, widest / np.maximum(spread, widest * 1e-3)))
    return scales


def equalize_for_int8(model: keras.Model, representative_data) -> keras.Model:
    """A copy of `model` whose pre-norm activations suit one int8 range.

    An int8 tensor has one scale for all its channels. Before an instance
    norm, trained generators have channels whose ranges differ a hundredfold:
    the narrow ones keep only a few int8 levels, and the norm then scales
    their rounding error up to unit size. The norm ignores a positive scale
    and an offset per channel, so each convolution that feeds only an
    instance norm gets its output channels scaled by `a_c` (kernel and bias)
    and centred (its bias minus the channel's mean over the calibration
    data), and the norm's epsilon becomes `epsilon * a_c**2`: the copy
    computes the same function up to float rounding, with every channel
    spanning the same range. Other layers are copied unchanged; so are
    models without such pairs among their own (not nested) layers.

    Args:
        model: A functional Keras model.
        representative_data: Inputs to measure the channel ranges on, as for
            `to_litert`.

    Returns:
        The equalised copy, or `model` itself when nothing is to be done.

    Raises:
        ValueError: If `representative_data` holds no image batches or
            batches of different shapes.

    Example:

    >>> twin = equalize_for_int8(generator, images)
    >>> np.abs(twin(images) - generator(images)).max() < 1e-4
    True
    """
    pairs = conv_norm_pairs(model)
    if not pairs or len(model.inputs) != 1:
        return model
    if isinstance(representative_data, np.ndarray | tf.Tensor):
        representative_data = [representative_data]
    items = [
        np.asarray(item[0] if isinstance(item, tuple | list) else item, np.float32)
        for item in representative_data
    ]
    if not items or items[0].ndim != 4:
        raise ValueError(
            "representative_data must hold image batches (n, height, width, "
            f"channels) to measure channel ranges on; got {len(items)} items"
            f"{f' of shape {items[0].shape}' if items else ''}."
        )
    batches = list(calibration_batches(items, (1,) + items[0].shape[1:]))
    convs = [conv for conv, _ in pairs]
    scales = dict(zip(convs, _channel_scales(model, convs, batches), strict=True))
    epsilons = {}
    for conv, norm in pairs:
        factors = scales[conv][1]
        epsilons[norm] = list(np.asarray(norm.epsilon) * factors**2)

    def clone_layer(layer):
        config = layer.get_config()
        if layer in epsilons:
            config["epsilon"] = epsilons[layer]
        return layer.__class__.from_config(config)

    twin = keras.models.clone_model(model, clone_function=clone_layer)
    twin.set_weights(model.get_weights())
    for conv, _ in pairs:
        mean, factors = scales[conv]
        kernel, *bias = conv.get_weights()
        axis = -2 if isinstance(conv, keras.layers.Conv2DTranspose) else -1
        shape = [1] * kernel.ndim
        shape[axis] = -1
        weights = [kernel * factors.reshape(shape)]
        if bias:
            weights.append(factors * (bias[0] - mean))
        twin.get_layer(conv.name).set_weights([w.astype(np.float32) for w in weights])
    return twin


def _only_feeds_activations(layer) -> bool:
    consumers = [node.operation for node in layer._outbound_nodes]
    return bool(consumers) and all(
        isinstance(c, keras.layers.ReLU | keras.layers.Activation) for c in consumers
    )


def quantized_layers(model: keras.Model) -> list[str]:
    """The layers whose outputs an int8 LiteRT file rounds to int8.

    With float32 instance norms (the default recipe): the input, every
    convolution, every activation, add and other op output, except copies
    (padding, cropping) and norms whose only consumers are activations
    (LiteRT fuses the activation into the norm's float32 part and rounds
    after it).

    Args:
        model: A functional model (its own layers; nested models count as
            one layer).

    Returns:
        Layer names in graph order (the input layer first).
    """
    names = []
    for layer in model.layers:
        if isinstance(layer, _SAME_GRID):
            continue
        if isinstance(layer, InstanceNormalization) and _only_feeds_activations(layer):
            continue
        names.append(layer.name)
    return names


def _probe(model: keras.Model, names: Sequence[str]) -> keras.Model:
    return keras.Model(model.inputs[0], [model.get_layer(n).output for n in names])


def image_batches(representative_data, batch_size: int) -> list[np.ndarray]:
    """Images from an array or an iterable of batches, re-cut into batches.

    Args:
        representative_data: An array of images or an iterable of batches
            (of tuples/lists the first element is used).
        batch_size: Images per returned batch.

    Returns:
        float32 batches of at most `batch_size` images.

    Raises:
        ValueError: If there are no images of rank 4.
    """
    if isinstance(representative_data, np.ndarray | tf.Tensor):
        images = np.asarray(representative_data, np.float32)
    else:
        images = np.concatenate(
            [
                np.asarray(item[0] if isinstance(item, tuple | list) else item)
                for item in representative_data
            ]
        ).astype(np.float32)
    if images.ndim != 4 or not len(images):
        raise ValueError(
            "representative_data must hold images (n, height, width, channels); "
            f"got shape {images.shape}."
        )
    return [images[i : i + batch_size] for i in range(0, len(images), batch_size)]


def activation_ranges(
    model: keras.Model,
    representative_data,
    layers: Sequence[str] | None = None,
    batch_size: int = 4,
) -> dict[str, tuple[float, float]]:
    """Min/max of each layer's output over the data, as LiteRT calibrates.

    Args:
        model: A functional model.
        representative_data: An array of inputs or an iterable of batches.
        layers: Layer names (default: `quantized_layers(model)`).
        batch_size: Images per forward pass.

    Returns:
        `{name: (low, high)}` with `low <= 0 <= high` and `high > low`.
    """
    names = list(quantized_layers(model) if layers is None else layers)
    probe = _probe(model, names)
    lows = np.full(len(names), np.inf)
    highs = np.full(len(names), -np.inf)
    for batch in image_batches(representative_data, batch_size):
        outputs = probe(batch, training=False)
        outputs = outputs if isinstance(outputs, list | tuple) else [outputs]
        for i, output in enumerate(outputs):
            output = np.asarray(output)
            lows[i] = min(lows[i], float(output.min()))
            highs[i] = max(highs[i], float(output.max()))
    ranges = {}
    for name, low, high in zip(names, lows, highs, strict=True):
        low, high = min(float(low), 0.0), max(float(high), 0.0)
        ranges[name] = (low, max(high, low + 1e-6))
    return ranges


def _rewired(model: keras.Model, after) -> keras.Model:
    """A copy of `model` (new layers, same weights) with `after(name, x)`
    applied to the output of every layer (and to the input)."""
    source = model.inputs[0]
    input_name = source._keras_history.operation.name
    inputs = keras.Input(batch_shape=source.shape, name=input_name)
    quantized_input = after(input_name, inputs)

    def rounded_input(tensor):
        return quantized_input if tensor is inputs else tensor

    def call(layer, *args, **kwargs):
        args = keras.tree.map_structure(rounded_input, args)
        return after(layer.name, layer(*args, **kwargs))

    twin = keras.models.clone_model(model, input_tensors=inputs, call_function=call)
    for layer in model.layers:
        if layer.weights:
            twin.get_layer(layer.name).set_weights(layer.get_weights())
    return twin


def fake_quantized(
    model: keras.Model, ranges: Mapping[str, tuple[float, float]]
) -> keras.Model:
    """A copy of `model` that rounds the named outputs as an int8 file does.

    Each layer named in `ranges` (the input layer included) is followed by
    a `keras_layers.FakeQuant` with that fixed range: the copy computes
    what the int8 LiteRT file computes, up to the int8 weights (rounded per
    channel; ~0.02 dB on the vintage students) and integer arithmetic.
    Training it is quantization-aware training (the straight-through
    gradient); the layers keep their names, so the trained weights copy
    back into the plain model by name.

    Args:
        model: A functional single-input model.
        ranges: `{layer name: (low, high)}`, e.g. `activation_ranges(...)`.

    Returns:
        The copy: new layers with the same weights, FakeQuant layers named
        `<layer>_fake_quant`.
    """

    def after(name, x):
        if name not in ranges:
            return x
        low, high = ranges[name]
        return FakeQuant(min_value=low, max_value=high, name=f"{name}_fake_quant")(x)

    return _rewired(model, after)


class _Switchable(keras.layers.Layer):
    """`x`, or its int8-rounded value while `active` is 1 (measurements only)."""

    def __init__(self, low: float, high: float, **kwargs):
        super().__init__(**kwargs)
        self.low, self.high = float(low), float(high)
        self.quant = FakeQuant(min_value=self.low, max_value=self.high)

    def build(self, input_shape):
        self.quant.build(input_shape)
        self.active = self.add_weight(
            shape=(), initializer="zeros", trainable=False, name="active"
        )

    def call(self, inputs):
        return inputs + self.active * (self.quant(inputs) - inputs)

    def get_config(self):
        return {**super().get_config(), "low": self.low, "high": self.high}


def _psnr(mse: float, peak: float) -> float:
    return float(10.0 * np.log10(peak**2 / max(mse, 1e-20)))


OUTPUT = "output"


class _Simulation:
    """A model whose every int8 rounding can be switched on or off, traced once.

    A rounding sits on each edge from a quantized tensor (`ranges`) to a
    layer reading it (through copies such as paddings) and on the model's
    output. The file rounds a tensor where an int8 op writes it or reads it:
    between two ops kept in float32 it stays float.
    """

    def __init__(self, model, ranges, batches):
        self.tensors = list(ranges)
        self.edges: list[tuple[str, str, _Switchable]] = []
        sources: dict[int, str] = {}

        def edge(tensor, consumer: str):
            producer = sources.get(id(tensor))
            if producer is None:
                return tensor
            switch = _Switchable(*ranges[producer], name=f"{producer}_to_{consumer}")
            self.edges.append((producer, consumer, switch))
            return switch(tensor)

        def call(layer, *args, **kwargs):
            if isinstance(layer, _SAME_GRID):  # a copy: rounded where it is read
                outputs = layer(*args, **kwargs)
                if id(args[0]) in sources:
                    sources[id(outputs)] = sources[id(args[0])]
                return outputs

            def read(x):
                return edge(x, layer.name) if isinstance(x, keras.KerasTensor) else x

            args = keras.tree.map_structure(read, args)
            outputs = layer(*args, **kwargs)
            if layer.name in ranges:
                sources[id(outputs)] = layer.name
            return outputs

        source = model.inputs[0]
        input_name = source._keras_history.operation.name
        inputs = keras.Input(batch_shape=source.shape, name=input_name)
        if input_name in ranges:
            sources[id(inputs)] = input_name
        twin = keras.models.clone_model(model, input_tensors=inputs, call_function=call)
        for layer in model.layers:
            if layer.weights:
                twin.get_layer(layer.name).set_weights(layer.get_weights())
        self.model = keras.Model(inputs, edge(twin.outputs[0], OUTPUT))
        self.batches = batches
        self.run = tf.function(lambda x: self.model(x, training=False))
        self.reference = [np.asarray(self.run(b)) for b in batches]

    def psnr(
        self,
        rounded: Iterable[str],
        float_ops: Iterable[str] = (),
        peak: float = 2.0,
        samples: int | None = None,
    ) -> float:
        """Output PSNR against the float model with these tensors rounded.

        Args:
            rounded: Quantized tensors (layer names) to round.
            float_ops: Layers the file computes in float32: a tensor passed
                from one of them to another (or to the output) is not
                rounded.
            peak: Peak-to-peak range of the output.
            samples: Compare on the first `samples` images (default: all).
        """
        rounded, float_ops = set(rounded), {*float_ops, OUTPUT}
        for producer, consumer, switch in self.edges:
            both_float = producer in float_ops and consumer in float_ops
            switch.active.assign(1.0 if producer in rounded and not both_float else 0.0)
        left = sum(len(b) for b in self.batches) if samples is None else samples
        squared, count = 0.0, 0
        for batch, reference in zip(self.batches, self.reference, strict=True):
            if left <= 0:
                break
            error = (np.asarray(self.run(batch)) - reference)[:left]
            squared += float(np.sum(np.square(error, dtype=np.float64)))
            count += error.size
            left -= len(error)
        return _psnr(squared / count, peak)


def int8_sensitivity(
    model: keras.Model,
    representative_data,
    samples: int = 8,
    batch_size: int = 4,
    peak: float = 2.0,
    ranges: Mapping[str, tuple[float, float]] | None = None,
) -> dict[str, float]:
    """What rounding each quantized tensor alone costs the model's output.

    Each output of `quantized_layers(model)` is fake-quantized on its own,
    with its calibration range (min/max over `representative_data`, as the
    LiteRT converter calibrates), and the model's output compared with the
    float model's on the first `samples` images.

    Args:
        model: A functional single-input model (equalise it first, as
            `to_litert` does, to measure what the file will do).
        representative_data: Calibration images.
        samples: Images the outputs are compared on.
        batch_size: Images per forward pass.
        peak: Peak-to-peak range of the output (2 for images in [-1, 1]).
        ranges: Calibration ranges, if already measured.

    Returns:
        `{layer name: PSNR dB of the output against the float model}`, in
        graph order; low numbers are the tensors int8 hurts.
    """
    batches = image_batches(representative_data, batch_size)
    ranges = ranges or activation_ranges(model, batches, batch_size=batch_size)
    simulation = _Simulation(model, ranges, _first(batches, samples))
    return {name: simulation.psnr([name], peak=peak) for name in simulation.tensors}


def _first(batches: list[np.ndarray], samples: int) -> list[np.ndarray]:
    images = np.concatenate(batches)[:samples]
    size = len(batches[0])
    return [images[i : i + size] for i in range(0, len(images), size)]


@dataclasses.dataclass
class Int8Plan:
    """Which layers an int8 file keeps in float32, and why.

    Attributes:
        sensitivity: `{layer: PSNR dB}` of the output with only that
            layer's output in int8 (`int8_sensitivity`).
        float_layers: Layers kept in float32 besides the norms, in graph
            order: convolutions whose output alone cost more than
            `min_layer_psnr`, then, for a `target_psnr`, convolutions and
            adds (the residual stream) until the target was met.
        all_int8_psnr: Simulated PSNR of the output against the float
            model with every quantized tensor in int8.
        planned_psnr: The same with `float_layers` in float32.
        target_psnr: The whole-output target the plan was made for, or
            `None` (the per-layer threshold only).
        steps: The greedy's steps towards the target: `(layers added,
            planned PSNR dB)`, the first with none added.
    """

    sensitivity: dict[str, float]
    float_layers: list[str]
    all_int8_psnr: float
    planned_psnr: float
    target_psnr: float | None = None
    steps: list[tuple[list[str], float]] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict:
        """A JSON-serializable dict."""
        return dataclasses.asdict(self)


def _can_stay_float(layer) -> bool:
    return isinstance(layer, _CONVOLUTIONS) and not isinstance(
        layer, SuperConv2D | SuperConv2DTranspose
    )


def activations_after(layers: Sequence[keras.layers.Layer]) -> list:
    """The activation layers that alone consume `layers`' outputs.

    A layer kept float32 keeps such an activation float32 too (LiteRT
    fuses it), so the int8 rounding comes after it: before a ReLU, the
    rounding would span the negative tail the ReLU discards.
    """
    found = []
    for layer in layers:
        consumers = [node.operation for node in layer._outbound_nodes]
        if len(consumers) == 1 and isinstance(
            consumers[0], keras.layers.ReLU | keras.layers.Activation
        ):
            found.append(consumers[0])
    return found


def copies_into(layers: Sequence[keras.layers.Layer]) -> list:
    """The copy layers (paddings, ...) that feed only `layers` (or each other).

    A float32 layer reading a float32 tensor through a padding keeps the
    padding float32 too; an int8 padding would round the tensor on its way.
    """
    kept = {layer.name for layer in layers}
    found, frontier = [], list(layers)
    while frontier:
        for node in frontier.pop()._inbound_nodes:
            for tensor in node.input_tensors:
                producer = tensor._keras_history.operation
                consumers = [n.operation.name for n in producer._outbound_nodes]
                if (
                    isinstance(producer, _SAME_GRID)
                    and producer.name not in kept
                    and set(consumers) <= kept
                ):
                    kept.add(producer.name)
                    found.append(producer)
                    frontier.append(producer)
    return found


def _float_ops(model: keras.Model, float_layers: Sequence[str]) -> set[str]:
    """The layers an int8 file with float norms computes in float32.

    Every instance norm and the activation fused into it, the
    `float_layers` and the activations fused into those.
    """
    norms = [
        layer for layer in model.layers if isinstance(layer, InstanceNormalization)
    ]
    kept = [model.get_layer(name) for name in float_layers]
    return {layer.name for layer in norms + kept + activations_after(norms + kept)}


def check_target_psnr(target_psnr: float | None, name: str = "target_psnr") -> None:
    """Raises `ValueError` unless `target_psnr` is `None` or in (0, 100] dB."""
    if target_psnr is None:
        return
    if (
        isinstance(target_psnr, bool)
        or not isinstance(target_psnr, int | float)
        or not 0.0 < target_psnr <= 100.0
    ):
        raise ValueError(
            f"{name} must be None or a PSNR in dB of the int8 output "
            f"against the float model, in (0, 100]; got {target_psnr!r}."
        )


def _sources(layer) -> list[str]:
    """The layers whose outputs `layer` reads, looking through copies."""
    found = []
    for node in layer._inbound_nodes:
        for tensor in node.input_tensors:
            producer = tensor._keras_history.operation
            while isinstance(producer, _SAME_GRID):
                tensor = producer._inbound_nodes[0].input_tensors[0]
                producer = tensor._keras_history.operation
            found.append(producer.name)
    return found


def _cost(model, name: str, floats: set[str], sensitivity: Mapping) -> float:
    """The lowest sensitivity among the roundings keeping `name` float removes."""
    read = _sources(model.get_layer(name))
    removed = [name] + [n for n in read if n in floats and n in sensitivity]
    return min(sensitivity[n] for n in removed)


def float_work(model: keras.Model, names: Sequence[str], input_shape) -> dict:
    """What keeping each layer in float32 costs, in operations per image.

    A convolution's multiply-accumulates plus its output elements (an add:
    its output elements, one addition each): the work the file does in
    float32 instead of int8. The greedy of `plan_int8` divides its PSNR
    gains by this.

    Args:
        model: A functional model.
        names: Layer names of `model`.
        input_shape: `(height, width, channels)` of one image.

    Returns:
        `{name: operations}`, each at least 1.
    """
    layers = {p.name: p for p in profile(model, tuple(input_shape)).per_layer}
    work = {}
    for name in names:
        found = layers[name]
        work[name] = max(1, found.macs + int(np.prod(found.output_shape[1:])))
    return work


def _keep_float_until(
    simulation: _Simulation,
    model: keras.Model,
    sensitivity: Mapping[str, float],
    candidates: Sequence[str],
    float_layers: list[str],
    target_psnr: float | None,
    peak: float = 2.0,
    stream: Sequence[str] = (),
) -> list[tuple[list[str], float]]:
    """Adds candidates to `float_layers` (in place) until the target is met.

    A layer kept float32 removes the rounding of its own output and of
    the float32 tensors it reads (a convolution reading a float norm's
    output through a padding), so each candidate's cost is the lowest
    `sensitivity` among those tensors; the costliest is the next single
    layer. The `stream` layers (the residual adds) are one more candidate,
    all of them float32 together: an add kept float32 leaves the stream
    unrounded only between float32 neighbours, so one at a time they gain
    little until the last. Each step simulates both and adds the stream
    when its PSNR gain per unit of float32 work (`float_work`) beats the
    single layer's, until the simulated output reaches `target_psnr`.

    Returns:
        `[(layers added, planned PSNR dB)]`, one entry per step (none
        added at the start).
    """

    def planned(names) -> float:
        return simulation.psnr(simulation.tensors, _float_ops(model, names), peak)

    steps: list[tuple[list[str], float]] = [([], planned(float_layers))]
    rest = [name for name in candidates if name not in float_layers]
    if target_psnr is None or steps[-1][1] >= target_psnr:
        return steps
    ceiling = planned([*float_layers, *rest])
    if ceiling < target_psnr:
        warnings.warn(
            f"int8 plan for {model.name!r}: {ceiling:.1f} dB against the float "
            "model with every convolution and add in float32, short of "
            f"target_psnr={target_psnr}; the rounding left is in other tensors "
            "(see the plan's sensitivity). Keeping the per-layer plan.",
            stacklevel=3,
        )
        return steps
    work = float_work(model, rest, simulation.batches[0].shape[1:])
    while steps[-1][1] < target_psnr and rest:
        floats = _float_ops(model, float_layers)
        costs = {name: _cost(model, name, floats, sensitivity) for name in rest}
        added = [min(rest, key=costs.get)]
        psnr = planned([*float_layers, *added])
        group = [name for name in stream if name in rest]
        if len(group) > 1:
            group_psnr = planned([*float_layers, *group])
            gain, group_gain = psnr - steps[-1][1], group_psnr - steps[-1][1]
            per_work = gain / sum(work[n] for n in added)
            if group_gain > 0 and group_gain / sum(work[n] for n in group) > per_work:
                added, psnr = group, group_psnr
        rest = [name for name in rest if name not in added]
        float_layers.extend(added)
        steps.append((added, psnr))
    return steps


# The whole-output target `to_litert` asks of its int8 plan (dB against the
# float model, simulated). Measured on the bench's `gs_perc` row (fp32
# 22.19 dB against the teacher): the per-layer plan's file lost 0.95 dB
# (27.0 dB from the float model); at target 35 the file is 35.0 dB from it
# and loses 0.36 dB, at 36 36.4 dB and 0.22 dB.
DEFAULT_TARGET_PSNR = 35.0
# Images `plan_int8` simulates the whole output on (the bench calibrates on
# 32 views): on 8 the `dmad_s025` row's plan read 35.0 dB where the
# held-out photos saw 32.0 (README, "A whole-output target").
DEFAULT_TARGET_SAMPLES = 32


def plan_int8(
    model: keras.Model,
    representative_data,
    min_layer_psnr: float = 40.0,
    samples: int = 8,
    batch_size: int = 4,
    peak: float = 2.0,
    equalize: bool = True,
    target_psnr: float | None = None,
    target_samples: int = DEFAULT_TARGET_SAMPLES,
    residual_stream: bool = True,
) -> Int8Plan:
    """Measures each tensor's int8 cost; picks the layers to keep float.

    A convolution stays float32 when rounding its output alone to int8
    brings the model's output below `min_layer_psnr` against the float
    model (`int8_sensitivity`, on the first `samples` images). With
    `target_psnr`, more convolutions and adds (the residual stream) stay
    float32 until the simulated output with everything else in int8
    (`planned_psnr`, on the first `target_samples` images) reaches the
    target: many moderate roundings add up. Each step compares two
    candidates: the layer whose float32 removes the costliest rounding,
    and (`residual_stream`) every add not yet float32 together, taken when
    its PSNR gain per unit of float32 work (`float_work`) is the better.
    One add at a time gains little: it leaves the stream unrounded only
    between float32 neighbours. The simulation rounds a
    tensor where the file does: where an int8 op writes or reads it (a
    residual stream kept float32 is rounded only on its way into each
    block's int8 convolution, not along the stream). The model is
    measured as `to_litert` exports it: convolutions in front of
    instance norms equalised first.

    The int8 error adds to the student's error against its teacher
    (independent errors): a file at `P_q` dB from the float model, of a
    student at `P` dB from the teacher, loses `10 log10(1 + 10**((P -
    P_q) / 10))` dB, 0.5 dB at `P_q = P + 9.1`, per image: a PSNR
    averaged over images loses more, its best images being closest to
    the int8 error. At the bench's 22-25 dB that asks 34 dB and more of
    the file (`DEFAULT_TARGET_PSNR`); the file ends within ~1 dB of the
    simulation.

    Args:
        model: A functional single-input model.
        representative_data: Calibration images (as for `to_litert`).
        min_layer_psnr: Threshold in dB. 40 dB is 1e-4 of the output's
            peak power: tens of such tensors still add up to ~30 dB.
        samples: Images the sensitivity is measured on.
        batch_size: Images per forward pass.
        peak: Peak-to-peak range of the output.
        equalize: Equalise `model` first (`False` if it already is).
        target_psnr: Whole-output target in dB against the float model
            (`DEFAULT_TARGET_PSNR` is what `to_litert` asks), or `None`
            for the per-layer threshold alone. A target that keeping every
            convolution and add float32 would not reach warns and leaves
            the per-layer plan.
        target_samples: Images the whole output is simulated on (at least
            `samples`): 8 images overstated the held-out photos' PSNR by
            3 dB on a bench row (README, "A whole-output target").
        residual_stream: Offer the adds together as one candidate
            (`False`: single layers only, the plan before it).

    Returns:
        An `Int8Plan`.

    Raises:
        ValueError: If `target_psnr` is not `None` or in (0, 100] dB, or
            `target_samples < samples`.
    """
    check_target_psnr(target_psnr)
    if target_samples < samples:
        raise ValueError(
            f"target_samples ({target_samples}) must be at least samples ({samples})."
        )
    batches = image_batches(representative_data, batch_size)
    if equalize:
        model = equalize_for_int8(model, batches)
    ranges = activation_ranges(model, batches, batch_size=batch_size)
    simulation = _Simulation(model, ranges, _first(batches, target_samples))
    tensors = simulation.tensors
    sensitivity = {
        name: simulation.psnr([name], peak=peak, samples=samples) for name in tensors
    }
    convolutions = [n for n in tensors if _can_stay_float(model.get_layer(n))]
    float_layers = [n for n in convolutions if sensitivity[n] < min_layer_psnr]
    adds = [n for n in tensors if isinstance(model.get_layer(n), keras.layers.Add)]
    candidates = [n for n in tensors if n in convolutions or n in adds]

    steps = _keep_float_until(
        simulation,
        model,
        sensitivity,
        candidates,
        float_layers,
        target_psnr,
        peak,
        adds if residual_stream else (),
    )
    return Int8Plan(
        sensitivity=sensitivity,
        float_layers=[n for n in tensors if n in float_layers],
        all_int8_psnr=simulation.psnr(tensors, _float_ops(model, []), peak),
        planned_psnr=steps[-1][1],
        target_psnr=target_psnr,
        steps=steps,
    )


# Quantization-aware training (GAN Slimming's GS-8) -------------------------

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
        float_layers: frozenset[str] = frozenset(),
    ):
        self.consumers = _consumer_map(model)
        self.float_layers = float_layers
        self.activation_max = float(activation_max)
        self.quantize_input = quantize_input
        self.num_bits = int(num_bits)
        self.copies: list[tuple[keras.layers.Layer, keras.layers.Layer]] = []

    def feeds_kernels_only(self, layer) -> bool:
        """Whether every consumer of `layer` is a convolution (through paddings)."""
        consumers = self.consumers.get(id(layer), [])
        return bool(consumers) and all(
            isinstance(c, _CONVOLUTIONS)
            or (isinstance(c, _PADDING_LAYERS) and self.feeds_kernels_only(c))
            for c in consumers
        )

    def feeds_norms_only(self, layer) -> bool:
        """Whether `layer` is a quantized convolution read only by instance norms."""
        consumers = self.consumers.get(id(layer), [])
        return (
            isinstance(layer, _CONVOLUTIONS)
            and layer.name not in self.float_layers
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
            if isinstance(layer, _CONVOLUTIONS):
                (x,) = args
                quantizer = self.input_quantizer(x, f"{layer.name}_input_quant")
                if quantizer is not None:
                    x = quantizer(x)
                if layer.name in self.float_layers:  # float32 in the int8 file
                    return copy(x)
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
    float_layers: Sequence[str] = (),
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
        float_layers: Convolutions that stay float32 in the int8 file: no
            weight or output quantizer (a norm reading one keeps a float
            input), so the converter runs them in float between a
            dequantize and a quantize op. `plan_int8(model, images).float_layers`
            names those whose int8 output alone costs the most.

    Returns:
        A new functional model, same input and output, with copies of the
        weights; its `FakeQuantWeights` wrap the convolutions (named
        `<conv>_quant`) and its `FakeQuant` layers are named
        `<conv>_input_quant`, `<conv>_output_quant` and `<relu>_quant`.

    Raises:
        ValueError: If the model is not functional, has several inputs or a
            nested model, `activation_max` is not positive, or
            `float_layers` names a layer that is not one of its
            convolutions.

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
    convolutions = {
        layer.name for layer in model.layers if isinstance(layer, _CONVOLUTIONS)
    }
    unknown = sorted(set(float_layers) - convolutions)
    if unknown:
        raise ValueError(
            f"float_layers {unknown} are not convolutions of {model.name!r}; "
            f"its convolutions are {sorted(convolutions)}."
        )
    quantizer = _Quantizer(
        model, activation_max, quantize_input, num_bits, frozenset(float_layers)
    )
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
