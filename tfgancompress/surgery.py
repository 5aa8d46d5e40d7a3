"""Channel surgery: turn a gated/masked model into a plain, smaller Keras model.

`slim(model)` reads the model's functional graph and, in four passes:

1. **fold** every gate (`ChannelGate`, and the gates inside
   `SelectiveActivationConv2D`) into the layer that feeds it (a norm's affine
   parameters, or a convolution's kernel and bias), so the gate disappears;
2. **propagate constants**: find, per tensor and channel, whether its value is
   a known constant (a removed channel is zero, or a norm's beta when its scale
   is 0, or the bias of a conv with a zero kernel column) or varies;
3. **mark live channels**: a channel lives where a consumer needs its varying
   value. Channels joined by a residual add form one group (alive if any member
   is needed); U-Net skip concatenations map each input channel to its slot;
4. **rebuild** a plain functional model with only the live channels. A removed
   channel that still carries a nonzero constant is folded into the consumer's
   bias where the consumer maps constants to constants (valid padding, 1x1
   kernels, dense); where zero padding or a transposed convolution would make
   the constant vary near the borders, one such channel is kept as a *carrier*
   and the others are merged into its weights, which is exact.

The result computes the same function as the gated model in inference mode,
up to float rounding.

Super layers (`SuperConv2D`, ..., and the super norms after them) are
sliced at their active width, so `slim` also extracts a sub-network from a
once-for-all supernet.

Quantization-aware models (`tgc.quantization.quantize_generator`) keep their
quantizers: a `FakeQuant` is an elementwise function (per-channel ranges are
sliced), a `FakeQuantWeights` convolution is rebuilt from its rounded kernel
with its range, a `FakeQuantInstanceNormalization` keeps its input range.
The result is the same function up to the rounding of folded constants.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
from keras.src.ops import numpy as ops_numpy

import keras_layers

_CONV_KINDS = ("conv", "conv_t", "separable", "dense")
_CARRIER_KINDS = ("conv", "conv_t", "dense")
_ANCHOR_KINDS = ("conv", "conv_t", "separable", "dense", "depthwise")
_ANCHOR_KINDS += ("instance_norm", "batch_norm")
_SAME_CHANNEL_KINDS = ("depthwise", "instance_norm", "batch_norm", "activation")
_SAME_CHANNEL_KINDS += ("spatial", "zero_pad", "identity", "fake_quant")
_SPATIAL_LAYERS = (
    keras_layers.ReflectionPadding2D,
    keras.layers.Cropping2D,
    keras.layers.UpSampling2D,
    keras.layers.Dropout,
    keras.layers.SpatialDropout2D,
    keras.layers.GaussianNoise,
    keras.layers.Identity,
    keras.layers.AveragePooling2D,
    keras.layers.MaxPooling2D,
)
_ACTIVATION_LAYERS = (
    keras.layers.ReLU,
    keras.layers.LeakyReLU,
    keras.layers.Activation,
    keras.layers.ELU,
)
_CONV_LAYERS = (
    keras.layers.Conv2D,
    keras.layers.Conv2DTranspose,
    keras.layers.DepthwiseConv2D,
    keras.layers.SeparableConv2D,
)
_POSITIVELY_HOMOGENEOUS = ("relu", "leaky_relu", "linear")


class SurgeryError(ValueError):
    """A model that `slim` cannot turn into a smaller plain model."""


@dataclasses.dataclass
class _Op:
    """One primitive operation of the traced graph."""

    kind: str
    name: str
    inputs: list[int]
    output: int
    layer: keras.layers.Layer | None = None
    params: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class LayerChannels:
    """Live channels of one layer's output after surgery."""

    name: str
    kind: str
    kept: int
    total: int


class _Graph:
    """Primitive ops in topological order plus per-tensor channel counts."""

    def __init__(self):
        self.ops: list[_Op] = []
        self.channels: list[int] = []
        self.inputs: list[int] = []
        self.outputs: list[int] = []

    def new_tensor(self, channels: int) -> int:
        self.channels.append(int(channels))
        return len(self.channels) - 1

    def add(self, kind, name, inputs, channels, layer=None, **params) -> int:
        output = self.new_tensor(channels)
        self.ops.append(_Op(kind, name, list(inputs), output, layer, params))
        return output

    def producers(self) -> dict[int, _Op]:
        return {op.output: op for op in self.ops}

    def consumers(self) -> dict[int, list[_Op]]:
        result: dict[int, list[_Op]] = {}
        for op in self.ops:
            for tensor in op.inputs:
                result.setdefault(tensor, []).append(op)
        for tensor in self.outputs:
            result.setdefault(tensor, []).append(None)
        return result


# ----------------------------------------------------------------- tracing


def _numpy(variable) -> np.ndarray:
    return np.array(keras.ops.convert_to_numpy(variable), dtype=np.float64)


def _bias(layer, channels: int) -> np.ndarray:
    if getattr(layer, "use_bias", False) and layer.bias is not None:
        return _numpy(layer.bias)
    return np.zeros(channels)


def _output_mask(layer, filters: int) -> np.ndarray:
    """1 for the active output channels of a Super layer, 1 everywhere else."""
    active = getattr(layer, "active_filters", None)
    if active is None:
        return np.ones(filters)
    active = int(keras.ops.convert_to_numpy(active))
    return (np.arange(filters) < active).astype(np.float64)


def _check_conv(layer) -> None:
    if getattr(layer, "data_format", "channels_last") != "channels_last":
        raise SurgeryError(f"Layer {layer.name!r}: only channels_last is supported.")
    if getattr(layer, "groups", 1) != 1:
        raise SurgeryError(
            f"Layer {layer.name!r}: grouped convolutions (groups="
            f"{layer.groups}) are not supported by slim()."
        )
    if getattr(layer, "depth_multiplier", 1) != 1:
        raise SurgeryError(
            f"Layer {layer.name!r}: depth_multiplier={layer.depth_multiplier} is "
            "not supported by slim() (only 1)."
        )


def _activation_name(layer) -> str:
    activation = getattr(layer, "activation", None)
    if activation is None:
        return "linear"
    return keras.activations.serialize(activation)


def _lower_conv(graph, layer, tensor, name, kernel=None) -> int:
    """Adds a convolution; `kernel` overrides the layer's (fake-quantized)."""
    _check_conv(layer)
    activation = _activation_name(layer)
    if isinstance(layer, keras.layers.SeparableConv2D):
        depthwise = _numpy(layer.depthwise_kernel)[:, :, :, 0]
        pointwise = _numpy(layer.pointwise_kernel)[0, 0]
        mask = _output_mask(layer, pointwise.shape[1])
        return graph.add(
            "separable",
            name,
            [tensor],
            pointwise.shape[1],
            layer,
            depthwise=depthwise,
            pointwise=pointwise * mask,
            bias=_bias(layer, pointwise.shape[1]) * mask,
            activation=activation,
        )
    kernel = _numpy(layer.kernel if kernel is None else kernel)
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        kernel = kernel[:, :, :, 0]
        return graph.add(
            "depthwise",
            name,
            [tensor],
            kernel.shape[2],
            layer,
            kernel=kernel,
            bias=_bias(layer, kernel.shape[2]),
            activation=activation,
        )
    if isinstance(layer, keras.layers.Conv2DTranspose):
        mask = _output_mask(layer, kernel.shape[2])
        return graph.add(
            "conv_t",
            name,
            [tensor],
            kernel.shape[2],
            layer,
            kernel=kernel * mask[None, None, :, None],
            bias=_bias(layer, kernel.shape[2]) * mask,
            activation=activation,
        )
    mask = _output_mask(layer, kernel.shape[3])
    return graph.add(
        "conv",
        name,
        [tensor],
        kernel.shape[3],
        layer,
        kernel=kernel * mask,
        bias=_bias(layer, kernel.shape[3]) * mask,
        activation=activation,
    )


def _lower_norm(graph, layer, tensor, name) -> int:
    channels = graph.channels[tensor]
    mask = _output_mask(layer, channels)
    gamma = (_numpy(layer.gamma) if layer.scale else np.ones(channels)) * mask
    beta = (_numpy(layer.beta) if layer.center else np.zeros(channels)) * mask
    if isinstance(layer, keras_layers.InstanceNormalization):
        return graph.add(
            "instance_norm", name, [tensor], channels, layer, gamma=gamma, beta=beta
        )
    if layer.axis not in (-1, 3):
        raise SurgeryError(f"Layer {layer.name!r}: BatchNormalization axis must be -1.")
    return graph.add(
        "batch_norm",
        name,
        [tensor],
        channels,
        layer,
        gamma=gamma,
        beta=beta,
        mean=_numpy(layer.moving_mean),
        variance=_numpy(layer.moving_variance),
    )


def _lower_layer(graph: _Graph, layer, tensors: list[int], name: str) -> int:
    """Adds the primitive op(s) of one layer; returns the output tensor id."""
    if isinstance(layer, keras_layers.SelectiveActivationConv2D):
        tensor = _lower_conv(graph, layer.conv, tensors[0], f"{name}_conv")
        if layer.norm is not None:
            tensor = _lower_norm(graph, layer.norm, tensor, f"{name}_norm")
        return _lower_layer(graph, layer.gate, [tensor], f"{name}_gate")
    if isinstance(layer, keras_layers.ChannelGate):
        scale, shift = layer.channel_affine()
        return graph.add(
            "gate",
            name,
            tensors,
            graph.channels[tensors[0]],
            layer,
            scale=scale.astype(np.float64),
            shift=shift.astype(np.float64),
        )
    if isinstance(layer, keras_layers.FakeQuantWeights):
        inner = f"{name[: len(name) - len(layer.name)]}{layer.layer.name}"
        kernel = layer.quantized_kernel()
        output = _lower_conv(graph, layer.layer, tensors[0], inner, kernel)
        graph.ops[-1].params["weight_quant"] = layer
        return output
    if isinstance(layer, keras_layers.FakeQuant):
        return graph.add("fake_quant", name, tensors, graph.channels[tensors[0]], layer)
    if isinstance(layer, _CONV_LAYERS):
        return _lower_conv(graph, layer, tensors[0], name)
    if isinstance(layer, keras.layers.Dense):
        kernel = _numpy(layer.kernel)
        return graph.add(
            "dense",
            name,
            tensors,
            kernel.shape[1],
            layer,
            kernel=kernel[None, None],
            bias=_bias(layer, kernel.shape[1]),
            activation=_activation_name(layer),
        )
    if isinstance(
        layer, (keras_layers.InstanceNormalization, keras.layers.BatchNormalization)
    ):
        return _lower_norm(graph, layer, tensors[0], name)
    if isinstance(layer, _ACTIVATION_LAYERS):
        return graph.add("activation", name, tensors, graph.channels[tensors[0]], layer)
    if isinstance(layer, _SPATIAL_LAYERS):
        return graph.add("spatial", name, tensors, graph.channels[tensors[0]], layer)
    if isinstance(layer, keras.layers.ZeroPadding2D):
        return graph.add("zero_pad", name, tensors, graph.channels[tensors[0]], layer)
    if isinstance(layer, (keras.layers.Add, ops_numpy.Add)):
        return graph.add("add", name, tensors, graph.channels[tensors[0]], layer)
    if isinstance(layer, keras.layers.Concatenate):
        if layer.axis not in (-1, 3):
            raise SurgeryError(
                f"Layer {layer.name!r}: only channel concatenation (axis=-1) "
                f"is supported, got axis={layer.axis}."
            )
        total = sum(graph.channels[t] for t in tensors)
        return graph.add("concat", name, tensors, total, layer)
    raise SurgeryError(
        f"slim() does not know how to cut channels through layer {name!r} of "
        f"type {type(layer).__name__}. Supported: convolutions (plain, "
        "transposed, depthwise, separable, Super*), Dense, Instance/Batch "
        "normalization, ChannelGate, SelectiveActivationConv2D, activations, "
        "FakeQuant, FakeQuantWeights, padding/cropping/pooling/dropout, Add and "
        "channel Concatenate."
    )


def _trace_model(graph: _Graph, model, input_ids: list[int], prefix: str) -> list[int]:
    """Inlines a functional model into `graph`; returns its output tensor ids."""
    if isinstance(model, keras.Sequential):
        model = model._functional
    if not hasattr(model, "_nodes_by_depth"):
        raise SurgeryError(
            f"slim() needs a functional or Sequential Keras model; "
            f"{model.name!r} is a subclassed {type(model).__name__}."
        )
    ids = {id(t): i for t, i in zip(model.inputs, input_ids, strict=True)}
    for depth in sorted(model._nodes_by_depth, reverse=True):
        for node in model._nodes_by_depth[depth]:
            operation = node.operation
            if isinstance(operation, keras.layers.InputLayer):
                continue
            inputs = [ids[id(t)] for t in node.arguments.keras_tensors]
            name = f"{prefix}{operation.name}"
            if isinstance(operation, keras.Model):
                outputs = _trace_model(graph, operation, inputs, f"{name}_")
            else:
                if len(operation._inbound_nodes) > 1:
                    raise SurgeryError(
                        f"Layer {operation.name!r} is called more than once; "
                        "slim() needs each layer used once."
                    )
                outputs = [_lower_layer(graph, operation, inputs, name)]
            for tensor, output in zip(node.outputs, outputs, strict=True):
                ids[id(tensor)] = output
    return [ids[id(t)] for t in model.outputs]


def _trace(model) -> _Graph:
    graph = _Graph()
    for tensor in model.inputs:
        graph.inputs.append(graph.new_tensor(tensor.shape[-1]))
    graph.outputs = _trace_model(graph, model, graph.inputs, "")
    return graph


# ----------------------------------------------------------------- folding


def _apply_activation(op: _Op, values: np.ndarray) -> np.ndarray:
    """Applies the op's activation to per-channel constants (NaN stays NaN)."""
    known = ~np.isnan(values)
    if not known.any():
        return values
    if op.kind in ("activation", "fake_quant"):
        function = op.layer
    else:
        function = keras.activations.get(op.params["activation"])
    filled = np.where(known, values, 0.0).astype(np.float32)[None, None, None, :]
    result = np.asarray(keras.ops.convert_to_numpy(function(filled)))[0, 0, 0]
    return np.where(known, result.astype(np.float64), np.nan)


def _activation_commutes(op: _Op, scale: np.ndarray) -> bool:
    """Whether `scale * f(x) == f(scale * x)` for this activation and scale."""
    layer = op.layer
    if isinstance(layer, keras.layers.ReLU):
        homogeneous = layer.max_value is None and layer.threshold == 0
    elif isinstance(layer, keras.layers.LeakyReLU):
        homogeneous = True
    elif isinstance(layer, keras.layers.Activation):
        name = keras.activations.serialize(layer.activation)
        homogeneous = name in _POSITIVELY_HOMOGENEOUS
    else:
        homogeneous = False
    if homogeneous and np.all(scale >= 0):
        return True
    binary = np.all((scale == 0) | (scale == 1))
    return bool(binary and _apply_activation(op, np.zeros(1))[0] == 0.0)


def _fold_into(anchor: _Op, scale: np.ndarray, shift: np.ndarray, gate: _Op) -> None:
    params = anchor.params
    if anchor.kind in ("instance_norm", "batch_norm"):
        params["gamma"] = params["gamma"] * scale
        params["beta"] = params["beta"] * scale + shift
        return
    if params.get("activation", "linear") != "linear":
        raise SurgeryError(
            f"Gate {gate.name!r} follows layer {anchor.name!r} whose built-in "
            f"activation {params['activation']!r} prevents folding; use a "
            "separate activation layer after the gate."
        )
    if anchor.kind == "conv":
        params["kernel"] = params["kernel"] * scale
    elif anchor.kind == "conv_t":
        params["kernel"] = params["kernel"] * scale[None, None, :, None]
    elif anchor.kind == "separable":
        params["pointwise"] = params["pointwise"] * scale
    elif anchor.kind == "dense":
        params["kernel"] = params["kernel"] * scale
    else:
        params["kernel"] = params["kernel"] * scale
    params["bias"] = params["bias"] * scale + shift


def _fold_gates(graph: _Graph) -> None:
    producers = graph.producers()
    consumers = graph.consumers()
    for gate in graph.ops:
        if gate.kind != "gate":
            continue
        scale, shift = gate.params["scale"], gate.params["shift"]
        tensor = gate.inputs[0]
        while True:
            if len(consumers.get(tensor, [])) != 1:
                raise SurgeryError(
                    f"Cannot fold gate {gate.name!r}: the tensor it gates is also "
                    "used by another layer, which would see the ungated values."
                )
            producer = producers.get(tensor)
            if producer is None:
                raise SurgeryError(
                    f"Gate {gate.name!r} gates a model input; put it after a "
                    "convolution or normalization."
                )
            if producer.kind in _ANCHOR_KINDS:
                _fold_into(producer, scale, shift, gate)
                break
            passes = np.all(shift == 0) and (
                producer.kind in ("spatial", "zero_pad")
                or (
                    producer.kind == "activation"
                    and _activation_commutes(producer, scale)
                )
            )
            if not passes:
                raise SurgeryError(
                    f"Cannot fold gate {gate.name!r} through layer "
                    f"{producer.name!r} ({producer.kind}): the gate must follow "
                    "a convolution or normalization, optionally through ReLU-like "
                    "activations or padding when its shift is 0."
                )
            tensor = producer.inputs[0]
        gate.kind = "identity"


# ----------------------------------------------------- constant propagation


@dataclasses.dataclass
class _Const:
    """Per-channel knowledge of a tensor's values.

    `value[c]` is NaN where channel c varies, else the constant it holds;
    `padded[c]` marks constants that passed a zero padding: they equal
    `value[c]` times one 0/1 border pattern shared by all such channels.
    """

    value: np.ndarray
    padded: np.ndarray

    @classmethod
    def varying(cls, channels: int) -> _Const:
        return cls(np.full(channels, np.nan), np.zeros(channels, bool))

    def flat(self) -> _Const:
        return _Const(self.value, np.zeros_like(self.padded))


def _preserves_constants(op: _Op) -> bool:
    """Whether a constant input channel gives a constant output (no zero pad)."""
    if op.kind == "dense":
        return True
    if op.kind == "conv_t":
        return False
    layer = op.layer
    kernel = tuple(np.atleast_1d(layer.kernel_size))
    return layer.padding == "valid" or all(k == 1 for k in kernel)


def _dependency_and_sums(op: _Op) -> tuple[np.ndarray, np.ndarray]:
    """(|W| summed over space, W summed over space), each (C_in, C_out)."""
    params = op.params
    if op.kind == "separable":
        depthwise = params["depthwise"]
        dep = np.abs(depthwise).sum((0, 1))[:, None] * np.abs(params["pointwise"])
        sums = depthwise.sum((0, 1))[:, None] * params["pointwise"]
        return dep, sums
    kernel = params["kernel"]
    if op.kind == "conv_t":
        kernel = kernel.transpose(0, 1, 3, 2)
    return np.abs(kernel).sum((0, 1)), kernel.sum((0, 1))


def _input_roles(op: _Op, const: _Const) -> tuple[np.ndarray, np.ndarray]:
    """Masks of input channels that fold into the bias / need a carrier."""
    known = ~np.isnan(const.value)
    zero = known & (const.value == 0)
    foldable = zero | (known & ~const.padded & _preserves_constants(op))
    return foldable, known & ~foldable


def _const_conv(op: _Op, const: _Const) -> _Const:
    dep, sums = _dependency_and_sums(op)
    foldable, _ = _input_roles(op, const)
    out = op.params["bias"] + sums[foldable].T @ const.value[foldable]
    out[dep[~foldable].sum(0) > 0] = np.nan
    return _Const(_apply_activation(op, out), np.zeros(len(out), bool))


def _const_depthwise(op: _Op, const: _Const) -> _Const:
    kernel, bias = op.params["kernel"], op.params["bias"]
    foldable, _ = _input_roles(op, const)
    out = bias + kernel.sum((0, 1)) * np.where(foldable, const.value, 0.0)
    out[~foldable & (np.abs(kernel).sum((0, 1)) > 0)] = np.nan
    return _Const(_apply_activation(op, out), np.zeros(len(out), bool))


def _const_norm(op: _Op, const: _Const) -> _Const:
    params = op.params
    gamma, beta = params["gamma"], params["beta"]
    varying = np.isnan(const.value) | const.padded
    if op.kind == "instance_norm":
        out = beta.copy()
    else:
        epsilon = op.layer.epsilon
        std = np.sqrt(params["variance"] + epsilon)
        out = gamma * (const.value - params["mean"]) / std + beta
    out[varying] = np.nan
    out[gamma == 0] = beta[gamma == 0]
    return _Const(out, np.zeros(len(out), bool))


def _const_activation(op: _Op, const: _Const) -> _Const:
    out = _apply_activation(op, const.value)
    moves_zero = _apply_activation(op, np.zeros_like(const.value)) != 0.0
    out[const.padded & moves_zero] = np.nan
    return _Const(out, const.padded & ~np.isnan(out))


def _const_add(consts: list[_Const]) -> _Const:
    value = np.sum([c.value for c in consts], axis=0)
    nonzero_flat = np.any([(c.value != 0) & ~c.padded for c in consts], axis=0)
    nonzero_padded = np.any([(c.value != 0) & c.padded for c in consts], axis=0)
    mixed = nonzero_flat & nonzero_padded
    value[mixed] = np.nan
    return _Const(value, nonzero_padded & ~mixed & ~np.isnan(value))


def _propagate_constants(graph: _Graph) -> list[_Const]:
    """Per tensor: which channels hold a known constant, and which value."""
    consts: list[_Const] = [None] * len(graph.channels)
    for tensor in graph.inputs:
        consts[tensor] = _Const.varying(graph.channels[tensor])
    for op in graph.ops:
        inputs = [consts[t] for t in op.inputs]
        if op.kind in _CONV_KINDS:
            out = _const_conv(op, inputs[0])
        elif op.kind == "depthwise":
            out = _const_depthwise(op, inputs[0])
        elif op.kind in ("instance_norm", "batch_norm"):
            out = _const_norm(op, inputs[0])
        elif op.kind in ("activation", "fake_quant"):
            out = _const_activation(op, inputs[0])
        elif op.kind == "zero_pad":
            value = inputs[0].value
            out = _Const(value, inputs[0].padded | (value != 0) & ~np.isnan(value))
        elif op.kind == "add":
            out = _const_add(inputs)
        elif op.kind == "concat":
            out = _Const(
                np.concatenate([c.value for c in inputs]),
                np.concatenate([c.padded for c in inputs]),
            )
        else:
            out = inputs[0]
        consts[op.output] = out
    return consts


# ------------------------------------------------------------ live channels


class _Classes:
    """Union-find over channel groups; each tensor maps channels to groups."""

    def __init__(self):
        self.parent: list[int] = []

    def fresh(self, count: int) -> np.ndarray:
        start = len(self.parent)
        self.parent.extend(range(start, start + count))
        return np.arange(start, start + count)

    def find(self, item: int) -> int:
        while self.parent[item] != item:
            self.parent[item] = self.parent[self.parent[item]]
            item = self.parent[item]
        return item

    def union(self, a: int, b: int) -> None:
        self.parent[self.find(a)] = self.find(b)


def _channel_groups(graph: _Graph) -> tuple[_Classes, list[np.ndarray]]:
    classes = _Classes()
    groups = [None] * len(graph.channels)
    for tensor in graph.inputs:
        groups[tensor] = classes.fresh(graph.channels[tensor])
    for op in graph.ops:
        inputs = [groups[t] for t in op.inputs]
        if op.kind in _SAME_CHANNEL_KINDS + ("gate",):
            groups[op.output] = inputs[0]
        elif op.kind == "add":
            for other in inputs[1:]:
                for a, b in zip(inputs[0], other, strict=True):
                    classes.union(a, b)
            groups[op.output] = inputs[0]
        elif op.kind == "concat":
            groups[op.output] = np.concatenate(inputs)
        else:
            groups[op.output] = classes.fresh(graph.channels[op.output])
    return classes, groups


class _Liveness:
    """Which channel groups must be kept, and which channels carry constants."""

    def __init__(self, graph: _Graph, consts: list[_Const]):
        self.graph = graph
        self.consts = consts
        self.classes, self.groups = _channel_groups(graph)
        self.needed: set[int] = set()
        for tensor in graph.inputs + graph.outputs:
            self.need(tensor, np.ones(graph.channels[tensor], bool))
        while self._mark_consumers():
            pass

    def alive(self, tensor: int) -> np.ndarray:
        return np.array(
            [self.classes.find(c) in self.needed for c in self.groups[tensor]], bool
        )

    def need(self, tensor: int, mask: np.ndarray) -> bool:
        new = {self.classes.find(c) for c in self.groups[tensor][mask]}
        added = bool(new - self.needed)
        self.needed |= new
        return added

    def used_inputs(self, op: _Op) -> np.ndarray:
        dep, _ = _dependency_and_sums(op)
        return dep[:, self.alive(op.output)].sum(1) > 0

    def carriers(self, op: _Op) -> dict[int, np.ndarray]:
        """Carrier input channel -> the removable constant channels it carries.

        Constant channels that cannot fold into the bias share one border
        pattern per `padded` flag; one channel of each pattern is kept.
        """
        const = self.consts[op.inputs[0]]
        _, carried = _input_roles(op, const)
        carried &= self.used_inputs(op)
        alive = self.alive(op.inputs[0])
        result = {}
        for pattern in (False, True):
            members = carried & (const.padded == pattern)
            if not members.any():
                continue
            pool = members & alive if (members & alive).any() else members
            carrier = int(np.argmax(np.where(pool, np.abs(const.value), -1.0)))
            result[carrier] = members & ~alive & (np.arange(len(members)) != carrier)
        return result

    def _mark_consumers(self) -> bool:
        changed = False
        for op in reversed(self.graph.ops):
            if op.kind not in _CONV_KINDS or not self.alive(op.output).any():
                continue
            const = self.consts[op.inputs[0]]
            used = self.used_inputs(op)
            foldable, carried = _input_roles(op, const)
            required = used & ~foldable
            if op.kind in _CARRIER_KINDS:
                required &= ~carried
                for carrier in self.carriers(op):
                    required[carrier] = True
            if not (required | self.alive(op.inputs[0])).any():
                required[0] = True
            changed |= self.need(op.inputs[0], required)
        return changed


# ----------------------------------------------------------------- rebuild


def _check_removed(op: _Op, const: _Const, removed: np.ndarray) -> None:
    if np.isnan(const.value[removed]).any():
        raise SurgeryError(
            f"Internal error at {op.name!r}: a varying channel was removed."
        )


def _fold_removed_inputs(op: _Op, live: _Liveness, keep_in, keep_out):
    """(bias with foldable removed inputs added, {carrier: merged mask})."""
    const = live.consts[op.inputs[0]]
    used = live.used_inputs(op)
    _, sums = _dependency_and_sums(op)
    foldable, _ = _input_roles(op, const)
    folded = ~keep_in & used & foldable
    _check_removed(op, const, folded)
    bias = (
        op.params["bias"][keep_out] + sums[folded][:, keep_out].T @ const.value[folded]
    )
    carriers = live.carriers(op) if op.kind in _CARRIER_KINDS else {}
    merged = np.zeros_like(keep_in)
    for members in carriers.values():
        merged |= members
    if (~keep_in & used & ~folded & ~merged).any():
        raise SurgeryError(
            f"Internal error at {op.name!r}: a needed input channel was removed."
        )
    return bias, carriers


def _merge_carriers(kernel, in_axis, keep_in, carriers, const: _Const):
    """Slices the kept inputs and adds merged constant channels to carriers."""
    kept = np.flatnonzero(keep_in)
    sliced = np.take(kernel, kept, axis=in_axis)
    for carrier, members in carriers.items():
        position = int(np.flatnonzero(kept == carrier)[0])
        for channel in np.flatnonzero(members):
            ratio = const.value[channel] / const.value[carrier]
            sliced_index = [slice(None)] * kernel.ndim
            sliced_index[in_axis] = position
            source_index = [slice(None)] * kernel.ndim
            source_index[in_axis] = channel
            sliced[tuple(sliced_index)] += ratio * kernel[tuple(source_index)]
    return sliced


def _plain_class(layer) -> type:
    """The plain Keras class a (possibly Super) layer is rebuilt as."""
    return keras_layers.conv.plain_class(layer)


def _clone(layer, name: str, **overrides) -> keras.layers.Layer:
    """A new layer of the same (plain) class and config, with `overrides`."""
    config = layer.get_config()
    config.update(name=name, **overrides)
    return _plain_class(layer).from_config(config)


def _build_conv(op: _Op, live: _Liveness, keep_in, keep_out, name):
    bias, carriers = _fold_removed_inputs(op, live, keep_in, keep_out)
    const = live.consts[op.inputs[0]]
    params, layer, filters = op.params, op.layer, int(keep_out.sum())
    if op.kind == "separable":
        depthwise = params["depthwise"][:, :, keep_in][..., None]
        pointwise = params["pointwise"][keep_in][:, keep_out][None, None]
        new = _clone(layer, name, filters=filters, use_bias=True)
        return new, [depthwise, pointwise, bias]
    if op.kind == "dense":
        kernel = params["kernel"][..., keep_out]
        kernel = _merge_carriers(kernel, 2, keep_in, carriers, const)[0, 0]
        return _clone(layer, name, units=filters, use_bias=True), [kernel, bias]
    if op.kind == "conv":
        kernel = params["kernel"][..., keep_out]
        kernel = _merge_carriers(kernel, 2, keep_in, carriers, const)
    else:
        kernel = params["kernel"][:, :, keep_out]
        kernel = _merge_carriers(kernel, 3, keep_in, carriers, const)
    return _clone(layer, name, filters=filters, use_bias=True), [kernel, bias]


def _build_same_channel(op: _Op, keep, name):
    params, layer = op.params, op.layer
    if op.kind == "depthwise":
        new = _clone(layer, name, use_bias=True)
        return new, [params["kernel"][:, :, keep][..., None], params["bias"][keep]]
    if op.kind == "instance_norm":
        gamma, beta = params["gamma"][keep], params["beta"][keep]
        scale, center = bool(np.any(gamma != 1)), bool(np.any(beta != 0))
        weights = ([gamma] if scale else []) + ([beta] if center else [])
        if isinstance(layer, keras_layers.FakeQuantInstanceNormalization):
            new = keras_layers.FakeQuantInstanceNormalization(
                num_bits=layer.num_bits,
                momentum=layer.momentum,
                center=center,
                scale=scale,
                epsilon=layer.epsilon,
                name=name,
            )
            return new, weights + layer.input_quant.get_weights()
        new = keras_layers.InstanceNormalization(
            center=center,
            scale=scale,
            epsilon=layer.epsilon,
            one_pass=layer.one_pass,
            statistics_stride=layer.statistics_stride,
            name=name,
        )
        return new, weights
    if op.kind == "batch_norm":
        new = keras.layers.BatchNormalization(
            epsilon=layer.epsilon, momentum=layer.momentum, name=name
        )
        weights = [params[k][keep] for k in ("gamma", "beta", "mean", "variance")]
        return new, weights
    if op.kind == "fake_quant":
        return _sliced_fake_quant(layer, keep, name)
    config = layer.get_config()
    config["name"] = name
    return type(layer).from_config(config), []


def _sliced_fake_quant(layer: keras_layers.FakeQuant, keep, name: str):
    """A copy of a FakeQuant for the kept channels (its ranges are per channel
    only with `per_channel=True`)."""
    config = layer.get_config()
    config["name"] = name
    weights = layer.get_weights()
    if layer.per_channel:
        for key in ("min_value", "max_value"):
            if isinstance(config[key], list):
                config[key] = list(np.asarray(config[key])[keep])
        weights = [w[keep] if w.ndim == 1 else w for w in weights]
    return keras_layers.FakeQuant.from_config(config), weights


def _weight_quantized(op: _Op, conv: keras.layers.Layer) -> keras.layers.Layer:
    """`conv` wrapped like the op's original `FakeQuantWeights`, if it had one."""
    original = op.params.get("weight_quant")
    if original is None:
        return conv
    return keras_layers.FakeQuantWeights(
        conv, num_bits=original.num_bits, name=original.name
    )


def _rebuild(graph: _Graph, live: _Liveness, model) -> keras.Model:
    tensors: dict[int, keras.KerasTensor] = {}
    pending: list[tuple[keras.layers.Layer, list]] = []
    new_inputs = []
    for tensor, original in zip(graph.inputs, model.inputs, strict=True):
        name = original._keras_history.operation.name
        new_inputs.append(keras.Input(shape=original.shape[1:], name=name))
        tensors[tensor] = new_inputs[-1]
    for op in graph.ops:
        keep_out = live.alive(op.output)
        if op.kind == "identity" or not keep_out.any():
            tensors[op.output] = tensors.get(op.inputs[0])
            continue
        if op.kind == "add":
            tensors[op.output] = keras.layers.Add(name=op.name)(
                [tensors[t] for t in op.inputs]
            )
            continue
        if op.kind == "concat":
            parts = [tensors[t] for t in op.inputs if live.alive(t).any()]
            layer = keras.layers.Concatenate(name=op.name)
            tensors[op.output] = layer(parts) if len(parts) > 1 else parts[0]
            continue
        if op.kind in _CONV_KINDS:
            keep_in = live.alive(op.inputs[0])
            layer, weights = _build_conv(op, live, keep_in, keep_out, op.name)
            call = _weight_quantized(op, layer)
        else:
            layer, weights = _build_same_channel(op, keep_out, op.name)
            call = layer
        tensors[op.output] = call(tensors[op.inputs[0]])
        pending.append((layer, weights))
        if call is not layer:  # the kernel's grid stays that of the original
            ranges = op.params["weight_quant"].kernel_quant.get_weights()
            pending.append((call.kernel_quant, ranges))
    for layer, weights in pending:
        if weights:
            layer.set_weights([np.asarray(w, np.float32) for w in weights])
    outputs = [tensors[t] for t in graph.outputs]
    return keras.Model(
        new_inputs if len(new_inputs) > 1 else new_inputs[0],
        outputs if len(outputs) > 1 else outputs[0],
        name=f"{model.name}_slim",
    )


# ----------------------------------------------------------------- public


def _analyse(model) -> tuple[_Graph, _Liveness]:
    graph = _trace(model)
    _fold_gates(graph)
    return graph, _Liveness(graph, _propagate_constants(graph))


def slim(model: keras.Model) -> keras.Model:
    """Physically removes the channels that a model's gates switch off.

    Args:
        model: A functional or Sequential Keras model, possibly with
            `ChannelGate`, `SelectiveActivationConv2D` or `Super*` layers
            (and nested functional sub-models). Gates are read in inference
            mode (their hard decisions).

    Returns:
        A plain functional Keras model (Conv2D, Conv2DTranspose,
        InstanceNormalization, ...) without gates, with fewer channels, that
        computes the same outputs as `model(x, training=False)` up to float
        rounding. Layers keep their names.

    Raises:
        SurgeryError: for a layer type slim cannot cut through, a gate that
            cannot be folded into a preceding conv/norm, a shared layer, or a
            subclassed model.

    Example:

    >>> g = tgc.models.resnet_generator(ngf=16, n_blocks=3, gated="binary")
    >>> small = tgc.slim(g)
    >>> tgc.profile(small, (256, 256, 3)).macs < tgc.profile(g, (256, 256, 3)).macs
    """
    graph, live = _analyse(model)
    return _rebuild(graph, live, model)


def live_channels(model: keras.Model) -> list[LayerChannels]:
    """Per channel-producing layer: how many output channels `slim` keeps.

    Args:
        model: A model as accepted by `slim`.

    Returns:
        One `LayerChannels(name, kind, kept, total)` per convolution, dense
        layer and model input, in graph order.
    """
    graph, live = _analyse(model)
    return [
        LayerChannels(
            op.name,
            op.kind,
            int(live.alive(op.output).sum()),
            graph.channels[op.output],
        )
        for op in graph.ops
        if op.kind in _CONV_KINDS
    ]


def kept_channels(model: keras.Model) -> dict[str, np.ndarray]:
    """Per convolution: the indices of the output channels `slim` keeps.

    Channel `j` of a layer of `slim(model)` is channel `kept[name][j]` of the
    same layer of `model`: the map a student needs to be matched to its
    teacher channel by channel (`tgc.reconstruction.reconstruct`).

    Args:
        model: A model as accepted by `slim` (e.g. a gated teacher after
            `tgc.pruning.prune_gates_by_l1`).

    Returns:
        `{layer name: sorted int indices}` for every convolution and dense
        layer.

    Example:

    >>> gated = tgc.pruning.l1_gated(teacher, 0.25)
    >>> kept = tgc.surgery.kept_channels(gated)
    >>> student = tgc.slim(gated)
    """
    graph, live = _analyse(model)
    return {
        op.name: np.flatnonzero(live.alive(op.output))
        for op in graph.ops
        if op.kind in _CONV_KINDS
    }


def _gate_ops(graph: _Graph) -> list[_Op]:
    return [op for op in graph.ops if op.kind == "gate"]


def gate_layers(model: keras.Model) -> dict[str, keras_layers.ChannelGate]:
    """Every gate of a model, by the name the cost and pruning tools use.

    A gate's name is its layer name; inside a `SelectiveActivationConv2D`
    it is `<layer name>_gate`, inside a nested model `<model name>_<name>`.
    `channel_groups`, `gate_producers`, `tgc.pruning.l1_importance` and
    `tgc.cost` key their results by these names.

    Args:
        model: A model as accepted by `slim`.

    Returns:
        `{name: ChannelGate}` in graph order.

    Example:

    >>> d = tgc.models.patchgan_discriminator(ndf=8, gated=True)
    >>> list(tgc.surgery.gate_layers(d))
    ['layer1_conv_gate', 'layer2_conv_gate', 'layer3_conv_gate', 'layer4_conv_gate']
    """
    return {op.name: op.layer for op in _gate_ops(_trace(model))}


@dataclasses.dataclass(frozen=True)
class ChannelGroups:
    """Which gate channels `slim` keeps or removes together.

    Channels joined by a residual `Add` are one group: `slim` keeps a group
    whole if any member channel is needed (an open gate on any of them),
    and removes it whole otherwise. Every other gate channel is a group of
    its own.

    Attributes:
        ids: `{gate name: (C,) int array}`: channel `c` of gate `a` and
            channel `d` of gate `b` are tied iff `ids[a][c] == ids[b][d]`.
            Ids run over `0..count-1`, numbered in graph order.
        count: The number of distinct groups over all gate channels.
        tied: The sets of two or more gates that share groups, each a tuple
            of gate names in graph order (e.g. a ResNet's residual stream:
            `("down2_gate", "block1_gate2", ..., "block9_gate2")`).
    """

    ids: dict[str, np.ndarray]
    count: int
    tied: tuple[tuple[str, ...], ...]


def _tied_sets(ids: dict[str, np.ndarray]) -> tuple[tuple[str, ...], ...]:
    """Connected components (of two or more gates) of the shares-a-group graph."""
    names = list(ids)
    classes = _Classes()
    classes.fresh(len(names))
    owner: dict[int, int] = {}
    for index, name in enumerate(names):
        for group in ids[name]:
            classes.union(index, owner.setdefault(int(group), index))
    components: dict[int, list[str]] = {}
    for index, name in enumerate(names):
        components.setdefault(classes.find(index), []).append(name)
    return tuple(tuple(c) for c in components.values() if len(c) > 1)


def channel_groups(model: keras.Model) -> ChannelGroups:
    """The residual channel groups of a gated model, as `slim` sees them.

    Methods that prune the residual stream need the same groups `slim`
    uses: DMAD's cross-block group sparsity, GCC's shared residual mask,
    filter-L1 ranking (`tgc.pruning.l1_importance`) and the MACs estimate
    of `tgc.cost` all read them from here.

    Args:
        model: A model as accepted by `slim`.

    Returns:
        A `ChannelGroups` keyed by the names of `gate_layers(model)`.

    Example:

    >>> g = tgc.models.resnet_generator(ngf=8, n_blocks=2, gated="binary")
    >>> groups = tgc.surgery.channel_groups(g)
    >>> groups.tied
    (('down2_gate', 'block1_gate2', 'block2_gate2'),)
    >>> bool((groups.ids["down2_gate"] == groups.ids["block2_gate2"]).all())
    True
    """
    graph = _trace(model)
    classes, groups = _channel_groups(graph)
    numbering: dict[int, int] = {}
    ids = {}
    for gate in _gate_ops(graph):
        roots = [classes.find(group) for group in groups[gate.output]]
        ids[gate.name] = np.array(
            [numbering.setdefault(root, len(numbering)) for root in roots], np.int64
        )
    return ChannelGroups(ids=ids, count=len(numbering), tied=_tied_sets(ids))


def _producer(graph: _Graph, gate: _Op) -> _Op:
    """The convolution whose output channels a gate decides."""
    producers = graph.producers()
    op = producers.get(gate.inputs[0])
    while op is not None and op.kind not in _CONV_KINDS + ("depthwise",):
        if op.kind not in _SAME_CHANNEL_KINDS + ("gate",):
            op = None
            break
        op = producers.get(op.inputs[0])
    if op is None:
        raise SurgeryError(
            f"Gate {gate.name!r} has no convolution before it (through norms, "
            "activations and padding only)."
        )
    return op


def gate_producers(model: keras.Model) -> dict[str, keras.layers.Layer]:
    """Per gate: the convolution (or Dense) layer whose output channels it gates.

    The producer is found by walking back from the gate through norms,
    activations, padding and other gates. For a `SelectiveActivationConv2D`
    gate it is that layer's inner `conv`.

    Args:
        model: A model as accepted by `slim`.

    Returns:
        `{gate name: layer}`, keyed like `gate_layers(model)`.

    Raises:
        SurgeryError: If a gate has no convolution before it.

    Example:

    >>> g = tgc.models.mobile_resnet_generator(ngf=8, n_blocks=2, gated="binary")
    >>> tgc.surgery.gate_producers(g)["block1_gate1"].name
    'block1_pwconv1'
    """
    graph = _trace(model)
    return {gate.name: _producer(graph, gate).layer for gate in _gate_ops(graph)}
