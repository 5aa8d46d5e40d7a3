"""Channel selection: put gates into a trained network and choose what they keep.

`slim` (in `tgc.surgery`) removes whatever the gates switch off; this module
decides what that is:

- `add_gates(model, mode)` turns any trained functional generator into a
  gated student (a `ChannelGate` after every normalization);
- `l1_importance(model)` ranks each gate's channels by the L1 norm of the
  filters that produce them, residual groups ranked together;
- `prune_gates_by_l1(gated, keep_ratio)` sets every gate to its top filters;
- `l1_gated` / `l1_prune` do both in one call (the student GAN Compression
  starts from).

Example:

```python
gated = tgc.pruning.add_gates(tgc.models.pretrained("vintage"), "binary")
tgc.pruning.prune_gates_by_l1(gated, 0.25)
student = tgc.slim(gated)
```
"""

from __future__ import annotations

import keras
import numpy as np

import keras_layers
from tfgancompress import schedules, surgery

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
    groups = surgery.channel_groups(model)
    producers = surgery.gate_producers(model)
    totals = np.zeros(groups.count)
    for name, ids in groups.ids.items():
        np.add.at(totals, ids, _filter_l1(producers[name]))
    return {name: totals[ids] for name, ids in groups.ids.items()}


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
