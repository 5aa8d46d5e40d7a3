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
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np

import keras_layers
from tfgancompress import cost, schedules, surgery

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
