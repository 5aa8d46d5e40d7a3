"""MACs and parameter counts of Keras models, counted like torchprofile.

The GAN-compression papers report MACs measured with `torchprofile`; this
module counts the same way so that numbers compare one to one:

- every convolution, transposed ones included, costs
  `prod(output shape) * (C_in / groups) * k_h * k_w`: it is counted on its
  *output* grid (so a stride-2 transposed convolution costs 4x what it
  would on its input grid);
- depthwise = `prod(output shape) * k_h * k_w`; separable = its depthwise
  part plus its pointwise part;
- `Dense` = `prod(output shape) * in_features` (`in * out` on a vector);
- norms, activations, paddings, adds, concatenations, dropout and
  `ChannelGate`s cost 0.

MACs are per image (batch 1). Shapes are propagated symbolically through
the functional graph (`compute_output_spec`, no tensor is computed), so
profiling a 256x256 generator takes a fraction of a second and does not
change the model.

Gated and super models are counted at the width they *compute*: a
`ChannelGate` only multiplies, so a gated model costs as much as the dense
one; a `SuperConv2D`/`SuperConv2DTranspose`/`SuperSeparableConv2D` counts
its outputs at its `active_filters` width but its inputs at the static
width of the tensor it receives (an upper bound). The exact MACs of a
pruned network or a sub-net come from profiling the slimmed model:
`profile(tgc.slim(model), input_shape)`.
"""

from __future__ import annotations

import dataclasses
import math
import numbers

import keras
import numpy as np

from keras_layers import FakeQuantWeights, SelectiveActivationConv2D

_TRANSPOSED = (
    keras.layers.Conv1DTranspose,
    keras.layers.Conv2DTranspose,
    keras.layers.Conv3DTranspose,
)
_DEPTHWISE = (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)
_SEPARABLE = (keras.layers.SeparableConv1D, keras.layers.SeparableConv2D)
_CONV = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)


@dataclasses.dataclass(frozen=True)
class LayerProfile:
    """Cost of one layer call.

    Attributes:
        name: Layer name, prefixed by the names of enclosing models
            (`"encoder/conv1"`).
        class_name: The layer's class name.
        output_shape: Output shape at batch 1 (a tuple of shapes for a
            layer with several outputs).
        macs: Multiply-accumulates of this call.
        params: Parameters of the layer (0 for a second call of a shared
            layer, so that the per-layer params sum to the model's).
    """

    name: str
    class_name: str
    output_shape: tuple
    macs: int
    params: int


@dataclasses.dataclass(frozen=True)
class ModelProfile:
    """MACs and parameters of a model at a given input shape.

    Attributes:
        name: The model's name.
        input_shape: The profiled input shape(s), batch dim excluded.
        macs: Multiply-accumulates per image (torchprofile's rule).
        params: Number of parameters: every floating-point weight of the
            model, trainable or not (integer state such as a super layer's
            `active_filters` is not a parameter).
        per_layer: A `LayerProfile` per layer call, in execution order.
    """

    name: str
    input_shape: tuple
    macs: int
    params: int
    per_layer: list[LayerProfile]

    def summary(self) -> str:
        """A table of every layer call, then the totals."""
        header = ("Layer", "Class", "Output shape", "MACs", "Params")
        rows = [
            (
                p.name,
                p.class_name,
                str(p.output_shape),
                f"{p.macs:,}",
                f"{p.params:,}",
            )
            for p in self.per_layer
        ]
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(5)]

        def line(row):
            left = [row[i].ljust(widths[i]) for i in range(3)]
            right = [row[i].rjust(widths[i]) for i in range(3, 5)]
            return "  ".join(left + right)

        rule = "-" * len(line(header))
        totals = (
            f"Total MACs: {_human(self.macs)} ({self.macs:,}) at input "
            f"{self.input_shape}\nTotal params: {_human(self.params)} "
            f"({self.params:,})"
        )
        body = [line(r) for r in rows]
        return "\n".join(
            [f'Model "{self.name}"', rule, line(header), rule, *body, rule, totals]
        )

    def __str__(self) -> str:
        return self.summary()

    def to_dict(self) -> dict:
        """JSON-serializable dict of the profile."""
        return {
            "name": self.name,
            "input_shape": _plain(self.input_shape),
            "macs": self.macs,
            "params": self.params,
            "per_layer": [
                {**dataclasses.asdict(p), "output_shape": _plain(p.output_shape)}
                for p in self.per_layer
            ],
        }


def _human(count: int) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= scale:
            return f"{count / scale:.2f} {unit}"
    return str(count)


def _plain(shape):
    if isinstance(shape, tuple):
        return [_plain(s) for s in shape]
    return shape


def _float_size(weights) -> int:
    return sum(int(np.prod(w.shape)) for w in weights if "float" in str(w.dtype))


def _is_dim(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _input_spec(model_input, shape, model_name: str):
    """A batch-1 `KerasTensor` for one model input, after checking `shape`."""
    expected = tuple(model_input.shape)
    try:
        shape = tuple(shape)
    except TypeError:
        raise ValueError(
            f"input_shape for model {model_name!r} must be a tuple of ints, "
            f"got {shape!r}."
        ) from None
    if len(shape) == len(expected):
        if shape[0] not in (None, 1):
            raise ValueError(
                f"profile counts MACs per image: the batch dim of input_shape "
                f"must be 1 or None, got {shape}."
            )
        shape = shape[1:]
    if len(shape) != len(expected) - 1:
        raise ValueError(
            f"Model {model_name!r} takes inputs of shape {expected}; "
            f"input_shape must be {expected[1:]} without the batch dim (or "
            f"with batch 1), got {shape}."
        )
    for got, want in zip(shape, expected[1:], strict=True):
        if not _is_dim(got) or got < 1:
            raise ValueError(
                f"input_shape dims must be positive ints, got {shape} for "
                f"model {model_name!r}."
            )
        if want is not None and got != want:
            raise ValueError(
                f"Model {model_name!r} takes inputs of shape {expected}; "
                f"input_shape {shape} does not match."
            )
    return keras.KerasTensor((1, *shape), dtype=model_input.dtype)


def _model_inputs(model):
    inputs = None
    if model.built:
        try:
            inputs = model.inputs
        except (AttributeError, ValueError):
            inputs = None
    if not inputs:
        raise ValueError(
            f"Model {model.name!r} has no defined inputs: profile() walks "
            "built Functional or Sequential models (build it on a "
            "keras.Input first)."
        )
    return list(inputs)


def _input_specs(model, input_shape) -> list:
    inputs = _model_inputs(model)
    several = (
        isinstance(input_shape, (tuple, list))
        and len(input_shape) > 0
        and all(isinstance(s, (tuple, list)) for s in input_shape)
    )
    shapes = list(input_shape) if several else [input_shape]
    if len(shapes) != len(inputs):
        raise ValueError(
            f"Model {model.name!r} has {len(inputs)} input(s) of shapes "
            f"{[tuple(x.shape) for x in inputs]}; input_shape must give one "
            f"shape per input, got {input_shape!r}."
        )
    return [_input_spec(x, s, model.name) for x, s in zip(inputs, shapes, strict=True)]


def _active_filters(layer, kwargs):
    override = kwargs.get("active_filters")
    if _is_dim(override):
        return int(override)
    variable = getattr(layer, "active_filters", None)
    if variable is None:
        return None
    return int(keras.ops.convert_to_numpy(variable))


def _conv_macs(layer, in_shape, out_shape, active) -> int:
    axis = 1 if getattr(layer, "data_format", None) == "channels_first" else -1
    in_channels = in_shape[axis]
    out_channels = out_shape[axis] if active is None else active
    grid = math.prod(out_shape[1:]) // out_shape[axis]
    window = math.prod(layer.kernel_size)
    if isinstance(layer, _SEPARABLE):
        middle = in_channels * layer.depth_multiplier
        return grid * middle * (window + out_channels)
    if isinstance(layer, _DEPTHWISE):
        return grid * in_channels * layer.depth_multiplier * window
    if isinstance(layer, _TRANSPOSED):
        return grid * out_channels * in_channels * window
    return grid * out_channels * (in_channels // layer.groups) * window


def _layer_macs(layer, name: str, inputs: list, out_shape, active) -> int:
    if isinstance(layer, SelectiveActivationConv2D):
        return _layer_macs(layer.conv, name, inputs, out_shape, active)
    if isinstance(layer, FakeQuantWeights):
        return _layer_macs(layer.layer, name, inputs, out_shape, active)
    if isinstance(layer, _SEPARABLE + _DEPTHWISE + _TRANSPOSED + _CONV):
        return _conv_macs(layer, _shape_of(inputs[0], name), out_shape, active)
    if isinstance(layer, keras.layers.Dense):
        return math.prod(out_shape[1:]) * _shape_of(inputs[0], name)[-1]
    if any("kernel" in w.name for w in getattr(layer, "weights", [])):
        raise ValueError(
            f"profile() cannot count layer {layer.name!r} of class "
            f"{type(layer).__name__}: it has a kernel but is not a known "
            "convolution/Dense layer (supported: Conv1D/2D/3D and their "
            "Transpose, DepthwiseConv, SeparableConv, Dense, "
            "SelectiveActivationConv2D, Super* layers, and nested "
            "Functional/Sequential models)."
        )
    return 0


def _shape_of(spec, layer_name: str) -> tuple:
    shape = tuple(spec.shape)
    if any(d is None for d in shape):
        raise ValueError(
            f"Could not infer a static output shape for layer {layer_name!r} "
            f"(got {shape}); profile() needs every shape defined."
        )
    return shape


class _Walker:
    """Propagates specs through a model and records a `LayerProfile` per call."""

    def __init__(self):
        self.records: list[LayerProfile] = []
        self._counted: set[int] = set()

    def walk(self, model, inputs, prefix: str):
        if isinstance(model, keras.Sequential):
            outputs = inputs[0] if len(inputs) == 1 else inputs
            for layer in model.layers:
                outputs = self.visit(layer, (outputs,), {}, prefix)
            return outputs

        def operation_fn(operation):
            def call(*args, **kwargs):
                return self.visit(operation, args, kwargs, prefix)

            return call

        return model._run_through_graph(inputs, operation_fn=operation_fn)

    def visit(self, operation, args, kwargs, prefix: str):
        name = f"{prefix}{operation.name}"
        if isinstance(operation, keras.Sequential) or callable(
            getattr(operation, "_run_through_graph", None)
        ):
            return self.walk(operation, keras.tree.flatten(args), f"{name}/")
        outputs = operation.compute_output_spec(*args, **kwargs)
        specs = keras.tree.flatten(outputs)
        shapes = tuple(_shape_of(s, name) for s in specs)
        inputs = [
            x for x in keras.tree.flatten(args) if isinstance(x, keras.KerasTensor)
        ]
        active = _active_filters(operation, kwargs)
        macs = _layer_macs(operation, name, inputs, shapes[0], active)
        self.records.append(
            LayerProfile(
                name=name,
                class_name=type(operation).__name__,
                output_shape=shapes[0] if len(shapes) == 1 else shapes,
                macs=int(macs),
                params=self._params_once(operation),
            )
        )
        return outputs

    def _params_once(self, operation) -> int:
        if id(operation) in self._counted:
            return 0
        self._counted.add(id(operation))
        return _float_size(getattr(operation, "weights", []))


def profile(model: keras.Model, input_shape) -> ModelProfile:
    """Counts MACs (per image) and parameters of a Keras model.

    MACs follow torchprofile, the counter the GAN-compression papers used:
    convolutions (transposed ones included) cost
    `prod(output shape) * (C_in / groups) * k_h * k_w` on their output
    grid, `Dense` costs `in * out`, and norms, activations, paddings, adds
    and gates cost nothing. See the module docstring for gated and super
    models.

    Args:
        model: A built Functional or Sequential `keras.Model`; nested
            models are walked. Its inputs may have `None` spatial dims.
        input_shape: `(H, W, C)`, or `(1, H, W, C)` with a batch dim; for a
            model with several inputs, a list of such shapes.

    Returns:
        A `ModelProfile` with `.macs`, `.params`, `.per_layer`,
        `.summary()` and `.to_dict()`.

    Raises:
        TypeError: If `model` is not a `keras.Model`.
        ValueError: If `input_shape` does not fit the model's inputs, the
            model has no defined inputs (subclassed or unbuilt), or a layer
            with a kernel is of a type this counter does not know (the
            error names it).

    Example:

    >>> model = tgc.models.resnet_generator()
    >>> p = tgc.profile(model, (256, 256, 3))
    >>> round(p.macs / 1e9, 1), round(p.params / 1e6, 2)
    (56.8, 11.38)
    """
    if not isinstance(model, keras.Model):
        raise TypeError(f"profile() needs a keras.Model, got {type(model).__name__}.")
    if not isinstance(model, keras.Sequential) and not callable(
        getattr(model, "_run_through_graph", None)
    ):
        raise ValueError(
            f"profile() walks Functional and Sequential models; {model.name!r} "
            f"is a subclassed {type(model).__name__} (build it functionally "
            "or profile its functional parts)."
        )
    specs = _input_specs(model, input_shape)
    walker = _Walker()
    walker.walk(model, specs, "")
    unique = {id(w): w for w in model.weights}
    shapes = tuple(tuple(s.shape[1:]) for s in specs)
    return ModelProfile(
        name=model.name,
        input_shape=shapes[0] if len(shapes) == 1 else shapes,
        macs=sum(r.macs for r in walker.records),
        params=_float_size(unique.values()),
        per_layer=walker.records,
    )
