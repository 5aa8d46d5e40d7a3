"""DMAD's differentiable channel masks on a whole generator (Li et al. 2021).

A `keras_layers.ChannelGate(mode="dmad")` multiplies each channel by a
mask `m(w)` of its weight `w`: 0 below the band `[-b, b]`, 1 above it, a
quadratic ramp inside (`keras_layers.gates.dmad_mask`). The band shrinks
to 0 during training (`tgc.schedules.BandSchedule`), so every mask ends
as a hard 0/1 decision that `tgc.slim` turns into removed channels. This
module does the model-level steps of that life:

- `add_masks(model)`: a trained generator with a mask after every norm
  (Conv -> Norm -> Mask -> ReLU), its norms made affine so that masks can
  fold into them; it computes exactly the same function;
- `anneal(model, bound)`: sets the band; a channel whose weight leaves the
  band upwards (its mask jumps to 1) first has its mask folded into the
  norm before it ("fold-on-enter"), so the output stays continuous;
- `open_channels(model)` / `residual_keep(model)`: which channels the
  masks still let through, and the residual keep rule;
- `freeze(model)`: folds every fractional mask into its norm and makes the
  masks hard (band closed), keeping the training-mode output: how DMAD
  stops its search when the generator reaches its MACs budget;
- `freeze_to_budget(model, macs, input_shape, cut=...)`: `freeze` after
  closing open channels until they fit `macs`: by one threshold on the
  mask weights (`cut="threshold"`) or lowest weight per MAC saved first
  (`cut="cost"`, `cost_cut`).

**The residual keep rule.** Channels joined by residual adds
(`tgc.surgery.channel_groups`: down2 and every ResBlock's second norm)
exist once in the network. A residual channel is kept when at least
`min_open` of its masks are open, 1 by default: "open anywhere", the rule
`tgc.slim` applies to a residual group and the one DMAD's cross-block
group sparsity assumes (its coefficient is 0 for a channel alive
anywhere). The masks of a kept channel that are closed stay closed: that
block adds nothing to the channel. The reference code counts open masks
against an `opt.threshold` option it no longer defines (it crashes);
`min_open = threshold + 1`.

Example:

```python
student = tgc.masks.add_masks(teacher)
schedule = tgc.schedules.BandSchedule.for_steps(10_000)
due, bound = schedule(step)
if due:
    tgc.masks.anneal(student, float(bound))
```
"""

from __future__ import annotations

import weakref

import keras
import numpy as np

import keras_layers
from keras_layers.gates import dmad_mask
from tfgancompress import cost, pruning, surgery

_NORMS = (keras_layers.InstanceNormalization, keras.layers.BatchNormalization)
# Layers a mask can fold into: its scale multiplies their output channels.
_CONVS = (keras.layers.Conv2D, keras.layers.Conv2DTranspose)


# Per model, its DMAD gates (a functional model's graph does not change).
_GATES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def dmad_gates(model: keras.Model) -> dict[str, keras_layers.ChannelGate]:
    """The `ChannelGate(mode="dmad")` layers of a model, by gate name.

    Args:
        model: A model as accepted by `tgc.slim`.

    Returns:
        `{name: gate}` in graph order (names as `tgc.surgery.gate_layers`).
    """
    if model not in _GATES:
        _GATES[model] = {
            name: gate
            for name, gate in surgery.gate_layers(model).items()
            if gate.mode == "dmad"
        }
    return dict(_GATES[model])


def _values(gate: keras_layers.ChannelGate) -> tuple[np.ndarray, float]:
    return np.asarray(gate.weight.numpy(), np.float32), float(gate.bound.numpy())


def mask_values(model: keras.Model) -> dict[str, np.ndarray]:
    """Each DMAD gate's training-mode mask `m(w)` at its current band."""
    return {
        name: np.asarray(dmad_mask(*_values(gate)), np.float32)
        for name, gate in dmad_gates(model).items()
    }


def open_channels(model: keras.Model) -> dict[str, np.ndarray]:
    """Per DMAD gate, the channels its mask lets through (`m(w) > 0`).

    That is `w > -b` while the band is open and `w > 0` once it is closed:
    the channels the network still computes with.
    """
    return {name: mask > 0.0 for name, mask in mask_values(model).items()}


def _residual_sets(model: keras.Model, names) -> list[tuple[str, ...]]:
    groups = surgery.channel_groups(model)
    return [tuple(n for n in tied if n in names) for tied in groups.tied]


def residual_keep(
    model: keras.Model, min_open: int = 1, opened: dict | None = None
) -> dict[str, np.ndarray]:
    """The residual keep rule: per residual mask, the channels that stay.

    A channel of a residual group (masks tied by adds, e.g. down2 and every
    ResBlock's second norm) stays when at least `min_open` of the group's
    masks are open on it (see the module docstring); every mask of the
    group gets the same vector.

    Args:
        model: A model with DMAD gates.
        min_open: Open masks a residual channel needs, >= 1.
        opened: `{gate name: bool (C,)}` open channels; defaults to
            `open_channels(model)`.

    Returns:
        `{gate name: bool (C,)}` for the gates of residual groups only.

    Raises:
        ValueError: If `min_open < 1`.
    """
    if min_open < 1:
        raise ValueError(f"min_open must be >= 1, got {min_open}.")
    opened = open_channels(model) if opened is None else opened
    keep = {}
    for names in _residual_sets(model, opened):
        count = np.sum([opened[n] for n in names], axis=0)
        for name in names:
            keep[name] = count >= min_open
    return keep


def _preceding(model: keras.Model, gate) -> keras.layers.Layer:
    """The layer whose output a gate multiplies (a norm or a convolution)."""
    history = getattr(gate.input, "_keras_history", None)
    layer = history.operation if history is not None else None
    if isinstance(layer, _NORMS):
        if not (layer.scale and layer.center):
            raise ValueError(
                f"Mask {gate.name!r} follows the non-affine norm {layer.name!r}: "
                "a mask folds into its norm's gamma and beta. Build the model "
                "with affine norms (tgc.masks.add_masks does)."
            )
        return layer
    if isinstance(layer, _CONVS) and layer.activation is keras.activations.linear:
        return layer
    raise ValueError(
        f"Mask {gate.name!r} of model {model.name!r} must directly follow a "
        f"normalization or a convolution without activation to fold into it; "
        f"it follows {getattr(layer, 'name', None)!r}."
    )


def _scale_channels(layer: keras.layers.Layer, scale: np.ndarray) -> None:
    """Multiplies the output channels of `layer` by `scale`."""
    if isinstance(layer, _NORMS):
        layer.gamma.assign(layer.gamma.numpy() * scale)
        layer.beta.assign(layer.beta.numpy() * scale)
        return
    axis = -2 if isinstance(layer, keras.layers.Conv2DTranspose) else -1
    shape = [1] * len(layer.kernel.shape)
    shape[axis] = -1
    layer.kernel.assign(layer.kernel.numpy() * scale.reshape(shape))
    if layer.use_bias:
        layer.bias.assign(layer.bias.numpy() * scale)


def _fold(model, gate, where: np.ndarray, weight: np.ndarray, bound: float) -> int:
    """Folds `m(w)` of the channels `where` into the layer before the gate."""
    if not where.any():
        return 0
    mask = np.asarray(dmad_mask(weight, bound), np.float32)
    _scale_channels(_preceding(model, gate), np.where(where, mask, 1.0))
    return int(where.sum())


def anneal(model: keras.Model, bound: float) -> int:
    """Sets the band of every DMAD gate, folding the masks that become 1.

    A channel with `bound < w <= b_old` (and `w > 0`) has a fractional mask
    now and a mask of exactly 1 after the change; its current mask is first
    multiplied into the norm (or convolution) before the gate, so the
    training-mode output does not jump for it. Masks still inside the band
    simply follow the new band, as in the paper. (The band is meant to
    shrink: widening it folds nothing.)

    Args:
        model: A model with DMAD gates following affine norms or
            convolutions (e.g. from `add_masks`).
        bound: The new half-width, >= 0 (values below 0 count as 0).

    Returns:
        The number of channels folded.

    Raises:
        ValueError: If a mask cannot fold into the layer before it.
    """
    bound = max(float(bound), 0.0)
    folded = 0
    for gate in dmad_gates(model).values():
        weight, old = _values(gate)
        if bound < old:
            entering = (weight > bound) & (weight <= old) & (weight > 0.0)
            folded += _fold(model, gate, entering, weight, old)
        gate.set_bound(bound)
    return folded


def freeze(model: keras.Model, min_open: int = 1, keep: dict | None = None) -> dict:
    """Makes every DMAD mask hard, keeping the training-mode output.

    The kept channels' fractional masks are folded into the layers before
    the gates, every kept weight becomes +1 and every other -1, and the
    band closes (`bound = 0`): afterwards the training- and inference-mode
    masks are the same 0/1 vector. By default a mask stays open where it
    is open (`m(w) > 0`): the channels the network computed with, so the
    output is unchanged. In residual groups the residual keep rule may
    close more: with `min_open > 1` every mask of a residual channel open
    in fewer masks closes.

    Args:
        model: A model with DMAD gates (e.g. from `add_masks`).
        min_open: The residual keep rule's threshold (see `residual_keep`).
        keep: `{gate name: bool (C,)}` to use instead of the default rule
            (a gate left out keeps its open channels).

    Returns:
        `{gate name: bool (C,)}`: the open channels of every mask.

    Raises:
        ValueError: If a mask cannot fold into the layer before it.
    """
    opened = open_channels(model)
    decided = dict(opened)
    for name, kept in residual_keep(model, min_open, opened).items():
        decided[name] = kept & opened[name]
    decided.update({name: np.asarray(k, bool) for name, k in (keep or {}).items()})
    for name, gate in dmad_gates(model).items():
        weight, bound = _values(gate)
        kept = decided[name]
        _fold(model, gate, kept & opened[name] & (weight <= bound), weight, bound)
        gate.weight.assign(np.where(kept, 1.0, -1.0).astype(np.float32))
        gate.set_bound(0.0)
    return decided


def open_macs(model: keras.Model, input_shape, opened: dict | None = None) -> int:
    """MACs of `tgc.slim(model)` if every open channel were kept.

    The cost of the network the masks compute with now (`open_channels`,
    with `slim`'s rules, e.g. for residual groups): `tgc.cost.gate_macs`
    with the gates' weights set to those decisions for the count (and put
    back). Once the band is closed it is `gate_macs` of the model as is.

    Args:
        model: A model with DMAD gates.
        input_shape: `(H, W, C)` as for `tgc.profile`.
        opened: `{gate name: bool (C,)}`; defaults to `open_channels(model)`.

    Returns:
        The MACs per image, an int.
    """
    opened = open_channels(model) if opened is None else opened
    gates = dmad_gates(model)
    saved = {name: gate.weight.numpy() for name, gate in gates.items()}
    try:
        for name, gate in gates.items():
            gate.weight.assign(np.where(opened[name], 1.0, -1.0).astype(np.float32))
        return cost.gate_macs(model, input_shape)
    finally:
        for name, gate in gates.items():
            gate.weight.assign(saved[name])


def _keep_above(opened: dict, weights: dict, threshold: float) -> dict:
    """Open channels with `w > threshold`, at least each gate's top one."""
    keep = {}
    for name, weight in weights.items():
        kept = opened[name] & (weight > threshold)
        if not kept.any():
            kept = np.zeros_like(kept)
            kept[int(np.argmax(np.where(opened[name], weight, -np.inf)))] = True
        keep[name] = kept
    return keep


def _residual_rule(model: keras.Model, keep: dict, min_open: int) -> dict:
    """`keep` with the residual keep rule applied to it (`residual_keep`)."""
    ruled = residual_keep(model, min_open, keep)
    return {**keep, **{name: k & keep[name] for name, k in ruled.items()}}


def _cut_units(model: keras.Model, opened: dict, min_open: int) -> list:
    """What the cost cut closes: `(gate names, score per channel)` units.

    A mask outside residual groups is a unit of its own, scored by `w + b`
    (> 0 on its open channels); a residual group is one unit whose channel
    scores are the `min_open`-th highest `w + b` of its open masks (the
    residual keep rule: the weight a threshold cut would have to pass).
    """
    gates = dmad_gates(model)
    scores = {}
    for name, gate in gates.items():
        weight, bound = _values(gate)
        scores[name] = np.where(opened[name], weight + bound, -np.inf)
    units, tied = [], set()
    for names in _residual_sets(model, gates):
        if len(names) > 1:
            ranked = np.sort([scores[n] for n in names], axis=0)
            units.append((names, ranked[-min_open]))
            tied.update(names)
    units += [((name,), scores[name]) for name in gates if name not in tied]
    return units


def _close(keep: dict, names, channels) -> dict:
    closed = dict(keep)
    for name in names:
        closed[name] = keep[name].copy()
        closed[name][channels] = False
    return closed


def cost_cut(
    model: keras.Model, macs: int, input_shape, min_open: int = 1
) -> dict[str, np.ndarray]:
    """The open channels to keep within `macs`, closing the cheapest weight first.

    A greedy knapsack: while the open channels cost more than `macs`, it
    closes the channels with the lowest mask weight per MAC their closing
    saves, `(w + b) / saving`. Every channel of a mask saves the same
    MACs (the producing and consuming convolutions' costs per channel,
    which depend on the neighbours' widths), so each round measures one
    closing per unit (`open_macs`), ranks every open channel by its
    ratio, and closes the best-ranked ones whose savings add up to at most
    half of the MACs still above the budget (at least one channel): few
    rounds far from the budget, one channel at a time near it. A residual
    group is one unit: its channel closes in all of the group's masks at
    once, scored by its `min_open`-th highest weight (the residual keep
    rule); the masks of a kept residual channel stay as they are (closing
    one alone saves no MACs). Every unit keeps at least its highest
    channel.

    Unlike `freeze_to_budget`'s threshold cut, which compares weights
    across masks whatever their channels cost, this spends the budget
    where a weight buys the most: an expensive channel (high resolution,
    wide neighbours) needs a higher weight to stay.

    Args:
        model: A model with DMAD gates.
        macs: The budget: MACs of `tgc.slim(model)` at `input_shape`.
        input_shape: `(H, W, C)`.
        min_open: The residual keep rule's threshold (see `residual_keep`).

    Returns:
        `{gate name: bool (C,)}`: the open channels to keep (the model is
        not changed; `freeze(model, keep=...)` applies them). Their MACs
        are at most `macs` unless one channel per unit costs more.
    """
    keep = _residual_rule(model, open_channels(model), min_open)
    units = _cut_units(model, keep, min_open)
    current = open_macs(model, input_shape, keep)
    while current > macs:
        ratios, owners = [], []
        for index, (names, score) in enumerate(units):
            alive = np.flatnonzero(np.any([keep[n] for n in names], axis=0))
            if alive.size < 2:
                continue
            alive = alive[np.argsort(score[alive])][:-1]  # the top one stays
            trial = _close(keep, names, alive[:1])
            saving = current - open_macs(model, input_shape, trial)
            if saving > 0:
                ratios.append(score[alive] / saving)
                owners += [(index, channel, saving) for channel in alive]
        if not owners:
            break
        order = np.argsort(np.concatenate(ratios), kind="stable")
        savings = np.cumsum([owners[i][2] for i in order])
        count = max(1, int(np.searchsorted(savings, (current - macs) / 2, "right")))
        for i in order[:count]:
            index, channel, _ = owners[i]
            keep = _close(keep, units[index][0], [channel])
        current = open_macs(model, input_shape, keep)
    return keep


CUTS = ("threshold", "cost")


def freeze_to_budget(
    model: keras.Model,
    macs: int,
    input_shape,
    min_open: int = 1,
    cut: str = "threshold",
):
    """`freeze`, first closing masks if the open channels cost too much.

    The end of DMAD's search when its sparsity did not reach the budget on
    its own. With `cut="threshold"`, open channels whose weight is at most
    a threshold close (each mask keeps at least its highest channel), then
    the residual keep rule (`min_open`) applies to what stays; the
    threshold is the lowest that meets `macs`, found by bisection over the
    open weights. With `cut="cost"`, the channels with the lowest weight
    per MAC saved close first (`cost_cut`). Then the masks are frozen
    (`freeze`): `tgc.cost.gate_macs(model, input_shape)` is at most `macs`
    afterwards unless even one channel per mask costs more. A second call
    changes nothing (every residual channel left open is open in at least
    `min_open` masks).

    Args:
        model: A model with DMAD gates.
        macs: The budget: MACs of `tgc.slim(model)` at `input_shape`.
        input_shape: `(H, W, C)`.
        min_open: The residual keep rule's threshold (see `residual_keep`).
        cut: `"threshold"` (one weight threshold over every mask) or
            `"cost"` (`cost_cut`).

    Returns:
        `{gate name: bool (C,)}`: the open channels of every mask.

    Raises:
        ValueError: For an unknown `cut`.
    """
    if cut not in CUTS:
        raise ValueError(f"cut must be one of {CUTS}, got {cut!r}.")
    opened = _residual_rule(model, open_channels(model), min_open)
    if open_macs(model, input_shape, opened) <= macs:
        return freeze(model, min_open)
    if cut == "cost":
        return freeze(model, keep=cost_cut(model, macs, input_shape, min_open))
    weights = {name: _values(g)[0] for name, g in dmad_gates(model).items()}
    candidates = np.unique(np.concatenate([weights[n][opened[n]] for n in weights]))

    def threshold_cut(threshold: float) -> dict:
        keep = _keep_above(opened, weights, threshold)
        return _residual_rule(model, keep, min_open)

    low, high = 0, len(candidates) - 1  # keep above candidates[high]: cheapest
    while low < high:
        middle = (low + high) // 2
        if open_macs(model, input_shape, threshold_cut(candidates[middle])) <= macs:
            high = middle
        else:
            low = middle + 1
    return freeze(model, keep=threshold_cut(candidates[low]))


def _affine_copy(model: keras.Model) -> keras.Model:
    """`model` with every norm affine (gamma 1, beta 0 where it had none)."""

    def clone(layer):
        config = layer.get_config()
        if isinstance(layer, _NORMS):
            config.update(center=True, scale=True)
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=clone)
    for layer in model.layers:
        target = copy.get_layer(layer.name)
        if not isinstance(layer, _NORMS):
            target.set_weights(layer.get_weights())
            continue
        if isinstance(layer, keras.layers.BatchNormalization):
            target.moving_mean.assign(layer.moving_mean)
            target.moving_variance.assign(layer.moving_variance)
        if layer.scale:
            target.gamma.assign(layer.gamma)
        if layer.center:
            target.beta.assign(layer.beta)
    return copy


def add_masks(
    model: keras.Model,
    initial_weight: float = 0.0,
    initial_stddev: float = 0.2,
    initial_bound: float = 1.0,
    seed: int | None = None,
) -> keras.Model:
    """A copy of a trained generator with a DMAD mask after every norm.

    The norms become affine (a non-affine norm gets gamma 1 and beta 0), a
    `ChannelGate(mode="dmad")` named `<norm name>_gate` follows each
    (`tgc.pruning.add_gates`), the mask weights are drawn from
    `N(initial_weight, initial_stddev)` (the reference code: N(0, 0.2)) at
    the band `initial_bound`, and each norm's gamma and beta are divided
    by its initial mask, so the copy computes exactly `model`'s function
    in training mode.

    Args:
        model: A trained functional generator (left untouched).
        initial_weight: Mean of the initial mask weights.
        initial_stddev: Their standard deviation (0: all equal).
        initial_bound: The band's initial half-width, > 0.
        seed: Seed of the initial weights.

    Returns:
        The masked copy.

    Raises:
        ValueError: If `initial_bound <= 0` or `initial_stddev < 0`.

    Example:

    >>> student = add_masks(tgc.models.pretrained("vintage"), seed=0)
    >>> sorted(dmad_gates(student))[:2]
    ['block1_norm1_gate', 'block1_norm2_gate']
    """
    if initial_bound <= 0 or initial_stddev < 0:
        raise ValueError(
            "initial_bound must be > 0 and initial_stddev >= 0, got "
            f"{initial_bound} and {initial_stddev}."
        )
    masked = pruning.add_gates(_affine_copy(model), "dmad")
    rng = np.random.default_rng(seed)
    for gate in dmad_gates(masked).values():
        weight = rng.normal(initial_weight, initial_stddev, gate.channels)
        limit = 0.9 * initial_bound
        weight = np.clip(weight, -limit, limit).astype(np.float32)
        mask = np.asarray(dmad_mask(weight, initial_bound), np.float32)
        gate.weight.assign(weight)
        gate.set_bound(initial_bound)
        _scale_channels(_preceding(masked, gate), 1.0 / mask)
    return masked


__all__ = [
    "CUTS",
    "add_masks",
    "anneal",
    "cost_cut",
    "dmad_gates",
    "freeze",
    "freeze_to_budget",
    "mask_values",
    "open_channels",
    "open_macs",
    "residual_keep",
]
