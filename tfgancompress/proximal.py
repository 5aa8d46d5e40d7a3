"""Proximal channel pruning of scale gates (GAN Slimming), driven by MACs.

GAN Slimming (Wang et al., ECCV 2020) learns a scale `gamma` per channel
(`ChannelGate(mode="scale")`, the affine part of an instance norm) with an
L1 penalty `rho * sum|gamma|`, minimised by proximal gradient descent:
after every optimizer step each `gamma` is soft-thresholded,

    gamma <- sign(gamma) * max(|gamma| - rho * lr, 0),

with `lr` the gates' *current* learning rate. Channels whose `gamma`
reaches 0 compute a constant (the gate's `beta`, through the activation),
which `tgc.slim` folds into the next layer: removing them changes nothing.

The paper sets `rho` by hand and gets whatever MACs follow. Here `rho`
follows a MACs budget instead: `RhoController` forecasts the MACs of the
gated model every few steps and raises `rho` while they are above a target
that decays to the budget (`tgc.schedules.MacsBudget`), lowers it below.
`prune_to_budget` closes the remaining gap at the end of the search: it
zeroes the smallest `|gamma|` until `slim(model)` fits the budget.

```python
schedule = MacsBudget(gate_macs(model, (256, 256, 3)), budget, 0, 800)
controller = RhoController(model, schedule, (256, 256, 3), rho=1e-3)
for step in range(1000):
    train_step()
    proximal_step(gates, controller.rho * gamma_learning_rate)
    if step % 10 == 0:
        controller.update(step, gamma_learning_rate)
prune_to_budget(model, budget, (256, 256, 3))
```
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import keras
import numpy as np
from keras import ops

from keras_layers import ChannelGate
from tfgancompress.cost import gate_macs
from tfgancompress.schedules import MacsBudget
from tfgancompress.surgery import channel_groups, gate_layers

_RHO_RANGE = (1e-6, 1e3)


def soft_threshold(values, threshold):
    """The proximal operator of `threshold * |x|`: `sign(x) max(|x| - t, 0)`.

    Args:
        values: A tensor or array.
        threshold: A scalar `>= 0` (tensor or float).

    Returns:
        A tensor of the shape of `values`.

    Example:

    >>> soft_threshold(np.array([-0.5, 0.05, 2.0]), 0.1).numpy().tolist()
    [-0.4, 0.0, 1.9]
    """
    values = ops.convert_to_tensor(values, "float32")
    return ops.sign(values) * ops.maximum(ops.abs(values) - threshold, 0.0)


def scale_gates(model: keras.Model, residual: bool = False) -> list[ChannelGate]:
    """The model's `ChannelGate(mode="scale")` layers, in graph order.

    Args:
        model: A model as accepted by `slim`.
        residual: Also return the gates of residual streams (channels tied
            by an `Add` across gates, `tgc.surgery.channel_groups`). GAN
            Slimming never prunes the residual stream: its gates stay out
            of the proximal step and train as plain affine parameters.

    Returns:
        The gates, in graph order.
    """
    tied = set()
    if not residual:
        tied = {name for names in channel_groups(model).tied for name in names}
    return [
        gate
        for name, gate in gate_layers(model).items()
        if gate.mode == "scale" and name not in tied
    ]


def proximal_step(gates: Iterable[ChannelGate], threshold) -> None:
    """Soft-thresholds every gate's `gamma` by `threshold` (= rho * lr).

    Pure Keras ops on the variables: usable eagerly, in `tf.function` and
    under XLA, e.g. at the end of a train step.

    Args:
        gates: Scale gates (`scale_gates(model)`).
        threshold: The shrinkage, a scalar `>= 0`.

    Raises:
        ValueError: If a gate is not in `"scale"` mode.
    """
    for gate in gates:
        gate.proximal_step(threshold)


class RhoController:
    """Adjusts GAN Slimming's `rho` so the MACs follow a budget schedule.

    MACs lag behind `rho`: a channel costs the same until its `gamma`
    reaches exactly 0, then all channels of similar `|gamma|` drop at once.
    So the controller steers a *forecast*: the MACs the model would cost if
    every `|gamma|` below `rho * learning_rate * horizon` (the shrinkage of
    the next `horizon` proximal steps) were already 0. Each `update`
    multiplies `rho` by `(target / forecast) ** -gain`: while the forecast
    is above the schedule's target the penalty grows, below it decays (the
    gradient may revive channels), so the MACs follow the target down to
    the budget and stay there.

    Args:
        model: The model with scale gates (read, never changed).
        schedule: The MACs target per step (`MacsBudget(initial, budget,
            begin_step, end_step)`): reach the budget before the search
            ends, so the last steps train at the final width.
        input_shape: `(H, W, C)` at which MACs are counted.
        rho: Starting value of `rho`, > 0.
        horizon: Steps of shrinkage the forecast looks ahead (e.g. twice
            the steps between updates).
        gain: Exponent of the correction (larger: faster, more overshoot).
        rho_range: `(low, high)` bounds of `rho`.
        macs: `macs(model, input_shape) -> int`, default `tgc.cost.gate_macs`.
        residual: Also shrink the residual stream's gates (`scale_gates`).

    Raises:
        ValueError: On a model without scale gates, a non-positive `rho`,
            `horizon` or `gain`, or bad bounds.

    Example:

    >>> controller = RhoController(gated, MacsBudget(full, budget, 0, 800),
    ...                            (256, 256, 3), rho=1e-3, horizon=20)
    >>> rho = controller.update(step, learning_rate=0.1)
    """

    def __init__(
        self,
        model: keras.Model,
        schedule: MacsBudget,
        input_shape: Sequence[int],
        rho: float,
        horizon: int = 20,
        gain: float = 1.0,
        rho_range: tuple[float, float] = _RHO_RANGE,
        macs=gate_macs,
        residual: bool = False,
    ):
        low, high = (float(v) for v in rho_range)
        if not 0 < low < high:
            raise ValueError(f"rho_range must be 0 < low < high, got {rho_range}.")
        if not low <= rho <= high or gain <= 0 or horizon < 1:
            raise ValueError(
                f"rho must be in rho_range {rho_range}, gain > 0 and horizon >= 1; "
                f"got rho={rho}, gain={gain}, horizon={horizon}."
            )
        self.gates = scale_gates(model, residual)
        self.residual = residual
        if not self.gates:
            raise ValueError(f"{model.name!r} has no ChannelGate(mode='scale').")
        self.model = model
        self.schedule = schedule
        self.input_shape = tuple(input_shape)
        self.rho = float(rho)
        self.horizon = int(horizon)
        self.gain = float(gain)
        self.rho_range = (low, high)
        self.macs = macs
        self.history: list[tuple[int, float, int, int]] = []

    @classmethod
    def for_budget(
        cls,
        model: keras.Model,
        schedule: MacsBudget,
        input_shape: Sequence[int],
        learning_rate,
        **kwargs,
    ) -> RhoController:
        """A controller whose starting `rho` is set from the budget.

        `rho` starts where the proximal steps of the schedule's steps
        would, without any gradient, zero exactly the `|gamma|`s below
        `budget_threshold(model, schedule.target_macs)`:
        `rho = threshold / sum(learning_rate(step))` over those steps.

        Args:
            model: The model with scale gates.
            schedule: The MACs target per step.
            input_shape: `(H, W, C)` at which MACs are counted.
            learning_rate: The gates' learning rate: a float or a callable
                of the step (a Keras learning-rate schedule).
            **kwargs: More `RhoController` arguments (`horizon`, `gain`,
                `rho_range`, `macs`, `residual`).

        Returns:
            The controller.
        """
        threshold = budget_threshold(
            model,
            schedule.target_macs,
            input_shape,
            kwargs.get("macs", gate_macs),
            kwargs.get("residual", False),
        )
        steps = range(schedule.begin_step, schedule.end_step)
        rates = [
            float(learning_rate(s)) if callable(learning_rate) else float(learning_rate)
            for s in steps
        ]
        low, high = kwargs.get("rho_range", _RHO_RANGE)
        rho = float(np.clip(threshold / max(sum(rates), 1e-12), low, high))
        return cls(model, schedule, input_shape, rho, **kwargs)

    def target(self, step: int) -> float:
        """The schedule's MACs target at `step`."""
        return float(self.schedule.macs(step))

    def forecast(self, learning_rate: float) -> int:
        """MACs once the next `horizon` shrinkage steps have zeroed `gamma`s."""
        gammas = _gamma_values(self.gates)
        _zero_below(self.gates, gammas, self.rho * learning_rate * self.horizon)
        try:
            return self.macs(self.model, self.input_shape)
        finally:
            for gate, gamma in zip(self.gates, gammas, strict=True):
                gate.gamma.assign(gamma)

    def update(self, step: int, learning_rate: float) -> float:
        """Corrects `rho` at `step` (the gates' learning rate now); returns it.

        Each update is recorded in `history` as `(step, rho, forecast MACs,
        target MACs)`.
        """
        forecast, target = self.forecast(float(learning_rate)), self.target(step)
        rho = self.rho * math.pow(forecast / target, self.gain)
        self.rho = float(np.clip(rho, *self.rho_range))
        self.history.append((int(step), self.rho, int(forecast), int(target)))
        return self.rho


def _gamma_values(gates: Sequence[ChannelGate]) -> list[np.ndarray]:
    return [np.asarray(keras.ops.convert_to_numpy(g.gamma)) for g in gates]


def _zero_below(gates, gammas, threshold: float) -> None:
    for gate, gamma in zip(gates, gammas, strict=True):
        gate.gamma.assign(np.where(np.abs(gamma) < threshold, 0.0, gamma))


def budget_threshold(
    model: keras.Model,
    macs_budget: float,
    input_shape: Sequence[int],
    macs=gate_macs,
    residual: bool = False,
) -> float:
    """The smallest `t` such that zeroing every `|gamma| < t` fits the budget.

    Over the prunable scale gates (`scale_gates(model, residual)`); the
    model is left as it was. `t` is 0 when the model already fits.

    Args:
        model: A model with scale gates.
        macs_budget: The MACs it may cost.
        input_shape: `(H, W, C)` at which MACs are counted.
        macs: `macs(model, input_shape) -> int`, default `tgc.cost.gate_macs`.
        residual: Also close the residual stream's gates.

    Returns:
        The threshold (a float; `inf` when every gate must close).

    Raises:
        ValueError: If the model has no scale gates, or the budget cannot
            be met with every scale gate closed.
    """
    gates = scale_gates(model, residual)
    if not gates:
        raise ValueError(f"{model.name!r} has no ChannelGate(mode='scale').")
    gammas = _gamma_values(gates)

    def cost(threshold: float) -> int:
        _zero_below(gates, gammas, threshold)
        return macs(model, input_shape)

    try:
        if cost(0.0) <= macs_budget:
            return 0.0
        levels = np.unique(np.concatenate([np.abs(g) for g in gammas]))
        levels = np.append(levels[levels > 0], np.inf)
        closed = cost(np.inf)
        if closed > macs_budget:
            raise ValueError(
                f"{model.name!r} costs {closed} MACs at {tuple(input_shape)} with "
                f"every scale gate closed, over the budget of {int(macs_budget)}: "
                "the ungated layers alone exceed it."
            )
        low, high = -1, len(levels) - 1  # levels[high] fits, levels[low] not
        while high - low > 1:
            middle = (low + high) // 2
            if cost(levels[middle]) <= macs_budget:
                high = middle
            else:
                low = middle
        return float(levels[high])
    finally:
        _zero_below(gates, gammas, 0.0)


def prune_to_budget(
    model: keras.Model,
    macs_budget: float,
    input_shape: Sequence[int],
    macs=gate_macs,
    residual: bool = False,
) -> int:
    """Zeroes the smallest `|gamma|` of the scale gates until MACs fit.

    The end of a proximal search: if `slim(model)` still costs more than
    `macs_budget`, the channels with the smallest `|gamma|` over all
    prunable scale gates are switched off (`gamma = 0`; their `beta` stays
    for `slim` to fold), at the lowest threshold that fits
    (`budget_threshold`).

    Args:
        model: A model with scale gates, changed in place.
        macs_budget: The MACs it may cost.
        input_shape: `(H, W, C)` at which MACs are counted.
        macs: `macs(model, input_shape) -> int`, default `tgc.cost.gate_macs`.
        residual: Also close the residual stream's gates.

    Returns:
        The MACs after pruning.

    Raises:
        ValueError: If the model has no scale gates, or the budget cannot
            be met with every scale gate closed.
    """
    threshold = budget_threshold(model, macs_budget, input_shape, macs, residual)
    gates = scale_gates(model, residual)
    _zero_below(gates, _gamma_values(gates), threshold)
    return macs(model, input_shape)
