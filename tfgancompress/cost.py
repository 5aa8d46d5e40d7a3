"""What a gated network will cost once slimmed: fast and differentiable MACs.

`tgc.profile(tgc.slim(model), input_shape).macs` is the truth, but slimming
rebuilds the network (about a second on a 256x256 ResNet). This module
reads the same answer off `slim`'s channel graph without rebuilding it:

- `gate_macs(model, input_shape)`: the exact MACs of the slimmed model at
  the gates' current hard decisions, as an int (a few milliseconds once the
  model's channel graph is cached);
- `MacsEstimator(model, input_shape)`: built once, then called with per-gate
  keep probabilities; returns a differentiable float32 scalar for a loss
  (budget penalties, pruning agents), usable in `tf.function` and XLA.

How channels are counted (the rules of `tgc.slim`): a convolution costs
`grid * window * live_in * live_out` on its output grid (torchprofile's
rule, see `tgc.profile`); depthwise `grid * window * live`, separable
`grid * live_in * (window + live_out)`. A channel lives when a live
consumer needs its varying value. Channels tied by residual adds
(`tgc.surgery.channel_groups`) live or die together: a group lives if any
member gate keeps it, softly `1 - prod(1 - p)` over its members. Where
every input of a live convolution is removed, `slim` still keeps one (its
channel 0), and a branch whose consumers are all removed dies with them;
the estimator applies both rules to the keeps rounded at 0.5 (as constant
factors, without gradient), so it is exact on 0/1 keeps.

Where the estimate differs from `slim`: a removed channel that holds a
*nonzero constant* is folded into the next layer's bias by `slim` when
that layer maps constants to constants; where zero padding or a transposed
convolution makes the constant vary near the borders, `slim` keeps one
such channel as a *carrier* (a depthwise/separable consumer keeps every
such channel). `MacsEstimator` counts those channels as removed, so there
its estimate is lower than `profile(slim(model))`. It happens in two
cases: a closed `"scale"` gate with a nonzero beta (GAN Slimming), and a
layer with *every* channel removed whose zeros reach a norm with an offset
(a BatchNorm, an affine norm, a biased conv without a norm): the constant
that comes out is carried on. With non-affine instance norms (the CycleGAN
generators) and a kept channel in every gate, it does not happen.
`gate_macs` detects both and counts them exactly (through `slim`'s own
analysis, without the rebuild).

Every convolution is taken to connect each input channel to each output
filter (no kernel column or filter is exactly zero), which holds for any
trained or randomly initialised network. `Super*` layers count at their
`active_filters` width.

Example:

```python
g = tgc.models.resnet_generator(ngf=16, n_blocks=6, gated="gumbel")
estimator = tgc.cost.MacsEstimator(g, (256, 256, 3))
logits = {n: tf.Variable(tf.zeros(g.channels)) for n, g in estimator.gates.items()}
keeps = {n: tf.sigmoid(v) for n, v in logits.items()}  # e.g. an agent's output
ratio = estimator(keeps) / estimator.full_macs  # differentiable
tgc.cost.gate_macs(g, (256, 256, 3))  # == tgc.profile(tgc.slim(g), ...).macs
```
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Mapping

import keras
import numpy as np
import tensorflow as tf

import keras_layers
from tfgancompress import surgery
from tfgancompress.profile import _input_specs, _Walker

_CONV_KINDS = ("conv", "conv_t", "separable", "dense")
# Backward sweeps of the liveness rule in the estimator; one suffices for the
# zoo's networks (residual groups are always read by the last consumer).
_PASSES = 2


class _GridWalker(_Walker):
    """Records each layer call's output grid (H * W) by layer identity."""

    def __init__(self):
        super().__init__()
        self.grids: dict[int, int] = {}

    def visit(self, operation, args, kwargs, prefix: str):
        count = len(self.records)
        outputs = super().visit(operation, args, kwargs, prefix)
        if len(self.records) > count:
            shape = self.records[-1].output_shape
            grid = math.prod(shape[1:-1])
            self.grids[id(operation)] = grid
            if isinstance(operation, keras_layers.SelectiveActivationConv2D):
                self.grids[id(operation.conv)] = grid
            if isinstance(operation, keras_layers.FakeQuantWeights):
                self.grids[id(operation.layer)] = grid
        return outputs


def _output_grids(model, input_shape) -> dict[int, int]:
    walker = _GridWalker()
    walker.walk(model, _input_specs(model, input_shape), "")
    return walker.grids


# ------------------------------------------------------------- backends


class _NumpyOps:
    """Hard 0/1 evaluation (exact integers) in float64 numpy."""

    @staticmethod
    def constant(value):
        return np.asarray(value, np.float64)

    @staticmethod
    def take(x, indices):
        return x[indices]

    @staticmethod
    def reduce_max(x, axis=None):
        return np.max(x, axis=axis)

    @staticmethod
    def reduce_prod(x, axis=None):
        return np.prod(x, axis=axis)

    @staticmethod
    def reduce_sum(x, axis=None):
        return np.sum(x, axis=axis)

    @staticmethod
    def segment_or(x, ids, count):
        out = np.ones(count)
        np.multiply.at(out, ids, 1.0 - x)
        return 1.0 - out

    @staticmethod
    def scatter_max(x, indices, values):
        x = x.copy()
        np.maximum.at(x, indices, values)
        return x

    @staticmethod
    def loop(count, body, state):
        for step in range(count):
            state = body(step, state)
        return state

    @staticmethod
    def concat(parts):
        return np.concatenate(parts)


class _TensorOps:
    """Differentiable float32 evaluation in TensorFlow (eager, graph, XLA)."""

    @staticmethod
    def constant(value):
        return tf.constant(value, tf.float32)

    @staticmethod
    def take(x, indices):
        return tf.gather(x, indices)

    @staticmethod
    def reduce_max(x, axis=None):
        return tf.reduce_max(x, axis=axis)

    @staticmethod
    def reduce_prod(x, axis=None):
        return tf.reduce_prod(x, axis=axis)

    @staticmethod
    def reduce_sum(x, axis=None):
        return tf.reduce_sum(x, axis=axis)

    @staticmethod
    def segment_or(x, ids, count):
        return 1.0 - tf.math.unsorted_segment_prod(1.0 - x, ids, count)

    @staticmethod
    def scatter_max(x, indices, values):
        indices = tf.reshape(tf.convert_to_tensor(indices), (-1, 1))
        updates = tf.broadcast_to(values, tf.shape(indices)[:1])
        return tf.tensor_scatter_nd_max(x, indices, updates)

    @staticmethod
    def loop(count, body, state):
        """A `tf.while_loop`: compiled once however many layers the model has."""
        _, state = tf.while_loop(
            lambda step, _: step < count,
            lambda step, state: (step + 1, body(step, state)),
            (tf.constant(0), state),
        )
        return state

    @staticmethod
    def concat(parts):
        return tf.concat(parts, 0)


# ------------------------------------------------------------ the graph


def _window(op) -> int:
    if op.kind == "dense":
        return 1
    return math.prod(op.layer.kernel_size)


def _zero_image(op) -> float:
    """The op's activation applied to 0."""
    return float(surgery._apply_activation(op, np.zeros(1))[0])


def _offset(op) -> bool:
    """Whether zero or constant inputs can give the op a nonzero constant."""
    if op.kind == "activation":
        return _zero_image(op) != 0.0
    if op.kind in _CONV_KINDS + ("depthwise",):
        if getattr(op.layer, "use_bias", False):
            return True
        return op.params["activation"] != "linear" and _zero_image(op) != 0.0
    return op.kind == "batch_norm"


def _padded(rows: list, fill: int) -> np.ndarray:
    """A 2-D int table of ragged rows, padded with `fill`."""
    width = max([1] + [len(row) for row in rows])
    table = np.full((len(rows), width), fill, np.int32)
    for i, row in enumerate(rows):
        table[i, : len(row)] = row
    return table


def _cost_row(op, grid: int) -> tuple[int, int, int]:
    """`(a, b, c)`: the op costs `a * in * out + b * in + c * out` (live channels)."""
    window = _window(op)
    if op.kind == "depthwise":
        return 0, 0, grid * window
    if op.kind == "separable":
        return grid, grid * window, 0
    return grid * window, 0, 0


class _CostGraph:
    """`slim`'s channel graph of a model, as index tables for counting.

    Built once per model and input shape (it reads the weights once); an
    evaluation reads only the gates' state. Vocabulary:

    - a *mixer* is an op that mixes channels (conv, transposed conv,
      separable, dense): its output varies iff one of its inputs varies;
    - a *term* of an input channel of a mixer reads "varies if producer `p`
      (a mixer, or the model inputs) varies and these *slots* are 1"; slots
      are the gate channels and super-layer channels on the way. A channel
      varies iff one of its terms holds (a residual add gives several);
    - groups are `slim`'s channel groups (residual ties); index `count` is
      a dummy group that pads the tables and never lives.
    """

    def __init__(self, model: keras.Model, input_shape):
        graph = surgery._trace(model)
        grids = _output_grids(model, input_shape)
        self.ops, self.inputs = graph.ops, graph.inputs
        self.channels = graph.channels
        self._read_groups(graph)
        self.gates = {op.name: op for op in graph.ops if op.kind == "gate"}
        self.supers = {
            index: op.layer
            for index, op in enumerate(graph.ops)
            if op.kind in _CONV_KINDS and hasattr(op.layer, "active_filters")
        }
        self._layout_slots()
        counted = [op for op in graph.ops if op.kind in _CONV_KINDS + ("depthwise",)]
        self.counted = [(op.inputs[0], op.output) for op in counted]
        dummy = self.count
        self.cost_in = _padded([self.groups[op.inputs[0]] for op in counted], dummy)
        self.cost_out = _padded([self.groups[op.output] for op in counted], dummy)
        rows = [_cost_row(op, grids[id(op.layer)]) for op in counted]
        self.cost_rows = np.array(rows, np.float64).reshape(-1, 3).T
        self._liveness_tables(graph)
        self.offsets = [_offset(op) for op in graph.ops]
        for op in graph.ops:
            op.params = {}  # the weights' copies are not needed any more

    def _read_groups(self, graph) -> None:
        classes, groups = surgery._channel_groups(graph)
        roots = sorted({classes.find(g) for ids in groups for g in ids})
        compact = {root: i for i, root in enumerate(roots)}
        self.count = len(roots)
        self.groups = [
            np.array([compact[classes.find(g)] for g in ids], np.int32)
            for ids in groups
        ]
        self.io = np.zeros(self.count + 1)
        for tensor in graph.inputs + graph.outputs:
            self.io[self.groups[tensor]] = 1.0

    def _layout_slots(self) -> None:
        """Positions of the gate and super-layer channels in one slot vector."""
        self.slot_of: dict = {}
        start = 0
        for name, op in self.gates.items():
            self.slot_of[name] = start
            start += self.channels[op.output]
        for index in self.supers:
            self.slot_of[index] = start
            start += self.channels[self.ops[index].output]
        self.one_slot = start  # holds 1: pads the slot tables
        gate_groups = [self.groups[op.output] for op in self.gates.values()]
        self.point_groups = np.concatenate(gate_groups + [np.zeros(0, np.int32)])
        self.ungated = np.ones(self.count + 1)
        self.ungated[self.point_groups] = 0.0
        self.ungated[self.count] = 0.0

    def _terms(self, graph, mixers: dict) -> list:
        """Per tensor and channel: its terms `(producer, slots)`."""
        inputs_producer = len(mixers)
        terms = [None] * len(graph.channels)
        for tensor in graph.inputs:
            terms[tensor] = [((inputs_producer, ()),)] * graph.channels[tensor]
        for index, op in enumerate(graph.ops):
            inputs = [terms[t] for t in op.inputs]
            if op.kind == "gate":
                start = self.slot_of[op.name]
                out = [
                    tuple((p, slots + (start + c,)) for p, slots in channel)
                    for c, channel in enumerate(inputs[0])
                ]
            elif index in mixers:
                width = graph.channels[op.output]
                if index in self.supers:
                    start = self.slot_of[index]
                    out = [((mixers[index], (start + c,)),) for c in range(width)]
                else:
                    out = [((mixers[index], ()),)] * width
            elif op.kind == "add":
                out = [
                    tuple(dict.fromkeys(sum(ch, ())))
                    for ch in zip(*inputs, strict=True)
                ]
            elif op.kind == "concat":
                out = [channel for part in inputs for channel in part]
            else:
                out = inputs[0]
            terms[op.output] = out
        return terms

    def _liveness_tables(self, graph) -> None:
        indices = [i for i, op in enumerate(graph.ops) if op.kind in _CONV_KINDS]
        terms = self._terms(graph, {index: m for m, index in enumerate(indices)})
        producers, slots, channels, rows = [], [], [], []
        sources = [graph.ops[i].inputs[0] for i in indices]
        flat = 0  # mixer input channels, numbered across all mixers
        for tensor in sources:
            rows.append([])
            for channel in terms[tensor]:
                for producer, path in channel:
                    rows[-1].append(len(producers))
                    producers.append(producer)
                    slots.append(path)
                    channels.append(flat)
                flat += 1
        self.mixer_count = len(indices)
        # Producers: the mixers, the model inputs (always vary), a padding (0).
        self.term_producers = np.array(producers + [len(indices) + 1], np.int32)
        self.term_slots = _padded(slots + [()], self.one_slot)
        self.term_channels = np.array(channels, np.int32)
        self.mixer_terms = _padded(rows, len(producers))
        dummy = self.count
        self.mixer_in = _padded([self.groups[t] for t in sources], dummy)
        outputs = [graph.ops[i].output for i in indices]
        self.mixer_out = _padded([self.groups[t] for t in outputs], dummy)
        starts = np.cumsum([0] + [graph.channels[t] for t in sources])
        self.source_channels = int(starts[-1])
        self.mixer_channels = _padded(
            [np.arange(a, b) for a, b in zip(starts[:-1], starts[1:], strict=True)],
            self.source_channels,
        )
        self.mixer_first = self.mixer_in[:, 0].copy()

    # ------------------------------------------------------ evaluation

    def slots(self, xp, keeps: dict, masks: dict):
        """The slot vector: gate keeps, super-layer masks, then a 1."""
        parts = [keeps[name] for name in self.gates]
        parts += [masks[index] for index in self.supers]
        return xp.concat(parts + [xp.constant(np.ones(1))])

    def varying_inputs(self, xp, slots):
        """Per mixer input channel (flat, then a padding 0): 1 if it varies."""
        count = self.mixer_count
        paths = xp.reduce_prod(xp.take(slots, self.term_slots), axis=1)

        def forward(m, varies):  # mixers come in topological order
            rows = xp.take(self.mixer_terms, m)
            producers = xp.take(self.term_producers, rows)
            value = xp.reduce_max(xp.take(varies, producers) * xp.take(paths, rows))
            return xp.scatter_max(varies, [m], value)

        varies = xp.loop(count, forward, xp.constant(np.r_[np.zeros(count), 1.0, 0.0]))
        values = xp.take(varies, self.term_producers[:-1]) * paths[:-1]
        return xp.segment_or(values, self.term_channels, self.source_channels + 1)

    def sweep(self, xp, alive, varying):
        """One backward sweep of `slim`'s liveness rule over the mixers.

        A mixer with a live output needs its varying inputs; one with a live
        output and no live input keeps its input channel 0.
        """
        count = self.mixer_count

        def backward(step, alive):
            m = count - 1 - step
            out_alive = xp.reduce_max(xp.take(alive, xp.take(self.mixer_out, m)))
            inputs = xp.take(self.mixer_in, m)
            channels = xp.take(self.mixer_channels, m)
            alive = xp.scatter_max(
                alive, inputs, out_alive * xp.take(varying, channels)
            )
            dead = 1.0 - xp.reduce_max(xp.take(alive, inputs))
            first = xp.take(self.mixer_first, m)
            return xp.scatter_max(alive, [first], out_alive * dead)

        return xp.loop(count, backward, alive)

    def super_masks(self, xp) -> dict:
        """Per `Super*` op index: 1 for its active output channels."""
        return {index: _super_mask(xp, layer) for index, layer in self.supers.items()}

    def keep_or(self, xp, points):
        """Per group: `1 - prod(1 - keep)` over its gate channels; 1 if ungated."""
        union = xp.segment_or(points, self.point_groups, self.count + 1)
        return union + xp.constant(self.ungated)

    def macs(self, xp, live):
        """`sum(a * live_in * live_out + b * live_in + c * live_out)`."""
        live_in = xp.reduce_sum(xp.take(live, self.cost_in), axis=1)
        live_out = xp.reduce_sum(xp.take(live, self.cost_out), axis=1)
        a, b, c = (xp.constant(row) for row in self.cost_rows)
        return xp.reduce_sum(a * live_in * live_out + b * live_in + c * live_out)

    def nonzero_constants(self, keeps: dict, shifts: dict, masks: dict) -> list:
        """Per tensor: the channels that are constant and may be nonzero."""
        varying = [None] * len(self.channels)
        nonzero = [None] * len(self.channels)
        for tensor in self.inputs:
            varying[tensor] = np.ones(self.channels[tensor], bool)
            nonzero[tensor] = np.zeros(self.channels[tensor], bool)
        for index, op in enumerate(self.ops):
            v_in = [varying[t] for t in op.inputs]
            z_in = [nonzero[t] for t in op.inputs]
            width = self.channels[op.output]
            if op.kind == "gate":
                v = v_in[0] & (keeps[op.name] != 0)
                z = z_in[0] | (shifts[op.name] != 0)
            elif op.kind in _CONV_KINDS:
                v = np.full(width, v_in[0].any())
                z = np.full(width, self.offsets[index] or z_in[0].any())
                if index in masks:
                    v, z = v & (masks[index] != 0), z & (masks[index] != 0)
            elif op.kind == "add":
                v, z = np.any(v_in, axis=0), np.any(z_in, axis=0)
            elif op.kind == "concat":
                v, z = np.concatenate(v_in), np.concatenate(z_in)
            elif op.kind == "instance_norm":
                v, z = v_in[0], np.full(width, bool(op.layer.center))
            else:
                v, z = v_in[0], z_in[0] | self.offsets[index]
            varying[op.output], nonzero[op.output] = v, z & ~v
        return nonzero


def _super_mask(xp, layer):
    if xp is _NumpyOps:
        active = int(keras.ops.convert_to_numpy(layer.active_filters))
        return (np.arange(layer.filters) < active).astype(np.float64)
    keep = tf.range(layer.filters) < tf.cast(layer.active_filters, tf.int32)
    return tf.cast(keep, tf.float32)


_GRAPHS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _shape_key(input_shape) -> tuple:
    if isinstance(input_shape, (tuple, list)):
        return tuple(_shape_key(s) for s in input_shape)
    return input_shape


def _cost_graph(model: keras.Model, input_shape) -> _CostGraph:
    """The model's `_CostGraph` at `input_shape`, built once and cached."""
    if not isinstance(model, keras.Model):
        raise TypeError(f"Expected a keras.Model, got {type(model).__name__}.")
    cache = _GRAPHS.setdefault(model, {})
    key = _shape_key(input_shape)
    if key not in cache:
        cache[key] = _CostGraph(model, input_shape)
    return cache[key]


def _hard_state(graph: _CostGraph):
    """The gates' current keep masks and shifts, and the super masks (numpy)."""
    keeps, shifts = {}, {}
    for name, op in graph.gates.items():
        scale, shifts[name] = op.layer.channel_affine()
        keeps[name] = (scale != 0).astype(np.float64)
    masks = graph.super_masks(_NumpyOps)
    return keeps, shifts, masks


def _needs_slim_analysis(graph: _CostGraph, alive, keeps, shifts, masks) -> bool:
    """Whether a live op may read a nonzero constant (see the module docstring)."""
    constants = graph.nonzero_constants(keeps, shifts, masks)
    for source, target in graph.counted:
        if constants[source].any() and alive[graph.groups[target]].any():
            return True
    for op in graph.ops:
        norm = op.kind in ("instance_norm", "batch_norm") and op.layer.scale
        if norm and np.any(keras.ops.convert_to_numpy(op.layer.gamma) == 0):
            return True
    return False


def gate_macs(model: keras.Model, input_shape) -> int:
    """MACs of `tgc.slim(model)` at the gates' current decisions, without slimming.

    Equals `tgc.profile(tgc.slim(model), input_shape).macs` exactly. The
    model's channel graph is read once per model and input shape and
    cached (weakly); later calls read only the gates, in milliseconds. When
    a removed channel may hold a nonzero constant that a live layer reads
    (see the module docstring), the count goes through `slim`'s own
    analysis (without the rebuild): slower, still exact.

    Args:
        model: A model as accepted by `tgc.slim` (gated, super or plain).
        input_shape: `(H, W, C)` as for `tgc.profile`.

    Returns:
        The MACs per image, an int.

    Example:

    >>> g = tgc.models.resnet_generator(ngf=8, n_blocks=2, gated="binary")
    >>> tgc.pruning.prune_gates_by_l1(g, 0.5)
    >>> tgc.cost.gate_macs(g, (64, 64, 3)) == tgc.profile(
    ...     tgc.slim(g), (64, 64, 3)).macs
    True
    """
    graph = _cost_graph(model, input_shape)
    keeps, shifts, masks = _hard_state(graph)
    varying = graph.varying_inputs(_NumpyOps, graph.slots(_NumpyOps, keeps, masks))
    alive = graph.io
    while True:
        swept = graph.sweep(_NumpyOps, alive, varying)
        if np.array_equal(swept, alive):
            break
        alive = swept
    if _needs_slim_analysis(graph, alive, keeps, shifts, masks):
        _, live = surgery._analyse(model)
        alive = np.zeros(graph.count + 1)
        for tensor, groups in enumerate(graph.groups):
            alive[groups] = np.maximum(alive[groups], live.alive(tensor))
    return int(round(graph.macs(_NumpyOps, alive)))


class MacsEstimator:
    """Differentiable MACs of a gated model as a function of its gates' keeps.

    Built once (it reads the model's channel graph), then called with keep
    probabilities, e.g. from a pruning agent, inside a train step. On 0/1
    keeps it equals `tgc.profile(tgc.slim(model), input_shape).macs` (up to
    float32 rounding) except where `slim` keeps a carrier channel for a
    removed nonzero constant (module docstring); `gate_macs` is exact
    there too.

    Soft keeps count a channel as live with probability `p`; a residual
    group of channels lives with probability `1 - prod(1 - p)` over its
    member gates; a convolution costs `grid * window * E[live_in] *
    E[live_out]`. The two discrete rules of `slim` (a consumer whose inputs
    are all removed keeps one; a branch nobody reads dies) are applied to
    the keeps rounded at 0.5, as constant factors. Their sweeps run in
    `tf.while_loop`s, so an XLA step compiles them once whatever the depth
    of the model.

    Args:
        model: A model as accepted by `tgc.slim` (gated generator, gated
            discriminator, supernet); gates keep their current state
            unless a keep is given.
        input_shape: `(H, W, C)` as for `tgc.profile`.

    Attributes:
        gates: `{gate name: ChannelGate}` in graph order (names as in
            `tgc.surgery.gate_layers`).
        full_macs: MACs with every gate keeping every channel, an int (the
            reference for MACs ratios).

    Call arguments:
        keeps: Optional mapping from a gate (its name, or the `ChannelGate`
            layer itself) to a float tensor of shape `(C,)` with values in
            [0, 1]. Gates not in it use their current hard decision.
            Super layers count at their `active_filters` width.

    Returns:
        A float32 scalar tensor; gradients flow to every given keep and
        are >= 0 (more kept channels never cost less).

    Raises:
        ValueError: For an unknown gate or a keep of the wrong shape.

    Example:

    >>> g = tgc.models.resnet_generator(ngf=8, n_blocks=2, gated="gumbel")
    >>> estimator = tgc.cost.MacsEstimator(g, (64, 64, 3))
    >>> logits = tf.Variable(tf.zeros(8))
    >>> with tf.GradientTape() as tape:
    ...     macs = estimator({"stem_gate": tf.sigmoid(logits)})
    >>> bool(tape.gradient(macs, logits)[0] > 0)
    True
    """

    def __init__(self, model: keras.Model, input_shape):
        self._graph = _cost_graph(model, input_shape)
        self.gates = {name: op.layer for name, op in self._graph.gates.items()}
        self._names = {id(layer): name for name, layer in self.gates.items()}
        ones = {name: np.ones(g.channels) for name, g in self.gates.items()}
        masks = self._graph.super_masks(_NumpyOps)
        self.full_macs = int(round(self._evaluate(_NumpyOps, ones, ones, masks)))

    def _name(self, key) -> str:
        name = key if isinstance(key, str) else self._names.get(id(key))
        if name not in self.gates:
            raise ValueError(
                f"Unknown gate {getattr(key, 'name', key)!r}; this model's gates "
                f"are {list(self.gates)}."
            )
        return name

    def _keep(self, name: str, value) -> tf.Tensor:
        value = tf.cast(value, tf.float32)
        channels = self.gates[name].channels
        shape = value.shape
        if shape.rank is not None and shape.as_list() not in ([channels], [None]):
            raise ValueError(
                f"The keep of gate {name!r} must have shape ({channels},), got "
                f"{tuple(shape)}."
            )
        return value

    def _evaluate(self, xp, soft: dict, hard: dict, masks: dict):
        graph = self._graph
        varying = graph.varying_inputs(xp, graph.slots(xp, hard, masks))
        alive = xp.constant(graph.io)
        for _ in range(_PASSES):
            alive = graph.sweep(xp, alive, varying)
        names = list(self.gates)
        empty = [xp.constant(np.zeros(0))]
        hard_or = graph.keep_or(xp, xp.concat([hard[n] for n in names] + empty))
        soft_or = graph.keep_or(xp, xp.concat([soft[n] for n in names] + empty))
        removed = hard_or * (1.0 - alive)
        forced = alive * (1.0 - hard_or)
        live = 1.0 - (1.0 - soft_or * (1.0 - removed)) * (1.0 - forced)
        return graph.macs(xp, live)

    def __call__(self, keeps: Mapping | None = None) -> tf.Tensor:
        given = {self._name(key): value for key, value in (keeps or {}).items()}
        soft, hard = {}, {}
        for name, gate in self.gates.items():
            if name in given:
                soft[name] = self._keep(name, given[name])
                hard[name] = tf.stop_gradient(tf.cast(soft[name] >= 0.5, tf.float32))
            else:
                decision = tf.cast(tf.not_equal(gate.mask(False), 0.0), tf.float32)
                soft[name] = hard[name] = decision
        masks = self._graph.super_masks(_TensorOps)
        return self._evaluate(_TensorOps, soft, hard, masks)
