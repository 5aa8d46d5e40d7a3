"""Per-channel gates that decide which channels of a layer survive pruning.

One layer, four behaviours, one contract for surgery: in inference mode every
gate computes `y = scale * x + shift` with per-channel vectors that
`channel_affine()` returns, and a channel is removable where its scale is 0.

| mode       | method          | training forward                          |
|------------|-----------------|-------------------------------------------|
| `binary`   | GCC             | `1[alpha >= threshold]`, straight-through |
| `dmad`     | DMAD            | banded quadratic mask of `w`, bound `b`   |
| `scale`    | GAN Slimming    | `gamma * x + beta` (prox. shrink of gamma) |
| `gumbel`   | pruning agents  | gumbel-sigmoid of agent-set `logits`      |

Pruning agents (a network that outputs the gates) drive gates with a
differentiable tensor instead: inside `with driven_gates({gate: mask}):`
each listed gate multiplies by `mask` (shape `(C,)` or `(batch, C)`), so
gradients reach the agent; outside the block the gate is itself again.
When the search ends, `set_keeps({gate: mask})` writes the agent's hard
decisions into the gates, for `tfgancompress.slim` to remove the channels.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Mapping

import keras
import numpy as np
from keras import ops

MODES = ("binary", "dmad", "scale", "gumbel")
# How far `set_keep` moves a parameter across its keep rule.
_MARGIN = 1e-3
# The masks of the enclosing `driven_gates` blocks, per thread (replicas of
# a MirroredStrategy trace their steps in threads of their own).
_DRIVEN = threading.local()


def dmad_mask(weight, bound):
    """DMAD's banded quadratic mask of `weight` for the band `[-bound, bound]`.

    0 below `-bound`, 1 above `bound`, and inside the band the two quadratic
    pieces through (-b, 0), (-b/2, .125), (0, .5), (b/2, .875), (b, 1). The
    gradient is zero outside the band; `bound == 0` is the hard step
    `1[weight > 0]`.

    Args:
        weight: Tensor of mask parameters.
        bound: Scalar half-width of the band, >= 0.

    Returns:
        A tensor of the same shape as `weight` with values in [0, 1].
    """
    weight = ops.convert_to_tensor(weight, "float32")
    bound = ops.cast(bound, "float32")
    safe_bound = ops.maximum(bound, 1e-12)
    ratio = ops.clip(weight / safe_bound, -1.0, 1.0)
    soft = ops.where(
        ratio < 0.0, 0.5 * ops.square(ratio + 1.0), 1.0 - 0.5 * ops.square(1.0 - ratio)
    )
    hard = ops.cast(weight > 0.0, "float32")
    return ops.where(bound > 0.0, soft, hard)


@keras.saving.register_keras_serializable(package="tfgancompress")
class ChannelGate(keras.layers.Layer):
    """Multiplies each channel (last axis) by a learned or agent-set gate.

    Put it after a normalization (Conv -> Norm -> ChannelGate -> ReLU) so that
    `tfgancompress.slim` can fold it into the norm and drop dead channels.

    Args:
        mode: One of `"binary"`, `"dmad"`, `"scale"`, `"gumbel"` (see the
            module docstring).
        threshold: `binary` mode: keep a channel when `alpha >= threshold`.
        initial_value: Initial value of the gate parameter (`alpha`, `w`,
            `gamma` or `logits`). Defaults: 1.0, 1.0, 1.0, 3.0.
        temperature: `gumbel` mode: temperature of the relaxed sample.
        straight_through: `gumbel` mode: forward the hard 0/1 sample in
            training while the gradient flows through the soft one.
        seed: `gumbel` mode: seed of the noise; `None` draws a fresh one so
            that no two gates share their noise.
        **kwargs: Base layer keyword arguments.

    Example:

    >>> gate = ChannelGate(mode="binary")
    >>> y = gate(keras.ops.ones((1, 4, 4, 8)))
    >>> int(gate.keep_mask().sum())
    8
    """

    def __init__(
        self,
        mode: str = "binary",
        threshold: float = 0.5,
        initial_value: float | None = None,
        temperature: float = 0.4,
        straight_through: bool = False,
        seed: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if mode not in MODES:
            raise ValueError(f"ChannelGate mode must be one of {MODES}, got {mode!r}.")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}.")
        self.mode = mode
        self.threshold = float(threshold)
        self.initial_value = (
            float(initial_value)
            if initial_value is not None
            else (3.0 if mode == "gumbel" else 1.0)
        )
        self.temperature = float(temperature)
        self.straight_through = bool(straight_through)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None:
            raise ValueError(
                f"ChannelGate needs a known channel count, got shape {input_shape}."
            )
        init = keras.initializers.Constant(self.initial_value)
        if self.mode == "binary":
            self.alpha = self.add_weight(
                shape=(channels,),
                initializer=init,
                constraint=lambda a: ops.clip(a, 0.0, 1.0),
                name="alpha",
            )
        elif self.mode == "dmad":
            self.weight = self.add_weight(
                shape=(channels,), initializer=init, name="weight"
            )
            self.bound = self.add_weight(
                shape=(), initializer="ones", trainable=False, name="bound"
            )
        elif self.mode == "scale":
            self.gamma = self.add_weight(
                shape=(channels,), initializer=init, name="gamma"
            )
            self.beta = self.add_weight(
                shape=(channels,), initializer="zeros", name="beta"
            )
        else:
            self.logits = self.add_weight(
                shape=(channels,), initializer=init, name="logits"
            )

    @property
    def channels(self) -> int:
        return int(self.gate_parameter.shape[0])

    @property
    def gate_parameter(self):
        """The per-channel variable that decides the gate."""
        return {
            "binary": lambda: self.alpha,
            "dmad": lambda: self.weight,
            "scale": lambda: self.gamma,
            "gumbel": lambda: self.logits,
        }[self.mode]()

    def mask(self, training: bool = False):
        """The per-channel multiplier this gate applies (a float tensor)."""
        if self.mode == "binary":
            hard = ops.cast(self.alpha >= self.threshold, "float32")
            if not training:
                return hard
            return self.alpha + ops.stop_gradient(hard - self.alpha)
        if self.mode == "dmad":
            if not training:
                return ops.cast(self.weight > 0.0, "float32")
            return dmad_mask(self.weight, self.bound)
        if self.mode == "scale":
            return ops.convert_to_tensor(self.gamma)
        hard_logits = ops.cast(self.logits > 0.0, "float32")
        if not training:
            return hard_logits
        uniform = keras.random.uniform(
            ops.shape(self.logits),
            minval=1e-6,
            maxval=1.0 - 1e-6,
            seed=self.seed_generator,
        )
        noise = ops.log(uniform) - ops.log(1.0 - uniform)
        # float32 sigmoid saturates to exactly 0/1 beyond |z| ~ 17, where its
        # gradient vanishes; temperature 0.4 reaches that for |logit| >~ 5.
        soft = ops.sigmoid((self.logits + noise) / self.temperature)
        if not self.straight_through:
            return soft
        return soft + ops.stop_gradient(ops.cast(soft > 0.5, "float32") - soft)

    def call(self, inputs, training=None):
        driven = _driven_mask(self)
        if driven is None:
            mask = ops.cast(self.mask(bool(training)), inputs.dtype)
        else:
            mask = ops.cast(driven, inputs.dtype)
            if len(mask.shape) == 2:  # (batch, C): the same on every pixel
                for _ in range(len(inputs.shape) - 2):
                    mask = ops.expand_dims(mask, 1)
        outputs = inputs * mask
        if self.mode == "scale":
            outputs = outputs + ops.cast(self.beta, inputs.dtype)
        return outputs

    def channel_affine(self) -> tuple[np.ndarray, np.ndarray]:
        """Inference-mode `(scale, shift)` per channel: `y = scale * x + shift`."""
        scale = np.asarray(keras.ops.convert_to_numpy(self.mask(False)), np.float32)
        if self.mode == "scale":
            shift = np.asarray(keras.ops.convert_to_numpy(self.beta), np.float32)
        else:
            shift = np.zeros_like(scale)
        return scale, shift

    def keep_mask(self) -> np.ndarray:
        """Boolean keep-mask of the channels (False: removable by `slim`)."""
        return self.channel_affine()[0] != 0.0

    def set_keep(self, keep) -> None:
        """Writes a hard keep decision into the gate's own parameter.

        Afterwards `keep_mask()` equals `keep` (and `slim` removes the other
        channels). Only parameters on the wrong side of the keep rule move:
        a binary `alpha` to `threshold` (kept) or `threshold - 1e-3`
        (dropped); dmad `weight` / gumbel `logits` to `1e-3` or `0`; a
        dropped scale `gamma` to 0 (its `beta` stays; `slim` folds it), a
        kept zero `gamma` to `1e-3`. Pure Keras ops: works under XLA.

        Args:
            keep: Boolean (or 0/1) tensor of shape `(C,)`.

        Example:

        >>> gate = ChannelGate(mode="gumbel")
        >>> gate.build((None, 4))
        >>> gate.set_keep([True, False, True, False])
        >>> gate.keep_mask().tolist()
        [True, False, True, False]
        """
        keep = ops.cast(ops.reshape(keep, (-1,)), "bool")
        value = ops.convert_to_tensor(self.gate_parameter)
        if self.mode == "binary":
            kept = ops.maximum(value, self.threshold)
            dropped = ops.minimum(value, self.threshold - _MARGIN)
        elif self.mode == "scale":
            kept = ops.where(value == 0.0, _MARGIN, value)
            dropped = ops.zeros_like(value)
        else:
            kept = ops.maximum(value, _MARGIN)
            dropped = ops.minimum(value, 0.0)
        self.gate_parameter.assign(ops.where(keep, kept, dropped))

    def set_bound(self, bound: float) -> None:
        """`dmad` mode: set the half-width of the soft band (0: hard step)."""
        if self.mode != "dmad":
            raise ValueError(
                f"set_bound is for mode 'dmad', this gate is {self.mode!r}."
            )
        self.bound.assign(max(float(bound), 0.0))

    def set_logits(self, logits) -> None:
        """`gumbel` mode: write the agent's per-channel logits into the gate."""
        if self.mode != "gumbel":
            raise ValueError(
                f"set_logits is for mode 'gumbel', this gate is {self.mode!r}."
            )
        self.logits.assign(ops.reshape(ops.cast(logits, "float32"), (-1,)))

    def proximal_step(self, threshold) -> None:
        """`scale` mode: soft-threshold `gamma <- sign(gamma) max(|gamma| - t, 0)`.

        GAN Slimming applies it after each optimizer step with
        `t = rho * learning_rate`.
        """
        if self.mode != "scale":
            raise ValueError(
                f"proximal_step is for mode 'scale', this gate is {self.mode!r}."
            )
        gamma = self.gamma
        self.gamma.assign(
            ops.sign(gamma) * ops.maximum(ops.abs(gamma) - threshold, 0.0)
        )

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "mode": self.mode,
                "threshold": self.threshold,
                "initial_value": self.initial_value,
                "temperature": self.temperature,
                "straight_through": self.straight_through,
                "seed": self.seed,
            }
        )
        return config


def _driven_mask(gate: ChannelGate):
    """The mask an enclosing `driven_gates` block gives `gate`, else None."""
    for masks in reversed(getattr(_DRIVEN, "stack", [])):
        if id(gate) in masks:
            return masks[id(gate)]
    return None


def _checked_masks(masks: Mapping) -> dict[int, object]:
    checked = {}
    for gate, mask in masks.items():
        if not isinstance(gate, ChannelGate):
            raise TypeError(
                "driven_gates/set_keeps take {ChannelGate: mask}; got a key of "
                f"type {type(gate).__name__}."
            )
        shape = tuple(getattr(mask, "shape", np.shape(mask)))
        if len(shape) not in (1, 2) or (
            gate.built and shape[-1] not in (None, gate.channels)
        ):
            raise ValueError(
                f"The mask for gate {gate.name!r} must have shape (C,) or "
                f"(batch, C) with C = {gate.channels if gate.built else 'channels'}, "
                f"got {shape}."
            )
        checked[id(gate)] = mask
    return checked


@contextlib.contextmanager
def driven_gates(masks: Mapping) -> Iterator[None]:
    """Makes gates multiply by given tensors (e.g. a pruning agent's) in a block.

    Inside the block each listed `ChannelGate` computes `x * mask` (plus
    `beta` in `"scale"` mode) instead of using its own parameter, in
    training and inference alike, so gradients flow from the network's loss
    to whatever computed `mask`. Other gates, and every gate outside the
    block, behave as usual; the gates' variables are not touched. Blocks
    nest (the inner mask wins) and are per thread.

    Put the block inside the function that is traced (a `train_step`, a
    `tf.function`, an XLA-compiled step): the masks are read when the
    gates' `call` runs, i.e. while tracing.

    Args:
        masks: `{ChannelGate: mask}`; a mask is a float tensor of shape
            `(C,)` (one decision for the batch) or `(batch, C)` (one per
            sample), typically in [0, 1].

    Raises:
        TypeError: If a key is not a `ChannelGate`.
        ValueError: If a mask is not of shape `(C,)` or `(batch, C)`.

    Example:

    >>> gate = model.get_layer("stem_gate")
    >>> with tf.GradientTape() as tape:
    ...     mask = agent(embedding)  # (C,), differentiable
    ...     with driven_gates({gate: mask}):
    ...         loss = loss_fn(model(x, training=True))
    >>> grads = tape.gradient(loss, agent.trainable_variables)
    """
    checked = _checked_masks(masks)
    stack = getattr(_DRIVEN, "stack", None)
    if stack is None:
        stack = _DRIVEN.stack = []
    stack.append(checked)
    try:
        yield
    finally:
        stack.pop()


def set_keeps(masks: Mapping, threshold: float = 0.5) -> None:
    """Writes masks into their gates as hard decisions (`ChannelGate.set_keep`).

    The end of an agent's search: after it, the gates alone (outside any
    `driven_gates` block) keep the channels whose mask is `>= threshold`,
    and `slim` removes the others. A `(batch, C)` mask is averaged over the
    batch first.

    Args:
        masks: `{ChannelGate: mask}` as for `driven_gates`.
        threshold: A channel is kept where its mask is `>= threshold`.

    Raises:
        TypeError: If a key is not a `ChannelGate`.
        ValueError: If a mask is not of shape `(C,)` or `(batch, C)`.

    Example:

    >>> set_keeps({gate: agent(embedding)})
    >>> small = tfgancompress.slim(model)
    """
    _checked_masks(masks)
    for gate, mask in masks.items():
        mask = ops.cast(mask, "float32")
        if len(mask.shape) == 2:
            mask = ops.mean(mask, axis=0)
        gate.set_keep(mask >= threshold)
