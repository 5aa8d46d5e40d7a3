"""Channel selection: put gates into a trained network and choose what they keep.

`slim` (in `tgc.surgery`) removes whatever the gates switch off; this module
decides what that is:

- `add_gates(model, mode)` turns any trained functional generator into a
  gated student (a `ChannelGate` after every normalization);
- `l1_importance(model)` ranks each gate's channels by the L1 norm of the
  filters that produce them, residual groups ranked together;
- `prune_gates_by_l1(gated, keep_ratio)` sets every gate to its top filters;
- `l1_gated` / `l1_prune` do both in one call (the student GAN Compression
  starts from);
- `greedy_paths` chooses channels by what the teacher needs instead: for
  every convolution that reads a gate's channels (its *consumers*), the
  teacher's input patches and pre-activation outputs on calibration images
  give the normal equations of a least-squares fit
  (`tgc.reconstruction.layer_equations`), and channels are added greedily,
  each time the one whose columns (all its kernel taps) most reduce the
  consumers' error once refitted (He et al. 2017, "Channel Pruning for
  Accelerating Very Deep Neural Networks"; ThiNet, Luo et al. 2017).
  Channels tied by residual adds are one group, with every consumer of the
  stream. The greedy path gives each group's error at every width, so
  `allocate_widths` also spends a MACs budget across layers, removing one
  channel at a time where it costs the least error per MAC;
  `apply_paths` sets the gates, and `path_importance` turns the paths into
  per-gate scores for `tgc.schedules.apply_sparsity`.
- `scale_importance(model)` ranks channels by their scale gate's `|gamma|`
  (network slimming), residual groups sharing their mean;
- `prune_to_budget(gated, importance, budget_macs, input_shape)` finds one
  global threshold on the importance (GCC) whose pruned model meets a MACs
  budget, by binary search.

Example:

```python
gated = tgc.pruning.add_gates(tgc.models.pretrained("vintage"), "binary")
tgc.pruning.prune_gates_by_l1(gated, 0.25)
student = tgc.slim(gated)
```

By reconstruction error, with widths allocated under a budget, then refitted
(`tgc.reconstruction.reconstruct`):

```python
gated = tgc.pruning.add_gates(teacher, "binary")
paths = tgc.pruning.greedy_paths(gated, teacher, images)
widths = tgc.pruning.allocate_widths(gated, paths, macs_budget=2.8e9)
tgc.pruning.apply_paths(gated, paths, widths)
student = tgc.slim(gated)
kept = tgc.surgery.kept_channels(gated)
```
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np

import keras_layers
from tfgancompress import cost, reconstruction, schedules, surgery
from tfgancompress.profile import profile

_NORM_LAYERS = (keras_layers.InstanceNormalization, keras.layers.BatchNormalization)


def _filter_l1(layer: keras.layers.Layer) -> np.ndarray:
    """L1 norm of each output filter of a convolution or Dense layer."""
    if isinstance(layer, keras.layers.SeparableConv2D):
        return np.abs(layer.pointwise_kernel.numpy()).sum((0, 1, 2))
    kernel = np.abs(layer.kernel.numpy())
    if isinstance(layer, keras.layers.Conv2DTranspose):
        return kernel.sum((0, 1, 3))
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return kernel.sum((0, 1, 3))
    return kernel.sum(tuple(range(kernel.ndim - 1)))


def l1_importance(model: keras.Model) -> dict[str, np.ndarray]:
    """Filter-L1 importance of each gate's channels, shared across residual groups.

    A gate's channel importance is the L1 norm of the filter that produces it
    (`tgc.surgery.gate_producers`). Channels joined by residual adds are one
    group (`tgc.surgery.channel_groups`): each gets the sum over the group's
    producers, so every gate of a group ranks the channels alike and keeps
    the same ones.

    Args:
        model: A gated model as accepted by `slim`.

    Returns:
        `{gate name: importance vector}`, keyed like
        `tgc.surgery.gate_layers` (gates inside `SelectiveActivationConv2D`
        are named `<layer>_gate`).

    Raises:
        SurgeryError: If a gate has no convolution before it.

    Example:

    >>> g = tgc.models.resnet_generator(ngf=8, n_blocks=2, gated="binary")
    >>> scores = tgc.pruning.l1_importance(g)
    >>> bool((scores["down2_gate"] == scores["block1_gate2"]).all())
    True
    """
    producers = surgery.gate_producers(model)
    scores = {name: _filter_l1(layer) for name, layer in producers.items()}
    return _shared_by_groups(model, scores, "sum")


def _shared_by_groups(model: keras.Model, scores: dict, reduce: str) -> dict:
    """Per-gate channel scores with each residual group's sum or mean."""
    groups = surgery.channel_groups(model)
    totals = np.zeros(groups.count)
    counts = np.zeros(groups.count)
    for name, ids in groups.ids.items():
        np.add.at(totals, ids, np.asarray(scores[name], np.float64))
        np.add.at(counts, ids, 1.0)
    if reduce == "mean":
        totals = totals / np.maximum(counts, 1.0)
    return {name: totals[ids] for name, ids in groups.ids.items()}


def scale_importance(model: keras.Model) -> dict[str, np.ndarray]:
    """`|gamma|` of each `"scale"` gate, shared by mean across residual groups.

    Network slimming's criterion (Liu et al. 2017), which GCC thresholds
    globally: a channel matters as much as the scale its norm gives it. The
    channels of a residual group (`tgc.surgery.channel_groups`) get the mean
    of `|gamma|` over the group's gates, so every gate of the group makes
    the same decision under one threshold.

    Args:
        model: A model whose gates are all `ChannelGate(mode="scale")` (e.g.
            `add_gates(teacher, "scale")`).

    Returns:
        `{gate name: importance vector}`, keyed like
        `tgc.surgery.gate_layers`.

    Raises:
        ValueError: If a gate is not in `"scale"` mode.

    Example:

    >>> g = tgc.models.resnet_generator(ngf=8, n_blocks=2, gated="scale")
    >>> sorted(scale_importance(g))[:2]
    ['block1_gate1', 'block2_gate1']
    """
    gates = surgery.gate_layers(model)
    wrong = [name for name, gate in gates.items() if gate.mode != "scale"]
    if wrong:
        raise ValueError(
            f"scale_importance reads the |gamma| of 'scale' gates; {wrong} of "
            f"{model.name!r} are not (use add_gates(model, 'scale'))."
        )
    scores = {name: np.abs(gate.gamma.numpy()) for name, gate in gates.items()}
    return _shared_by_groups(model, scores, "mean")


def add_gates(model: keras.Model, mode: str = "binary") -> keras.Model:
    """A copy of `model` with a `ChannelGate` after every normalization layer.

    The copy has the same layer names and weights (gates are named
    `<norm name>_gate`) and, with all gates open, computes the same function.
    It is how any trained generator (a zoo model, an imported PyTorch
    checkpoint or your own functional model) becomes a prunable student.
    In `"scale"` mode (GAN Slimming) each affine norm is made non-affine and
    its gamma/beta move into the gate.

    Args:
        model: A functional or Sequential Keras model.
        mode: A `ChannelGate` mode: `"binary"`, `"dmad"`, `"scale"` or
            `"gumbel"`.

    Returns:
        The gated copy; `model` is left untouched.

    Raises:
        ValueError: If `mode` is not a `ChannelGate` mode.

    Example:

    >>> gated = add_gates(tgc.models.pretrained("vintage"), "binary")
    >>> tgc.slim(gated).count_params()  # all gates open: same size
    11388675
    """
    if mode not in keras_layers.gates.MODES:
        raise ValueError(
            f"mode must be one of {keras_layers.gates.MODES}, got {mode!r}."
        )

    def clone(layer):
        config = layer.get_config()
        # The copy is a student: trainable even when `model` was frozen (a
        # trainer freezes its teacher), or every copy of it would be frozen.
        config["trainable"] = True
        if mode == "scale" and isinstance(layer, _NORM_LAYERS):
            config.update(center=False, scale=False)
        return layer.__class__.from_config(config)

    def call(layer, *args, **kwargs):
        outputs = layer(*args, **kwargs)
        if isinstance(layer, _NORM_LAYERS):
            gate = keras_layers.ChannelGate(mode=mode, name=f"{layer.name}_gate")
            outputs = gate(outputs)
        return outputs

    gated = keras.models.clone_model(model, clone_function=clone, call_function=call)
    for layer in model.layers:
        target = gated.get_layer(layer.name)
        if mode == "scale" and isinstance(layer, _NORM_LAYERS):
            _move_affine_to_gate(layer, target, gated.get_layer(f"{layer.name}_gate"))
        else:
            target.set_weights(layer.get_weights())
    return gated


def _move_affine_to_gate(norm, new_norm, gate) -> None:
    """Copies a norm into its non-affine clone plus the scale gate after it."""
    channels = gate.channels
    gamma = norm.gamma.numpy() if norm.scale else np.ones(channels, np.float32)
    beta = norm.beta.numpy() if norm.center else np.zeros(channels, np.float32)
    if isinstance(norm, keras.layers.BatchNormalization):
        new_norm.set_weights([norm.moving_mean.numpy(), norm.moving_variance.numpy()])
    gate.gamma.assign(gamma)
    gate.beta.assign(beta)


def _check_keep_ratio(keep_ratio: float) -> None:
    if not 0.0 < keep_ratio <= 1.0:
        raise ValueError(f"keep_ratio must be in (0, 1], got {keep_ratio}.")


def prune_gates_by_l1(gated: keras.Model, keep_ratio: float) -> None:
    """Sets every gate of `gated` to keep its top filters by `l1_importance`.

    Args:
        gated: A gated model (e.g. from `add_gates`).
        keep_ratio: Fraction of filters kept per gate, in (0, 1].

    Raises:
        ValueError: If `keep_ratio` is outside (0, 1].

    Example:

    >>> gated = add_gates(teacher, "binary")
    >>> prune_gates_by_l1(gated, 0.25)
    >>> student = tgc.slim(gated)
    """
    _check_keep_ratio(keep_ratio)
    importance = l1_importance(gated)
    for name, gate in surgery.gate_layers(gated).items():
        schedules.apply_sparsity(gate, 1.0 - keep_ratio, importance[name])


def l1_gated(model: keras.Model, keep_ratio: float) -> keras.Model:
    """A binary-gated copy of `model` keeping each layer's top filters by L1.

    `slim` of it is `l1_prune(model, keep_ratio)`; `tgc.surgery.kept_channels`
    of it maps that student's channels to `model`'s.

    Args:
        model: A trained functional generator.
        keep_ratio: Fraction of filters kept per gated layer, in (0, 1].

    Returns:
        The gated copy; `model` is left untouched.

    Raises:
        ValueError: If `keep_ratio` is outside (0, 1].
    """
    _check_keep_ratio(keep_ratio)
    gated = add_gates(model, "binary")
    prune_gates_by_l1(gated, keep_ratio)
    return gated


def l1_prune(model: keras.Model, keep_ratio: float) -> keras.Model:
    """`model` cut to `keep_ratio` of each layer's filters by filter L1 norm.

    Gates go after every norm (`add_gates`), each keeps its top filters by
    `l1_importance` (residual channels ranked together), and `slim` removes
    the rest: the plain student GAN Compression starts from.

    Args:
        model: A trained functional generator.
        keep_ratio: Fraction of filters kept per gated layer, in (0, 1].

    Returns:
        The slimmed model, initialised from `model`'s weights.

    Raises:
        ValueError: If `keep_ratio` is outside (0, 1].
    """
    pruned = surgery.slim(l1_gated(model, keep_ratio))
    pruned.name = f"{model.name}_l1_pruned"
    return pruned


_CONSUMER_KINDS = ("conv", "conv_t")


@dataclasses.dataclass
class SelectionPath:
    """The greedy selection of one group of tied gates.

    Attributes:
        gates: The gate layers of the group (one for a plain layer, several
            for a residual stream); the first names the group.
        consumers: The convolutions that read the group's channels.
        channels: Channels of each gate.
        order: Channel indices in the order they were chosen.
        errors: `errors[k]`: the consumers' mean relative error (least
            squares from their inputs to their outputs, targets standardised
            per output channel; 1 = no better than each output's mean) when
            the group keeps `order[:k]`; `len(order) + 1` values.
    """

    gates: tuple[str, ...]
    consumers: tuple[str, ...]
    channels: int
    order: np.ndarray
    errors: np.ndarray

    @property
    def name(self) -> str:
        """The group's name: its first gate."""
        return self.gates[0]


@dataclasses.dataclass
class _Group:
    gates: list[str]
    roots: dict[int, int]  # channel class -> channel index of the gates
    producers: list[str]
    consumers: dict[str, np.ndarray]  # conv -> its input position of each channel


@dataclasses.dataclass
class _Conv:
    name: str
    macs: int
    in_channels: int
    out_channels: int
    in_groups: dict[str, int]  # group name -> input positions it fills
    out_group: str | None


def _analyse(gated: keras.Model) -> tuple[list[_Group], list[_Conv]]:
    """The gate groups of `gated`, and every convolution's links to them."""
    graph = surgery._trace(gated)
    classes, groups = surgery._channel_groups(graph)
    found: dict[tuple, _Group] = {}
    for op in graph.ops:
        if op.kind != "gate":
            continue
        roots = tuple(classes.find(int(c)) for c in groups[op.output])
        group = found.setdefault(
            roots,
            _Group([], {root: k for k, root in enumerate(roots)}, [], {}),
        )
        group.gates.append(op.name)
        producer = surgery._producer(graph, op)
        if producer.kind in _CONSUMER_KINDS:
            group.producers.append(producer.layer.name)
    convs = []
    for op in graph.ops:
        if op.kind not in (*surgery._CONV_KINDS, "depthwise"):
            continue
        inputs = [classes.find(int(c)) for c in groups[op.inputs[0]]]
        in_groups, out_group = {}, None
        for group in found.values():
            positions = [p for p, root in enumerate(inputs) if root in group.roots]
            if positions:
                if op.kind not in _CONSUMER_KINDS:
                    raise ValueError(
                        f"Layer {op.layer.name!r} ({op.kind}) reads gated channels: "
                        "selection supports Conv2D and Conv2DTranspose consumers."
                    )
                channel_at = np.full(len(group.roots), -1)
                for p in positions:
                    channel_at[group.roots[inputs[p]]] = p
                group.consumers[op.layer.name] = channel_at
                in_groups[group.gates[0]] = len(positions)
            if op.layer.name in group.producers:
                out_group = group.gates[0]
        convs.append(
            _Conv(
                op.layer.name,
                0,
                graph.channels[op.inputs[0]],
                graph.channels[op.output],
                in_groups,
                out_group,
            )
        )
    return list(found.values()), convs


class _Consumer:
    """One consumer's least-squares state while channels are added."""

    def __init__(self, equations, channel_at, in_channels, taps, ridge):
        gram, cross = equations.gram, equations.cross
        count = equations.count
        mean = equations.target_sum / count
        variance = np.maximum(equations.target_squares / count - mean**2, 0.0)
        live = variance > 1e-12 * max(float(variance.max()), 1e-30)
        scale = np.where(live, 1.0 / np.sqrt(np.where(live, variance, 1.0)), 0.0)
        cross = cross * scale
        features = taps * in_channels
        diagonal = np.arange(features)
        gram = gram.copy()
        gram[diagonal, diagonal] += ridge * max(
            float(np.mean(gram[diagonal, diagonal])), 1e-12
        )
        columns = channel_at[:, None] + in_channels * np.arange(taps)[None, :]
        candidates = columns.ravel()
        fixed = np.setdiff1d(np.arange(gram.shape[0]), candidates)
        squares = float(np.sum(equations.target_squares * scale**2))
        self.total = squares - float(np.sum((mean * scale) ** 2)) * count
        if len(fixed):
            block = gram[np.ix_(fixed, fixed)]
            solved = np.linalg.solve(block, gram[fixed])
            explained_fixed = float(
                np.sum(cross[fixed] * np.linalg.solve(block, cross[fixed]))
            )
            gram = gram - gram[:, fixed] @ solved
            cross = cross - solved.T @ cross[fixed]
        else:
            explained_fixed = 0.0
        self.residual = squares - explained_fixed
        self.gram = gram[np.ix_(candidates, candidates)]
        self.cross = cross[candidates]
        self.taps = taps
        self.columns = np.arange(len(candidates)).reshape(len(channel_at), taps)

    def error(self) -> float:
        return max(self.residual, 0.0) / max(self.total, 1e-12)

    def gains(self, channels: np.ndarray) -> np.ndarray:
        """Reduction of the residual by adding each channel, relative."""
        index = self.columns[channels]
        blocks = self.gram[index[:, :, None], index[:, None, :]]
        blocks = blocks + 1e-9 * np.eye(self.taps)[None] * max(
            float(np.abs(blocks).max()), 1e-30
        )
        cross = self.cross[index]
        solved = np.linalg.solve(blocks, cross)
        return np.sum(cross * solved, axis=(1, 2)) / max(self.total, 1e-12)

    def add(self, channel: int) -> None:
        columns = self.columns[channel]
        block = self.gram[np.ix_(columns, columns)]
        coupling = np.linalg.solve(block, self.gram[columns])
        self.residual -= float(
            np.sum(self.cross[columns] * np.linalg.solve(block, self.cross[columns]))
        )
        self.cross = self.cross - coupling.T @ self.cross[columns]
        self.gram = self.gram - self.gram[:, columns] @ coupling


def _greedy(consumers: list[_Consumer], channels: int, steps: int):
    order, errors = [], [float(np.mean([c.error() for c in consumers]))]
    remaining = np.arange(channels)
    for _ in range(steps):
        gains = np.mean([c.gains(remaining) for c in consumers], axis=0)
        best = int(np.argmax(gains))
        chosen = int(remaining[best])
        for consumer in consumers:
            consumer.add(chosen)
        order.append(chosen)
        remaining = np.delete(remaining, best)
        errors.append(float(np.mean([c.error() for c in consumers])))
    return np.array(order, int), np.array(errors)


def greedy_paths(
    gated: keras.Model,
    teacher: keras.Model,
    images: np.ndarray,
    *,
    max_keep: float = 0.5,
    samples_per_layer: int = 8000,
    ridge: float = 1e-3,
    batch_size: int = 4,
    seed: int = 0,
    verbose: bool = True,
) -> list[SelectionPath]:
    """Greedy least-squares channel selection of every gate group of `gated`.

    Args:
        gated: The teacher with gates (`add_gates`); its gates
            only define the groups, their state is ignored.
        teacher: The trained model (same layer names): the consumers'
            inputs and outputs are its activations on `images`.
        images: `(N, H, W, C)` calibration inputs (a few dozen views).
        max_keep: Each path goes up to this fraction of the group's
            channels (the most a later width allocation may keep).
        samples_per_layer: Output positions per consumer for its statistics.
        ridge: Ridge strength relative to the mean diagonal of `X'X`.
        batch_size: Images per forward pass.
        seed: Seed of the sampled positions.
        verbose: Show a progress bar over the groups.

    Returns:
        One `SelectionPath` per gate group, in graph order.

    Raises:
        ValueError: If `gated` has no gates, `max_keep` is not in (0, 1], or
            a layer other than a Conv2D/Conv2DTranspose reads gated channels.
    """
    if not 0.0 < max_keep <= 1.0:
        raise ValueError(f"max_keep must be in (0, 1], got {max_keep}.")
    groups, _ = _analyse(gated)
    if not groups:
        raise ValueError(f"{gated.name!r} has no gates: use add_gates first.")
    names = [name for group in groups for name in group.consumers]
    equations = reconstruction.layer_equations(
        teacher,
        names,
        np.asarray(images, np.float32),
        samples_per_layer=samples_per_layer,
        batch_size=batch_size,
        seed=seed,
    )
    progress = keras.utils.Progbar(len(groups), verbose=int(verbose), unit_name="group")
    paths = []
    for k, group in enumerate(groups, start=1):
        channels = len(group.roots)
        consumers = []
        for name, channel_at in group.consumers.items():
            layer = teacher.get_layer(name)
            height, width = layer.kernel_size
            consumers.append(
                _Consumer(
                    equations[name],
                    channel_at,
                    layer.input.shape[-1],
                    height * width,
                    ridge,
                )
            )
        steps = max(1, int(np.ceil(max_keep * channels)))
        order, errors = _greedy(consumers, channels, steps)
        paths.append(
            SelectionPath(
                tuple(group.gates), tuple(group.consumers), channels, order, errors
            )
        )
        progress.update(k)
    return paths


def uniform_widths(paths: list[SelectionPath], keep_ratio: float) -> dict[str, int]:
    """`round(keep_ratio * channels)` (at least 1) for every group."""
    if not 0.0 < keep_ratio <= 1.0:
        raise ValueError(f"keep_ratio must be in (0, 1], got {keep_ratio}.")
    return {
        path.name: min(len(path.order), max(1, round(keep_ratio * path.channels)))
        for path in paths
    }


class _WidthMacs:
    """MACs of the slimmed model as a function of the groups' widths."""

    def __init__(self, gated: keras.Model, input_shape):
        groups, self.convs = _analyse(gated)
        self.channels = {group.gates[0]: len(group.roots) for group in groups}
        costs = {
            layer.name: layer.macs for layer in profile(gated, input_shape).per_layer
        }
        for conv in self.convs:
            conv.macs = costs[conv.name]

    def __call__(self, widths: dict[str, int]) -> float:
        total = 0.0
        for conv in self.convs:
            inputs = conv.in_channels - sum(conv.in_groups.values())
            inputs += sum(
                count * widths[name] / self.channels[name]
                for name, count in conv.in_groups.items()
            )
            outputs = (
                conv.out_channels
                if conv.out_group is None
                else widths[conv.out_group]
                * conv.out_channels
                / self.channels[conv.out_group]
            )
            full = conv.in_channels * conv.out_channels
            total += conv.macs * inputs * outputs / full
        return total


def paths_macs(
    gated: keras.Model, widths: dict[str, int], input_shape=(256, 256, 3)
) -> int:
    """MACs of `gated` slimmed with each gate group at `widths` (no slimming).

    Args:
        gated: A gated model as given to `greedy_paths`.
        widths: `{group name: channels kept}` for every gate group.
        input_shape: `(H, W, C)` at which MACs are counted.
    """
    return int(round(_WidthMacs(gated, input_shape)(widths)))


def allocate_widths(
    gated: keras.Model,
    paths: list[SelectionPath],
    macs_budget: float,
    input_shape=(256, 256, 3),
) -> dict[str, int]:
    """Widths per group under a MACs budget, from each group's error per MAC.

    Starting from every path's full length, it removes one channel at a time
    from the group whose last chosen channel adds the least error per MAC
    it costs, until the slimmed model fits `macs_budget`. A group's error
    counts once per consumer (a residual stream feeds every block).

    Args:
        gated: The gated model the paths were computed on.
        paths: `greedy_paths(gated, ...)`.
        macs_budget: MACs of the slimmed model at `input_shape`.
        input_shape: `(H, W, C)` at which MACs are counted.

    Returns:
        `{group name: channels kept}`.

    Raises:
        ValueError: If the budget is out of reach with one channel per group.
    """
    macs = _WidthMacs(gated, input_shape)
    widths = {path.name: len(path.order) for path in paths}
    if macs({name: 1 for name in widths}) > macs_budget:
        raise ValueError(
            f"A MACs budget of {macs_budget / 1e9:.3f} G is out of reach even with "
            "one channel per gate group."
        )
    by_name = {path.name: path for path in paths}
    current = macs(widths)
    while current > macs_budget:
        best, best_ratio, best_macs = None, np.inf, current
        for name, width in widths.items():
            if width <= 1:
                continue
            smaller = {**widths, name: width - 1}
            cost = macs(smaller)
            path = by_name[name]
            damage = len(path.consumers) * (path.errors[width - 1] - path.errors[width])
            ratio = damage / max(current - cost, 1e-9)
            if ratio < best_ratio:
                best, best_ratio, best_macs = name, ratio, cost
        widths[best] -= 1
        current = best_macs
    return widths


def path_importance(paths: list[SelectionPath]) -> dict[str, np.ndarray]:
    """Per-gate channel scores that rank each group's channels in path order.

    A channel chosen `k`-th scores `len(order) - k`; channels the path never
    chose score 0. Keeping a gate's top `n <= len(order)` channels by these
    scores (`tgc.schedules.apply_sparsity`) keeps the path's first `n`.

    Args:
        paths: `greedy_paths(gated, ...)`.

    Returns:
        `{gate name: (channels,) float32 scores}` for every gate of every group.
    """
    importance = {}
    for path in paths:
        score = np.zeros(path.channels, np.float32)
        score[path.order] = np.arange(len(path.order), 0, -1, dtype=np.float32)
        for name in path.gates:
            importance[name] = score
    return importance


def apply_paths(
    gated: keras.Model, paths: list[SelectionPath], widths: dict[str, int]
) -> None:
    """Sets every gate of each group to keep the first `widths[group]` of its path.

    Args:
        gated: The gated model the paths were computed on.
        paths: `greedy_paths(gated, ...)`.
        widths: `{group name: channels kept}`, at most each path's length.

    Raises:
        ValueError: If a width is missing, below 1 or longer than its path.
    """
    importance = path_importance(paths)
    for path in paths:
        width = widths.get(path.name)
        if width is None or not 1 <= width <= len(path.order):
            raise ValueError(
                f"Group {path.name!r} needs a width in [1, {len(path.order)}], got "
                f"{width}."
            )
        for name in path.gates:
            gate = gated.get_layer(name)
            if not isinstance(gate, keras_layers.ChannelGate):
                raise ValueError(f"Layer {name!r} is not a ChannelGate.")
            schedules.apply_sparsity(
                gate, 1.0 - width / path.channels, importance[name]
            )


@dataclasses.dataclass(frozen=True)
class BudgetPruning:
    """What `prune_to_budget` chose.

    Attributes:
        threshold: Channels with importance `>= threshold` are kept.
        macs: MACs of `tgc.slim` of the pruned model at the input shape.
        budget_macs: The budget it was asked to meet.
        kept: `{gate name: number of channels kept}`.
    """

    threshold: float
    macs: int
    budget_macs: int
    kept: dict[str, int]


def _keep_masks(importance: dict, threshold: float, min_channels: int) -> dict:
    masks = {}
    for name, score in importance.items():
        keep = score >= threshold
        floor = min(min_channels, len(score))
        if keep.sum() < floor:
            keep = np.zeros(len(score), bool)
            keep[np.argsort(-score, kind="stable")[:floor]] = True
        masks[name] = keep
    return masks


def _set_keep(gate: keras_layers.ChannelGate, keep: np.ndarray) -> None:
    """`gate.set_keep(keep)`; a dropped scale channel also loses its beta.

    So it is exactly zero and `slim` removes it without carrying a constant.
    """
    gate.set_keep(keep)
    if gate.mode == "scale":
        gate.beta.assign(np.where(keep, gate.beta.numpy(), 0.0))


def restore_weights(gated: keras.Model, weights: list) -> None:
    """Gives `gated` earlier weights back, keeping its gates' keep decisions.

    For channels chosen after a training that only served to rank them (GCC
    from a pretrained teacher): the kept channels start again from the
    weights they had, e.g. the teacher's, and the dropped ones stay dropped
    (a dropped `"scale"` channel with zero gamma and beta).

    Args:
        gated: A gated model whose gates hold keep decisions.
        weights: `gated.get_weights()` taken earlier.
    """
    gates = surgery.gate_layers(gated)
    masks = {name: np.asarray(gate.keep_mask()) for name, gate in gates.items()}
    gated.set_weights(weights)
    for name, keep in masks.items():
        _set_keep(gates[name], keep)


def prune_to_budget(
    gated: keras.Model,
    importance: dict[str, np.ndarray],
    budget_macs: int,
    input_shape,
    min_channels: int = 1,
) -> BudgetPruning:
    """Prunes `gated` with one global threshold so that it meets a MACs budget.

    GCC's channel selection: every gate keeps the channels whose importance
    is at least a threshold shared by all layers, the lowest threshold
    whose slimmed model costs at most `budget_macs`. Binary search over the
    distinct importance values, each step counting the MACs of
    `slim(gated)` at `input_shape` (`tgc.cost.gate_macs`; count at the
    resolution the budget is defined at). A dropped channel of a `"scale"`
    gate loses its beta too, so that nothing of it survives `slim`.
    Give tied channels (residual groups) equal importance, as
    `scale_importance` and `l1_importance` do, so they are kept or removed
    together.

    Args:
        gated: A gated model (its gates are set in place).
        importance: `{gate name: (C,) scores}` for every gate of `gated`;
            higher is kept.
        budget_macs: Most MACs the slimmed model may cost.
        input_shape: `(H, W, C)` at which MACs are counted.
        min_channels: Channels every gate keeps whatever the threshold.

    Returns:
        A `BudgetPruning`: the threshold, the MACs reached and the channels
        kept per gate.

    Raises:
        ValueError: If `importance` does not cover exactly the model's
            gates, or the budget is below the cost of keeping
            `min_channels` per gate (the message gives that cost).

    Example:

    >>> gated = add_gates(teacher, "scale")
    >>> result = prune_to_budget(gated, scale_importance(gated), 2.8e9,
    ...                          (256, 256, 3))
    >>> student = tgc.slim(gated)  # costs result.macs <= 2.8e9
    """
    gates = surgery.gate_layers(gated)
    if sorted(importance) != sorted(gates):
        raise ValueError(
            f"importance must score every gate of {gated.name!r}: missing "
            f"{sorted(set(gates) - set(importance))}, unknown "
            f"{sorted(set(importance) - set(gates))}."
        )
    importance = {name: np.asarray(importance[name], np.float64) for name in gates}
    shape = tuple(input_shape)
    originals = {name: gate.get_weights() for name, gate in gates.items()}

    def macs_at(threshold: float) -> int:
        for name, gate in gates.items():
            gate.set_weights(originals[name])
        masks = _keep_masks(importance, threshold, min_channels)
        for name, keep in masks.items():
            _set_keep(gates[name], keep)
        return cost.gate_macs(gated, shape)

    candidates = np.unique(np.concatenate(list(importance.values())))
    low, high = 0, len(candidates) - 1
    smallest = macs_at(np.inf)
    if smallest > budget_macs:
        raise ValueError(
            f"A budget of {budget_macs / 1e9:.4f} G MACs at {shape} is out of "
            f"reach: keeping {min_channels} channel(s) per gate of "
            f"{gated.name!r} costs {smallest / 1e9:.4f} G."
        )
    if macs_at(candidates[low]) <= budget_macs:
        high = low
    elif macs_at(candidates[high]) > budget_macs:
        low = high = len(candidates)
    while high - low > 1:
        middle = (low + high) // 2
        if macs_at(candidates[middle]) <= budget_macs:
            high = middle
        else:
            low = middle
    threshold = float(candidates[high]) if high < len(candidates) else np.inf
    macs = macs_at(threshold)
    kept = {name: int(gate.keep_mask().sum()) for name, gate in gates.items()}
    return BudgetPruning(threshold, macs, int(budget_macs), kept)
