"""Ship a Keras generator as LiteRT (TFLite), ONNX or a TensorFlow SavedModel.

LiteRT files contain builtin ops only (no flex/`SELECT_TF_OPS`, no custom
ops): Android's runtime lacks them. The conversion path is Keras
`ExportArchive` (the model's inference-mode call at a fixed input shape) ->
SavedModel -> `tf.lite.TFLiteConverter.from_saved_model`, the path Keras's
own LiteRT export takes. (`from_concrete_functions` gives NaN outputs on
this stack: weights stay unfrozen variables.) Every file is written
atomically (`tfgancompress.atomic`): a failed or killed export leaves the
destination as it was, never half-written.

Before conversion `to_litert` applies `tfgancompress.lowering` (exact
rewrites; `lowering=False` turns them off): transposed convolutions become
sub-pixel convolutions (`CONV_2D` + `DEPTH_TO_SPACE`, which XNNPACK runs
much faster per MAC than `TRANSPOSE_CONV`), and the 3-channel output
convolution runs on a 2x coarser grid (`SPACE_TO_DEPTH` + `CONV_2D` to 12
channels + `DEPTH_TO_SPACE`), and instance norms take one-pass statistics
(`one_pass_norms`; `norm_statistics_stride` is the approximate, opt-in
further step). Layer names are kept, so `float_layers` and
the contract's `float32_convolutions` name the original layers.

Quantization (`to_litert(..., quantization=...)`):

| value       | weights         | activations | needs                 |
|-------------|-----------------|-------------|-----------------------|
| `None`      | float32         | float32     |                       |
| `"fp16"`    | float16 (file)  | float32     |                       |
| `"dynamic"` | int8            | float32     |                       |
| `"int8"`    | int8/channel    | int8        | `representative_data` |

`"int8"` keeps float32 input and output tensors (a quantize op after the
input, a dequantize op before the output): callers feed the same images as
to the Keras model while the kernels inside run in int8.

The int8 recipe for instance-norm generators (`float_norms=True`, the
default). Measured on the vintage generators at 256x256, calibrated on 16
training crops, PSNR of the int8 file against the float32 model on the 9
held-out photos: 1/4-width L1-pruned student 21.1 dB all-int8 -> 35.4 dB,
the same with a 1x1 colour skip -> ~46 dB, the full teacher 14.2 -> 22.3
dB; the speed is unchanged (int8 ~2.4x faster than float32 on the student).
Where the all-int8 error came from (intermediate tensors compared):

- The statistics: the variance and its `rsqrt` are per-channel values
  spanning orders of magnitude, quantized on one int8 grid; small-variance
  channels round to 0 variance and blow up. So every `InstanceNormalization`
  (statistics, normalization, affine and an activation fused into it) stays
  float32 between a dequantize and a quantize op (selective quantization
  through `tf.lite.experimental.QuantizationDebugger`). XNNPACK runs these
  float ops too: no speed is lost, the graph stays in one partition.
- The convolution output in front of a norm is one int8 tensor whose
  channels differ a hundredfold in range; the norm scales the narrow
  channels' rounding error up to unit size. `equalize_for_int8` rescales
  and centres those channels (the norm ignores both; its epsilon is scaled
  per channel so the float function is unchanged).
- Calibration on few images misses other images' extremes, which then clip
  (`MIN_CALIBRATION_SAMPLES`, a warning below it).

- One tensor can still defeat one int8 grid: in the least-squares-refitted
  1/20 student, the last up-sampling convolution's output has sparse
  outliers at 50 standard deviations that its norm needs, and its int8
  rounding alone took the file to 27 dB against the float model (1.9 dB
  PSNR lost against the teacher). `float_layers="auto"` (the default)
  measures each rounded tensor's cost in a Keras simulation
  (`tfgancompress.quantization.plan_int8`) and keeps the convolutions
  costing more than 40 dB in float32: 36.8 dB, 0.14 dB lost. See
  `tfgancompress.quantization` for the tensor-by-tensor analysis.
- Many moderate roundings can still add up (trained bench students: 27-33
  dB against the float model, up to 0.95 dB lost): the plan then keeps
  more convolutions and residual adds in float32 until its simulation of
  the whole output (on up to 32 calibration images) meets
  `int8_target_psnr` (35 dB by default; README, "A whole-output target
  for the plan"), the residual stream's adds all at once when that gains
  the most per float32 operation.

What remains (the teacher's 22 dB): trained ResNet activations are heavy-
tailed (single pixels 10-70 standard deviations out, most in the up-
sampling path), so one int8 grid per tensor is coarse for the bulk of the
values.

For the most speed, `fold_instance_norms` freezes the norms' statistics
into the convolutions (a different function: measure it); the folded
model's int8 file runs entirely in int8.

A model with `keras_layers.FakeQuant` layers (quantization-aware training)
already carries its activation ranges. `"int8"` then needs no
representative data: every convolution whose input and output carry a
FakeQuant gets int8 kernels (weights quantized per output channel by the
converter), and the ops without ranges (instance-norm statistics) stay
float32 between quantize/dequantize ops. Given representative data as well,
the recipe above applies (with `float_norms=False` the whole graph runs in
int8). Export such models with `"int8"`: with `None` the fake-quant ops stay
in the float file as quantize/dequantize pairs.

Speed on the CPU (XNNPACK), measured with `tfgancompress.latency` on the
vintage ResNet generator and its 1/4-width student at 256x256
(`benchmarks/results/speed.md`): `None` and `"int8"` run every full-size op
in XNNPACK (the layers lower to ops it has kernels for, in float32 and in
int8); `"int8"` with `representative_data` (per-channel int8 convolutions,
float32 instance norms) is the fast CPU format, ~2.4x faster than float32
on the student. `"dynamic"` is not a speed option on
x86. `"fp16"` halves the file and is the format for the GPU delegate
(which computes in half precision); on the CPU it dequantizes to float32.

Measured on 64x64, ngf-8 generators (InstanceNorm, reflection padding,
transposed convs), max/mean abs error against Keras: fp32 ~4e-6; fp16
~2e-3/3e-4; dynamic ~6e-2/8e-3; int8 (8 random calibration images,
random weights) ~0.25/0.04; FakeQuant model, int8 without data ~0.14/0.02.

Example:

```python
import tfgancompress as tgc

path = tgc.export.to_litert(generator, "g.tflite", input_shape=(1, 256, 256, 3))
tgc.export.litert_ops(path)  # ['CONV_2D', 'MEAN', ..., 'TANH']
y = tgc.export.run_litert(path, images)
```
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import tempfile
import warnings
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import keras
import numpy as np
import tensorflow as tf

from keras_layers.norm import InstanceNormalization
from keras_layers.quant import FakeQuant
from keras_layers.subpixel import SubPixelConv2D
from tfgancompress import lowering as _lowering
from tfgancompress import quantization as _quantization
from tfgancompress.atomic import atomic_path, atomic_write
from tfgancompress.quantization import (
    MAX_CALIBRATION_SAMPLES as MAX_CALIBRATION_SAMPLES,
)
from tfgancompress.quantization import (
    MIN_CALIBRATION_SAMPLES as MIN_CALIBRATION_SAMPLES,
)
from tfgancompress.quantization import equalize_for_int8 as equalize_for_int8

try:
    from ai_edge_litert import schema_py_generated as _schema
    from ai_edge_litert.interpreter import Interpreter as _Interpreter
    from ai_edge_litert.tools import flatbuffer_utils as _flatbuffer_utils
except ImportError:  # pragma: no cover - ai-edge-litert is a dependency
    from tensorflow.lite.python import schema_py_generated as _schema
    from tensorflow.lite.tools import flatbuffer_utils as _flatbuffer_utils

    _Interpreter = tf.lite.Interpreter

QUANTIZATIONS = (None, "fp16", "dynamic", "int8")

CONTRACT_METADATA = "tfgancompress.io"

# Permission checks as the process acts (a root process dropped to a user's
# effective id must not be told that root could write there).
_EFFECTIVE_IDS = os.access in os.supports_effective_ids

_BUILTIN_NAMES = {
    code: name
    for name, code in vars(_schema.BuiltinOperator).items()
    if not name.startswith("_")
}
_TENSOR_TYPES = {
    code: name.lower()
    for name, code in vars(_schema.TensorType).items()
    if not name.startswith("_")
}


class LiteRTOp(NamedTuple):
    """One operator of a LiteRT file.

    Attributes:
        name: Builtin op name (`"CONV_2D"`), or the custom code of a custom
            op (flex ops are custom ops named `"Flex<TfOp>"`).
        input_dtypes: Dtype name of each input tensor (`"float32"`,
            `"int8"`, ...), `None` for an omitted optional input.
        output_dtypes: Dtype name of each output tensor.
    """

    name: str
    input_dtypes: tuple[str | None, ...]
    output_dtypes: tuple[str, ...]


def _check_parent(path: str) -> None:
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.exists(parent) and not os.path.isdir(parent):
        raise NotADirectoryError(
            f"Cannot write {path!r}: {parent!r} is a file, not a directory."
        )
    if not os.path.isdir(parent):
        raise FileNotFoundError(
            f"Cannot write {path!r}: the directory {parent!r} does not exist."
        )
    if not os.access(parent, os.W_OK, effective_ids=_EFFECTIVE_IDS):
        raise PermissionError(
            f"Cannot write {path!r}: the directory {parent!r} is not writable."
        )


def _check_writable(path: str | os.PathLike) -> str:
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(f"Cannot write {path!r}: it is a directory, expected a file.")
    _check_parent(path)
    return path


def _model_input_shape(model: keras.Model) -> tuple:
    inputs = getattr(model, "inputs", None)
    if not inputs:
        return ()
    if len(inputs) != 1:
        raise ValueError(
            f"Export supports single-input models; {model.name!r} has "
            f"{len(inputs)} inputs."
        )
    return tuple(inputs[0].shape)


def _fixed_input_shape(model: keras.Model, input_shape: Sequence | None) -> tuple:
    """The fully known `(batch, ...)` input shape to export `model` at."""
    own = _model_input_shape(model)
    if input_shape is None:
        if not own or None in own[1:]:
            raise ValueError(
                f"The input shape of {model.name!r} is {own or 'unknown'}: pass "
                "input_shape=(batch, height, width, channels) to export it at a "
                "fixed size."
            )
        shape = (1 if own[0] is None else own[0],) + own[1:]
    else:
        shape = tuple(int(d) for d in input_shape)
        if own and len(shape) == len(own) - 1:
            shape = (1,) + shape
        compatible = len(shape) == len(own) and all(
            o is None or o == s for o, s in zip(own, shape, strict=True)
        )
        if own and not compatible:
            raise ValueError(
                f"input_shape {tuple(input_shape)} does not fit the input shape "
                f"{own} of {model.name!r}."
            )
    if any(d <= 0 for d in shape):
        raise ValueError(f"input_shape must be positive, got {shape}.")
    return shape


def _has_fake_quant(model: keras.Model) -> bool:
    return any(isinstance(layer, FakeQuant) for layer in model._flatten_layers())


def _channel_moments(probe: keras.Model, batches) -> list[tuple]:
    """Per output of `probe`: the mean over images of each channel's instance
    mean and variance."""
    sums, count = None, 0
    for batch in batches:
        outputs = probe(batch, training=False)
        outputs = outputs if isinstance(outputs, list | tuple) else [outputs]
        moments = []
        for output in outputs:
            output = np.asarray(output, np.float64)
            moments.append(
                np.stack([output.mean(axis=(1, 2)), output.var(axis=(1, 2))]).sum(1)
            )
        if sums is not None:
            moments = [a + b for a, b in zip(sums, moments, strict=True)]
        sums = moments
        count += len(batch)
    return [(total[0] / count, total[1] / count) for total in sums]


def _frozen_affine(norm, mean: np.ndarray, variance: np.ndarray) -> tuple:
    """`(scale, shift)`: the norm as `x * scale + shift` at these statistics."""
    scale = 1.0 / np.sqrt(variance + np.asarray(norm.epsilon, np.float64))
    if norm.scale:
        scale = scale * np.asarray(norm.gamma, np.float64)
    shift = -mean * scale + (np.asarray(norm.beta, np.float64) if norm.center else 0.0)
    return scale, shift


def _twin(model: keras.Model, call_function, use_bias=()) -> keras.Model:
    """A copy of `model` (own layers, weights copied) built by `call_function`.

    Layers named in `use_bias` get a bias (its weights are the caller's to
    set; the others' are copied).
    """

    def clone_layer(layer):
        config = layer.get_config()
        if layer.name in use_bias:
            config["use_bias"] = True
        return layer.__class__.from_config(config)

    twin = keras.models.clone_model(
        model, clone_function=clone_layer, call_function=call_function
    )
    for layer in twin.layers:
        if layer.weights and layer.name not in use_bias:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    return twin


def _joint_affines(model: keras.Model, norms: list, batches) -> dict[str, tuple]:
    """Each norm's frozen affine from the statistics it sees in `model`."""
    probe = keras.Model(model.inputs[0], [norm.input for norm in norms])
    moments = _channel_moments(probe, batches)
    return {
        norm.name: _frozen_affine(norm, *moment)
        for norm, moment in zip(norms, moments, strict=True)
    }


def _sequential_affines(model: keras.Model, norms: list, batches) -> dict:
    """Each norm's frozen affine from the statistics it sees once the norms
    before it are frozen (what it sees in the folded model)."""
    affines = {}
    for norm in norms:
        seen = {}

        def call(layer, *args, target=norm.name, seen=seen, **kwargs):
            if layer.name in affines:
                scale, shift = affines[layer.name]
                return args[0] * scale.astype("float32") + shift.astype("float32")
            if layer.name == target:
                seen["input"] = args[0]
            return layer(*args, **kwargs)

        twin = _twin(model, call)
        probe = keras.Model(twin.inputs[0], seen["input"])
        (moment,) = _channel_moments(probe, batches)
        affines[norm.name] = _frozen_affine(norm, *moment)
    return affines


STATISTICS = ("sequential", "joint")


def fold_instance_norms(
    model: keras.Model, representative_data, statistics: str = "sequential"
) -> keras.Model:
    """A copy of `model` whose instance norms are frozen into the convolutions.

    An instance norm computes per image and channel `(z - mean) / std`; a
    LiteRT file spends four to six full-size memory passes on it, more than
    the convolution in front of it at 1/20 of the vintage teacher's MACs.
    Frozen at the average statistics of the calibration images (per channel:
    the mean over images of the instance mean and of the instance
    variance), the norm is a per-channel affine map, which folds into the
    convolution feeding it: the copy is convolutions, activations and adds
    only, and its int8 file runs entirely in int8.

    This changes the function: measure its quality. Held-out PSNR against
    the teacher on the vintage students at 1/20 (`statistics="joint"`,
    then `"sequential"`): refitted, untrained 23.15 -> 22.91 dB; trained
    300 steps, distill 22.88 -> 22.78 / 22.81, uniform 22.36 -> 22.56 /
    22.79 (README, "Real speed-up"). Each norm fed only by a plain
    convolution is folded; other norms stay.

    Args:
        model: A functional single-input model.
        representative_data: Images to take the statistics on (an array or
            an iterable of batches), e.g. the int8 calibration images.
        statistics: `"sequential"`: each norm frozen at the statistics it
            sees in the copy, the norms before it already frozen (one
            forward pass over the images per norm, up to that norm);
            `"joint"`: every norm at the statistics it sees in `model`
            (one pass), so later norms see inputs they were not frozen on.

    Returns:
        The folded copy (layer names kept, norm layers removed), or
        `model` itself if no norm can be folded.

    Raises:
        ValueError: If `representative_data` holds no image batches, or
            `statistics` is unknown.

    Example:

    >>> fast = fold_instance_norms(student, calibration_images)
    >>> to_litert(fast, "fast_int8.tflite", "int8", calibration_images)
    """
    if statistics not in STATISTICS:
        raise ValueError(f"statistics must be one of {STATISTICS}, got {statistics!r}.")
    pairs = _quantization.conv_norm_pairs(model)
    if not pairs:
        return model
    batches = _quantization.image_batches(representative_data, 4)
    norms = [norm for _, norm in pairs]
    fit = _sequential_affines if statistics == "sequential" else _joint_affines
    affines = fit(model, norms, batches)
    folded = {}
    for conv, norm in pairs:
        scale, shift = affines[norm.name]
        kernel, *bias = conv.get_weights()
        if bias:
            shift = shift + bias[0] * scale
        axis = -2 if isinstance(conv, keras.layers.Conv2DTranspose) else -1
        shape = [1] * kernel.ndim
        shape[axis] = -1
        folded[conv.name] = [
            (kernel * scale.reshape(shape)).astype(np.float32),
            shift.astype(np.float32),
        ]

    def call(layer, *args, **kwargs):
        if layer.name in affines:
            return args[0]
        return layer(*args, **kwargs)

    twin = _twin(model, call, use_bias=folded)
    for name, weights in folded.items():
        twin.get_layer(name).set_weights(weights)
    return twin


def _saved_model_for(model: keras.Model, shape: tuple, directory: str) -> None:
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        "serve",
        lambda x: model(x, training=False),
        input_signature=[keras.InputSpec(shape=shape, dtype="float32")],
    )
    archive.write_out(directory, verbose=False)


def _configure(
    converter: tf.lite.TFLiteConverter,
    quantization: str | None,
    batches: list[np.ndarray] | None,
) -> None:
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    converter.allow_custom_ops = False
    if quantization is None:
        return
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantization == "fp16":
        converter.target_spec.supported_types = [tf.float16]
    elif quantization == "int8" and batches is not None:
        converter.target_spec.supported_ops = [
            tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
            tf.lite.OpsSet.TFLITE_BUILTINS,
        ]
        converter.representative_dataset = lambda: ([b] for b in batches)


def _layer_tensors(flatbuffer: bytes, layer_names: Iterable[str]) -> list[str]:
    """Names of the tensors computed inside the named layers.

    The converter names each tensor after the TensorFlow name scope of its
    op (`model_1/block1_norm1_1/Mean`); an activation fused into the norm's
    last op carries both names, joined by `;`.
    """
    names = sorted(layer_names)
    if not names:
        return []
    scope = re.compile(
        r"(?:^|[/;])(?:" + "|".join(map(re.escape, names)) + r")(?:_\d+)?/"
    )
    model = _schema.ModelT.InitFromPackedBuf(flatbuffer, 0)
    return sorted(
        {
            tensor.name.decode()
            for tensor in model.subgraphs[0].tensors
            if scope.search(tensor.name.decode())
        }
    )


def _statistics_tensors(flatbuffer: bytes, norm_names: Iterable[str]) -> list[str]:
    """Names of the per-channel statistics tensors computed inside the norms.

    The tensors of the named layers whose spatial size is 1x1 (variance,
    `rsqrt`, scale, shift), except the `MEAN` outputs: their `MEAN` reads
    the full-size input, which stays int8.
    """
    inside = set(_layer_tensors(flatbuffer, norm_names))
    model = _schema.ModelT.InitFromPackedBuf(flatbuffer, 0)
    graph = model.subgraphs[0]
    found = set()
    for operator in graph.operators:
        code = model.operatorCodes[operator.opcodeIndex]
        op = _BUILTIN_NAMES.get(max(code.builtinCode, code.deprecatedBuiltinCode))
        for index in operator.outputs:
            tensor = graph.tensors[index]
            name = tensor.name.decode()
            shape = list(tensor.shape)
            small = len(shape) == 4 and shape[1] == shape[2] == 1
            if name in inside and small and op != "MEAN":
                found.add(name)
    return sorted(found)


def _convert_int8_float_layers(
    converter: tf.lite.TFLiteConverter,
    directory: str,
    float_layers: list[keras.layers.Layer],
    batches: list[np.ndarray],
    int8_norms: Sequence[str] = (),
) -> bytes:
    """Full int8 conversion that keeps the given layers in float32.

    Selective quantization through TensorFlow's quantization debugger: the
    tensors of the layers (found in a float conversion of the same
    SavedModel) are denylisted, so the file runs each of them (for a norm:
    statistics, normalization, affine and a fused activation) in float32
    between a dequantize and a quantize op, and everything else in int8.
    The quantizer ignores the node denylist for TRANSPOSE_CONV: a
    transposed convolution among `float_layers` keeps all of them float32.
    """
    float_model = tf.lite.TFLiteConverter.from_saved_model(directory).convert()
    denylist = _layer_tensors(float_model, [layer.name for layer in float_layers])
    denylist += _statistics_tensors(float_model, int8_norms)
    transposed = any(
        isinstance(layer, keras.layers.Conv2DTranspose) for layer in float_layers
    )
    with warnings.catch_warnings():
        # The debugger opens its (unused) debug model with tf.lite.Interpreter.
        warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated")
        debugger = tf.lite.experimental.QuantizationDebugger(
            converter=converter,
            debug_dataset=lambda: ([b] for b in batches[:1]),
            debug_options=tf.lite.experimental.QuantizationDebugOptions(
                denylisted_nodes=denylist,
                denylisted_ops=["TRANSPOSE_CONV"] if transposed else None,
            ),
        )
    return debugger.get_nondebug_quantized_model()


def _float_layers(
    model: keras.Model,
    float_layers: Sequence[str] | str,
    batches: list,
    target_psnr: float | None,
) -> list[keras.layers.Layer]:
    """The instance norms and the chosen convolutions (and adds) of `model`."""
    if isinstance(float_layers, str):
        if float_layers != "auto":
            raise ValueError(
                f'float_layers must be "auto" or a list of layer names, got '
                f"{float_layers!r}."
            )
        plan = _quantization.plan_int8(
            model, batches, equalize=False, target_psnr=target_psnr
        )
        float_layers = plan.float_layers
    names = {layer.name for layer in model.layers}
    unknown = sorted(set(float_layers) - names)
    if unknown:
        raise ValueError(f"float_layers {unknown} are not layers of {model.name!r}.")
    norms = [
        layer
        for layer in model._flatten_layers()
        if isinstance(layer, InstanceNormalization)
    ]
    convolutions = [model.get_layer(name) for name in float_layers]
    return (
        norms
        + convolutions
        + _quantization.activations_after(convolutions)
        + _quantization.copies_into(convolutions)
    )


def _split_norms(layers: list) -> tuple[list, list]:
    """`(kept float32, norms to run in int8)`: a norm stays float32 when its
    input comes from a layer kept float32 (the tensor whose rounding the
    plan avoided); the others run their full-size passes in int8."""
    float_inputs = {
        layer.name for layer in layers if not isinstance(layer, InstanceNormalization)
    }
    kept, in_int8 = [], []
    for layer in layers:
        if isinstance(layer, InstanceNormalization):
            producer = layer.input._keras_history.operation
            if producer.name not in float_inputs:
                in_int8.append(layer)
                continue
        kept.append(layer)
    return kept, in_int8


def _in_converted_model(model: keras.Model, layers: list) -> list:
    """`layers` (of the model before lowering) as layers of `model`.

    LiteRT's quantizer keeps transposed convolutions float32 by op type
    only (see `_convert_int8_float_layers`): if one of them stays float32,
    all of them do. (`tfgancompress.lowering` leaves none in the generators
    of the zoo.)
    """
    by_name = {layer.name: layer for layer in model._flatten_layers()}
    found = [by_name[layer.name] for layer in layers]
    if any(isinstance(layer, keras.layers.Conv2DTranspose) for layer in found):
        transposed = [
            layer
            for layer in by_name.values()
            if isinstance(layer, keras.layers.Conv2DTranspose) and layer not in found
        ]
        found += transposed + _quantization.activations_after(transposed)
    return found


def _converter_error(error: Exception) -> ValueError:
    text = str(error)
    tf_ops = sorted(set(re.findall(r"\btf\.(\w+)\(", text)))
    if tf_ops:
        return ValueError(
            "The model needs TensorFlow ops that LiteRT has no builtin kernel "
            f"for: {', '.join(tf_ops)}. Flex (SELECT_TF_OPS) is not allowed; "
            "replace the layers that use them."
        )
    return ValueError(f"LiteRT conversion failed: {text}")


@contextlib.contextmanager
def _keep_absl_log_level():
    """Restores absl's log level, which the LiteRT converter lowers globally."""
    logger = logging.getLogger("absl")
    level = logger.level
    try:
        yield
    finally:
        logger.setLevel(level)


def _tensor_contract(graph, index: int) -> dict:
    tensor = graph.tensors[index]
    entry = {
        "name": tensor.name.decode(),
        "shape": [int(d) for d in tensor.shape],
        "dtype": _TENSOR_TYPES[tensor.type],
        "layout": "NHWC",
        "range": [-1.0, 1.0],
    }
    quant = tensor.quantization
    if quant is not None and quant.scale is not None and len(quant.scale):
        entry["scale"] = float(quant.scale[0])
        entry["zero_point"] = int(quant.zeroPoint[0])
    return entry


def _int8_grid(model, graph, index: int, consumer: bool) -> dict | None:
    """Scale/zero point of the int8 tensor right after the input (or before
    the output) of a file with float32 input/output."""
    for operator in graph.operators:
        code = model.operatorCodes[operator.opcodeIndex]
        builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
        ends = operator.inputs if consumer else operator.outputs
        others = operator.outputs if consumer else operator.inputs
        wanted = "QUANTIZE" if consumer else "DEQUANTIZE"
        if _BUILTIN_NAMES.get(builtin) == wanted and index in list(ends):
            grid = _tensor_contract(graph, others[0])
            if "scale" in grid:
                return {"scale": grid["scale"], "zero_point": grid["zero_point"]}
    return None


def _contract(flatbuffer: bytes, quantization: str | None, float_layers) -> dict:
    """The input/output contract of a generator's LiteRT file."""
    model = _schema.ModelT.InitFromPackedBuf(flatbuffer, 0)
    graph = model.subgraphs[0]
    inputs = [_tensor_contract(graph, i) for i in graph.inputs]
    outputs = [_tensor_contract(graph, i) for i in graph.outputs]
    for entries, indices, consumer in (
        (inputs, graph.inputs, True),
        (outputs, graph.outputs, False),
    ):
        for entry, index in zip(entries, indices, strict=True):
            grid = _int8_grid(model, graph, index, consumer)
            if grid is not None:
                entry["int8_grid"] = grid
    return {
        "producer": "tfgancompress",
        "quantization": quantization or "float32",
        "float32_convolutions": list(float_layers),
        "inputs": inputs,
        "outputs": outputs,
        "pixels": "RGB images; float32 x = pixel / 127.5 - 1, pixel = (y + 1) * "
        "127.5; a quantized tensor holds q = round(x / scale) + zero_point",
    }


def _with_metadata(flatbuffer: bytes, name: str, data: bytes) -> bytes:
    model = _schema.ModelT.InitFromPackedBuf(flatbuffer, 0)
    buffer = _schema.BufferT()
    buffer.data = np.frombuffer(data, np.uint8).copy()
    model.buffers.append(buffer)
    entry = _schema.MetadataT()
    entry.name = name.encode()
    entry.buffer = len(model.buffers) - 1
    model.metadata = [*(model.metadata or []), entry]
    return bytes(_flatbuffer_utils.convert_object_to_bytearray(model))


def litert_contract(path: str | os.PathLike) -> dict:
    """The input/output contract `to_litert` wrote into a LiteRT file.

    Stored in the file's metadata (entry `CONTRACT_METADATA`) and, by
    `to_litert`, as `<file>.json` beside it: NHWC RGB images in [-1, 1];
    each input/output's name, shape and dtype; for a quantized tensor its
    `scale`/`zero_point`; for an int8 file with float32 input/output the
    `int8_grid` its first QUANTIZE (last DEQUANTIZE) op uses (feed
    `uint8`/`int8` pixels on that grid to skip the conversion); and the
    layers kept in float32.

    Args:
        path: A `.tflite` file written by `to_litert`.

    Returns:
        The contract as a dict.

    Raises:
        ValueError: If the file has no such metadata.
    """
    with open(path, "rb") as file:
        model = _schema.ModelT.InitFromPackedBuf(file.read(), 0)
    for entry in model.metadata or []:
        if entry.name.decode() == CONTRACT_METADATA:
            return json.loads(bytes(model.buffers[entry.buffer].data).decode())
    raise ValueError(
        f"{os.fspath(path)!r} has no {CONTRACT_METADATA!r} metadata: it was not "
        "written by tfgancompress.export.to_litert."
    )


def to_litert(
    model: keras.Model,
    path: str | os.PathLike,
    quantization: str | None = None,
    representative_data=None,
    input_shape: Sequence[int] | None = None,
    float_norms: bool = True,
    float_layers: Sequence[str] | str = "auto",
    lowering: bool = True,
    one_pass_norms: bool = True,
    norm_statistics_stride: int = 1,
    int8_norms: bool = False,
    int8_target_psnr: float | None = _quantization.DEFAULT_TARGET_PSNR,
) -> str:
    """Converts a Keras model into a builtin-ops-only LiteRT (`.tflite`) file.

    Args:
        model: A single-input Keras model, run in inference mode.
        path: Where to write the `.tflite` file.
        quantization: `None` (float32), `"fp16"`, `"dynamic"` (int8
            weights, float activations) or `"int8"` (int8 kernels, float32
            input/output); see the module docstring.
        representative_data: For `"int8"`: an array of model inputs (split
            into batches of the export batch size) or an iterable of input
            batches (of tuples/lists the first element is used). At most
            `MAX_CALIBRATION_SAMPLES` samples are used. Optional when the
            model has `FakeQuant` layers (see the module docstring).
        input_shape: The fixed `(batch, height, width, channels)` (or
            `(height, width, channels)`, batch 1) to export at. Defaults to
            the model's own input shape, batch 1.
        float_norms: For `"int8"` with `representative_data`: keep every
            `InstanceNormalization` (with an activation fused into it) in
            float32 and equalise the convolutions in front of them
            (`equalize_for_int8`); see the module docstring. `False` runs
            the norms in int8 too, for integer-only accelerators, at a
            large quality cost.
        float_layers: For `"int8"` with `float_norms`: convolutions (and
            residual adds) to keep in float32 besides the norms; paddings
            between float32 layers stay float32 too. `"auto"` measures what
            each tensor's rounding costs and keeps the layers whose output
            alone costs more than 40 dB PSNR, then more until the whole
            output meets `int8_target_psnr`
            (`tfgancompress.quantization.plan_int8`, a few forward passes
            of 8 calibration images per quantized tensor and per layer
            added); `()` keeps none.
        lowering: Apply the exact export-time rewrites of
            `tfgancompress.lowering` (transposed convolutions as sub-pixel
            convolutions, ...): the same function, a faster file. `False`
            converts the layers as they are.
        one_pass_norms: With `lowering`: instance norms take their
            statistics in one pass (`E[x]`, `E[x**2]`; exact up to float
            rounding, one full-size pass fewer). `False` keeps two passes.
        norm_statistics_stride: With `lowering`: `k > 1` takes each
            instance norm's statistics on every `k`-th pixel of each
            spatial axis (still per image; approximate, opt-in: measured
            cost in the README, "A cheaper norm that stays adaptive").
            `1` (the default) is exact.
        int8_norms: For `"int8"` with `float_norms`: run each instance
            norm's full-size passes (`MEAN(x)`, `x * x`, `MEAN`,
            `x * scale`, `+ shift` with the activation) in int8 and keep
            only its per-channel statistics (variance, `rsqrt`, scale,
            shift) in float32; a norm fed by a convolution kept in float32
            stays float32. Opt-in: with ai-edge-litert 2.3's XNNPACK on
            x86 the file is no faster (its int8 MUL and ADD are slower
            than the float32 ones) and the trained bench student measured
            lost 0.42 dB more than with float32 norms (README, "Real
            speed-up").
        int8_target_psnr: For `"int8"` with `float_layers="auto"`: the
            simulated PSNR in dB of the int8 output against the float
            model the plan keeps layers float32 for
            (`quantization.DEFAULT_TARGET_PSNR`; see `plan_int8`). `None`:
            the per-layer threshold alone.

    Returns:
        `path` as a string. The file carries its input/output contract in
        its metadata, also written as `<path without .tflite>.json`
        (`litert_contract`).

    Raises:
        ValueError: For an unknown `quantization`, an `int8_target_psnr`
            that is not `None` or in (0, 100], an input shape that is
            unknown or does not fit the model, `"int8"` without
            representative data, or a model that needs non-builtin (flex)
            ops — the message names those TensorFlow ops.
        FileNotFoundError: If the directory of `path` does not exist.
        PermissionError: If the directory of `path` is not writable.

    Example:

    >>> to_litert(generator, "/tmp/g.tflite", input_shape=(1, 64, 64, 3))
    '/tmp/g.tflite'
    """
    if quantization not in QUANTIZATIONS:
        raise ValueError(
            f"quantization must be one of {QUANTIZATIONS}, got {quantization!r}."
        )
    quantization_aware = _has_fake_quant(model)
    if (
        quantization == "int8"
        and representative_data is None
        and not quantization_aware
    ):
        raise ValueError(
            'quantization="int8" needs representative_data (an array of '
            "inputs or an iterable of input batches) to calibrate the "
            "activation ranges, unless the model has FakeQuant layers."
        )
    if norm_statistics_stride != 1 and not lowering:
        raise ValueError(
            f"norm_statistics_stride={norm_statistics_stride!r} is a lowering: "
            "it needs lowering=True."
        )
    _quantization.check_target_psnr(int8_target_psnr, "int8_target_psnr")
    path = _check_writable(path)
    shape = _fixed_input_shape(model, input_shape)
    batches = None
    kept_float: list[keras.layers.Layer] = []
    norms_in_int8: list[keras.layers.Layer] = []
    if quantization == "int8" and representative_data is not None:
        batches = list(_quantization.calibration_batches(representative_data, shape))
        if not batches:
            raise ValueError(
                f"representative_data gave no batch of shape {shape} to calibrate."
            )
        _quantization.check_calibration_size(batches)
        if float_norms:
            model = equalize_for_int8(model, batches)
            kept_float = _float_layers(model, float_layers, batches, int8_target_psnr)
            if int8_norms:
                kept_float, norms_in_int8 = _split_norms(kept_float)
    if lowering:
        model = _lowering.lower_for_litert(
            model, shape, one_pass_norms, norm_statistics_stride
        )
    kept_float = _in_converted_model(model, kept_float)
    norms_in_int8 = [layer.name for layer in norms_in_int8]
    with tempfile.TemporaryDirectory() as directory, _keep_absl_log_level():
        _saved_model_for(model, shape, directory)
        converter = tf.lite.TFLiteConverter.from_saved_model(directory)
        _configure(converter, quantization, batches)
        try:
            if kept_float or norms_in_int8:
                flatbuffer = _convert_int8_float_layers(
                    converter, directory, kept_float, batches, norms_in_int8
                )
            else:
                flatbuffer = converter.convert()
        except Exception as error:
            raise _converter_error(error) from error
    if not _schema.Model.ModelBufferHasIdentifier(flatbuffer, 0):
        # Not a LiteRT model (a stand-in converter's bytes): written as given.
        with atomic_write(path, "wb") as file:
            file.write(flatbuffer)
        return path
    names = [
        layer.name
        for layer in kept_float
        if isinstance(
            layer,
            keras.layers.Conv2D | keras.layers.Conv2DTranspose | SubPixelConv2D,
        )
    ]
    text = json.dumps(_contract(flatbuffer, quantization, names), indent=2)
    with atomic_write(path, "wb") as file:
        file.write(_with_metadata(flatbuffer, CONTRACT_METADATA, text.encode()))
    contract_path = os.path.splitext(path)[0] + ".json"
    with atomic_write(contract_path, "w", encoding="utf-8") as file:
        file.write(text + "\n")
    return path


def litert_graph(path: str | os.PathLike) -> list[LiteRTOp]:
    """Reads the operators of a LiteRT file's main subgraph, in order.

    Parses the flatbuffer directly, so it also lists ops that the installed
    runtime could not run (flex and custom ops).

    Args:
        path: A `.tflite` file.

    Returns:
        One `LiteRTOp` per operator, with the dtypes of its tensors.

    Example:

    >>> [op.input_dtypes for op in litert_graph("g.tflite") if op.name == "CONV_2D"]
    [('int8', 'int8', 'int32'), ...]
    """
    with open(path, "rb") as file:
        model = _schema.ModelT.InitFromPackedBuf(file.read(), 0)
    graph = model.subgraphs[0]
    ops = []
    for operator in graph.operators:
        code = model.operatorCodes[operator.opcodeIndex]
        builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
        if builtin == _schema.BuiltinOperator.CUSTOM:
            name = code.customCode.decode()
        else:
            name = _BUILTIN_NAMES[builtin]
        ops.append(
            LiteRTOp(
                name,
                tuple(
                    _TENSOR_TYPES[graph.tensors[i].type] if i >= 0 else None
                    for i in operator.inputs
                ),
                tuple(_TENSOR_TYPES[graph.tensors[i].type] for i in operator.outputs),
            )
        )
    return ops


def litert_ops(path: str | os.PathLike) -> list[str]:
    """The sorted, distinct op names of a LiteRT file (see `litert_graph`).

    Args:
        path: A `.tflite` file.

    Returns:
        For example `["ADD", "CONV_2D", "MEAN", ...]`; a flex op appears as
        `"Flex<TfOp>"`.
    """
    return sorted({op.name for op in litert_graph(path)})


def run_litert(
    path: str | os.PathLike, inputs, num_threads: int = 2
) -> np.ndarray | list[np.ndarray]:
    """Runs a LiteRT file on one batch with the LiteRT interpreter.

    Integer (quantized) input/output tensors are quantized/dequantized with
    their scale and zero point, so callers always deal in float32.

    Args:
        path: A `.tflite` file.
        inputs: One array (single-input model) or a list of arrays, each of
            exactly the shape the file was exported at.
        num_threads: CPU threads of the interpreter.

    Returns:
        The output as a float32 array, or a list of them for several outputs.

    Raises:
        ValueError: If the number or shapes of `inputs` do not match the file.
    """
    interpreter = _Interpreter(model_path=os.fspath(path), num_threads=num_threads)
    interpreter.allocate_tensors()
    details = interpreter.get_input_details()
    arrays = list(inputs) if isinstance(inputs, list | tuple) else [inputs]
    if len(arrays) != len(details):
        raise ValueError(f"{path} takes {len(details)} inputs, got {len(arrays)}.")
    for detail, array in zip(details, arrays, strict=True):
        array = np.asarray(array, np.float32)
        expected = tuple(int(d) for d in detail["shape"])
        if array.shape != expected:
            raise ValueError(
                f"{path} was exported for input shape {expected}, got {array.shape}."
            )
        scale, zero_point = detail["quantization"]
        if np.issubdtype(detail["dtype"], np.integer) and scale:
            info = np.iinfo(detail["dtype"])
            array = np.clip(np.round(array / scale) + zero_point, info.min, info.max)
        interpreter.set_tensor(detail["index"], array.astype(detail["dtype"]))
    interpreter.invoke()
    outputs = []
    for detail in interpreter.get_output_details():
        value = interpreter.get_tensor(detail["index"])
        scale, zero_point = detail["quantization"]
        if np.issubdtype(value.dtype, np.integer) and scale:
            value = (value.astype(np.float32) - zero_point) * scale
        outputs.append(np.asarray(value, np.float32))
    return outputs[0] if len(outputs) == 1 else outputs


def to_onnx(
    model: keras.Model,
    path: str | os.PathLike,
    input_shape: Sequence[int] | None = None,
) -> str:
    """Exports a Keras model to ONNX (Keras `model.export`, tf2onnx inside).

    Args:
        model: A single-input Keras model, run in inference mode.
        path: Where to write the `.onnx` file.
        input_shape: A fixed input shape as for `to_litert`. Defaults to the
            model's own input shape, unknown dimensions left dynamic.

    Returns:
        `path` as a string.

    Raises:
        ValueError: If `input_shape` does not fit the model.
        FileNotFoundError: If the directory of `path` does not exist.
        PermissionError: If the directory of `path` is not writable.

    Example:

    >>> to_onnx(generator, "/tmp/g.onnx")
    '/tmp/g.onnx'
    """
    path = _check_writable(path)
    if input_shape is None:
        shape = _model_input_shape(model)
        if not shape:
            raise ValueError(
                f"{model.name!r} has no known input shape: pass input_shape."
            )
    else:
        shape = _fixed_input_shape(model, input_shape)
    with atomic_path(path) as temporary:
        model.export(
            temporary,
            format="onnx",
            verbose=False,
            input_signature=[keras.InputSpec(shape=shape, dtype="float32")],
        )
    return path


def run_onnx(path: str | os.PathLike, inputs) -> np.ndarray | list[np.ndarray]:
    """Runs an ONNX file on one batch with onnxruntime (CPU).

    Args:
        path: An `.onnx` file.
        inputs: One array, or a list of arrays for several inputs.

    Returns:
        The output array, or a list of them for several outputs.
    """
    import onnxruntime

    session = onnxruntime.InferenceSession(
        os.fspath(path), providers=["CPUExecutionProvider"]
    )
    arrays = list(inputs) if isinstance(inputs, list | tuple) else [inputs]
    feeds = {
        spec.name: np.asarray(array, np.float32)
        for spec, array in zip(session.get_inputs(), arrays, strict=True)
    }
    outputs = session.run(None, feeds)
    return outputs[0] if len(outputs) == 1 else outputs


def to_saved_model(model: keras.Model, path: str | os.PathLike) -> str:
    """Exports the inference-mode model as a TensorFlow SavedModel directory.

    Reload with `tf.saved_model.load(path).serve(images)`. An existing
    folder at `path` is replaced as a whole.

    Args:
        model: A Keras model.
        path: The directory to create.

    Returns:
        `path` as a string.

    Raises:
        FileNotFoundError: If the parent directory of `path` does not exist.
        PermissionError: If it is not writable.
    """
    path = os.fspath(path)
    _check_parent(path)
    with atomic_path(path, directory=True) as temporary:
        model.export(temporary, format="tf_saved_model", verbose=False)
    return path
