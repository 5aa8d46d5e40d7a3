"""Channel-sparsity schedules in tfmot's `PruningSchedule` protocol.

A schedule is a small serializable callable of the training step that
returns `(should_prune, sparsity)` tensors, exactly like
`tfmot.sparsity.keras.PolynomialDecay`. Here *sparsity* is the fraction of a
layer's channels to remove, and `apply_sparsity` turns it into a
`ChannelGate` decision: the gate keeps exactly `keep_count(sparsity, C)`
channels in inference mode. Any tfmot schedule is interchangeable with
`ChannelSparsity` and `MacsBudget`, and everything runs eagerly, in
`tf.function` and under XLA (`jit_compile=True`). `BandSchedule` follows
the same protocol for DMAD's masks: it returns `(due, bound)`, the
half-width of the soft band that `tfgancompress.masks.anneal` sets.

```python
schedule = MacsBudget(initial_macs=56.8e9, target_macs=4e9,
                      begin_step=0, end_step=10_000)
should_prune = apply_schedule(gates, schedule, optimizer.iterations)
```

tfmot is imported through `tfgancompress._tfmot`, which keeps `tf.keras`
unchanged for the process.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import tensorflow as tf

from keras_layers import ChannelGate
from tfgancompress._tfmot import tfmot

PruningSchedule = tfmot.sparsity.keras.PruningSchedule


def _check_sparsity(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number in [0, 1), got {value!r}.")
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value}.")
    return float(value)


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an int, got {value!r}.")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}.")
    return int(value)


def _check_steps(begin_step, end_step, frequency) -> tuple[int, int, int]:
    begin_step = _check_int("begin_step", begin_step, 0)
    end_step = _check_int("end_step", end_step, 0)
    if end_step <= begin_step:
        raise ValueError(
            f"end_step must be > begin_step, got begin_step={begin_step}, "
            f"end_step={end_step}."
        )
    return begin_step, end_step, _check_int("frequency", frequency, 1)


def _check_positive(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or value <= 0:
        raise ValueError(f"{name} must be a number > 0, got {value!r}.")
    return float(value)


def _decay(step, begin_step: int, end_step: int, power: float):
    """`(1 - p) ** power` with `p` the clipped progress from begin to end step."""
    elapsed = tf.cast(step, tf.float32) - float(begin_step)
    progress = tf.clip_by_value(elapsed / float(end_step - begin_step), 0.0, 1.0)
    return tf.pow(1.0 - progress, power)


class ChannelSparsity(PruningSchedule):
    """Channel sparsity growing polynomially from `initial` to `final`.

    `sparsity(step) = final + (initial - final) * (1 - p) ** power`, with
    `p = clip((step - begin_step) / (end_step - begin_step), 0, 1)`; pruning
    is due every `frequency` steps within `[begin_step, end_step]`. The same
    curve as tfmot's `PolynomialDecay`, read as a fraction of channels.

    Args:
        initial_sparsity: Fraction of channels removed at `begin_step`, in
            [0, 1).
        final_sparsity: Fraction removed from `end_step` on, in [0, 1).
        begin_step: First step at which pruning is due, >= 0.
        end_step: Step at which `final_sparsity` is reached, > `begin_step`.
        power: Exponent of the curve (3: fast at first, then slower).
        frequency: Pruning is due every `frequency` steps.

    Raises:
        ValueError: If a sparsity is outside [0, 1), `end_step <= begin_step`,
            a step is negative, `frequency < 1` or `power <= 0`.

    Example:

    >>> schedule = ChannelSparsity(0.0, 0.75, begin_step=0, end_step=100)
    >>> should_prune, sparsity = schedule(100)
    >>> bool(should_prune), round(float(sparsity), 2)
    (True, 0.75)
    """

    def __init__(
        self,
        initial_sparsity: float,
        final_sparsity: float,
        begin_step: int,
        end_step: int,
        power: float = 3,
        frequency: int = 100,
    ):
        self.initial_sparsity = _check_sparsity("initial_sparsity", initial_sparsity)
        self.final_sparsity = _check_sparsity("final_sparsity", final_sparsity)
        self.begin_step, self.end_step, self.frequency = _check_steps(
            begin_step, end_step, frequency
        )
        self.power = _check_positive("power", power)

    def __call__(self, step):
        decay = _decay(step, self.begin_step, self.end_step, self.power)
        sparsity = (
            self.final_sparsity + (self.initial_sparsity - self.final_sparsity) * decay
        )
        should_prune = self._should_prune_in_step(
            step, self.begin_step, self.end_step, self.frequency
        )
        return should_prune, sparsity

    def get_config(self) -> dict:
        return {
            "class_name": self.__class__.__name__,
            "config": {
                "initial_sparsity": self.initial_sparsity,
                "final_sparsity": self.final_sparsity,
                "begin_step": self.begin_step,
                "end_step": self.end_step,
                "power": self.power,
                "frequency": self.frequency,
            },
        }


class MacsBudget(PruningSchedule):
    """Channel sparsity that follows a shrinking MACs budget.

    The budget decays polynomially from `initial_macs` to `target_macs`:
    `macs(step) = target + (initial - target) * (1 - p) ** power`. A
    convolution's MACs scale with `C_in * C_out`, so thinning every layer
    by the same keep-ratio `k` scales the network's MACs by about `k**2`;
    the schedule's sparsity is therefore `1 - sqrt(macs(step) / initial)`.
    (The image input and output channels do not shrink, so the true MACs of
    a uniformly thinned generator are slightly higher: measure them with
    `tgc.profile(tgc.slim(model), ...)`.)

    Args:
        initial_macs: MACs of the dense model (e.g. `tgc.profile(...).macs`).
        target_macs: Budget at `end_step`, in (0, `initial_macs`].
        begin_step: First step at which pruning is due, >= 0.
        end_step: Step at which the budget reaches `target_macs`.
        power: Exponent of the budget's decay.
        frequency: Pruning is due every `frequency` steps.

    Raises:
        ValueError: If the MACs are not positive, `target_macs >
            initial_macs`, `end_step <= begin_step`, a step is negative,
            `frequency < 1` or `power <= 0`.

    Example:

    >>> schedule = MacsBudget(56.8e9, 14.2e9, begin_step=0, end_step=1000)
    >>> _, sparsity = schedule(1000)
    >>> round(float(sparsity), 3)
    0.5
    """

    def __init__(
        self,
        initial_macs: float,
        target_macs: float,
        begin_step: int,
        end_step: int,
        power: float = 3,
        frequency: int = 100,
    ):
        _check_positive("initial_macs", initial_macs)
        _check_positive("target_macs", target_macs)
        if target_macs > initial_macs:
            raise ValueError(
                f"target_macs ({target_macs:g}) must not exceed initial_macs "
                f"({initial_macs:g}): a budget only shrinks."
            )
        self.initial_macs = float(initial_macs)
        self.target_macs = float(target_macs)
        self.begin_step, self.end_step, self.frequency = _check_steps(
            begin_step, end_step, frequency
        )
        self.power = _check_positive("power", power)

    def macs_ratio(self, step):
        """The budget at `step` as a fraction of `initial_macs` (float32)."""
        final = self.target_macs / self.initial_macs
        decay = _decay(step, self.begin_step, self.end_step, self.power)
        return final + (1.0 - final) * decay

    def macs(self, step):
        """The MACs budget at `step` (float32 tensor)."""
        return self.initial_macs * self.macs_ratio(step)

    def __call__(self, step):
        sparsity = 1.0 - tf.sqrt(self.macs_ratio(step))
        should_prune = self._should_prune_in_step(
            step, self.begin_step, self.end_step, self.frequency
        )
        return should_prune, sparsity

    def get_config(self) -> dict:
        return {
            "class_name": self.__class__.__name__,
            "config": {
                "initial_macs": self.initial_macs,
                "target_macs": self.target_macs,
                "begin_step": self.begin_step,
                "end_step": self.end_step,
                "power": self.power,
                "frequency": self.frequency,
            },
        }


class BandSchedule(PruningSchedule):
    """DMAD's band half-width `b(step)`, annealed from `initial_bound` to 0.

    `b = initial_bound * (1 - p ** power)` with
    `p = clip((step - begin_step) / (end_step - begin_step), 0, 1)`: the
    "cube rule" of Li et al. is `power=1/3` over the first 75% of training
    (`for_steps`); `power=1/2` is their "double" rule, 1 a linear one. Inside
    the band `[-b, b]` a `ChannelGate(mode="dmad")` is a soft quadratic mask
    of its weight; from `end_step` on the band is closed (`b = 0`) and every
    mask is a hard 0/1 step. `tfgancompress.masks.anneal` applies a bound
    to a model's gates (folding the masks that leave the band upwards into
    the layers before them).

    The tfmot protocol: `schedule(step)` returns `(due, bound)` tensors, due
    every `frequency` steps within `[begin_step, end_step]` and always at
    `end_step`, so that the band is closed whatever the frequency. Runs
    eagerly, in `tf.function` and under XLA.

    Args:
        begin_step: Step at which annealing starts (the bound is
            `initial_bound` until then), >= 0.
        end_step: Step at which the bound reaches 0, > `begin_step`.
        initial_bound: Half-width of the band at `begin_step`, > 0.
        power: Exponent of the progress (1/3: the cube rule).
        frequency: The bound is due every `frequency` steps (the reference
            code updates it 150 times over the annealing).

    Raises:
        ValueError: If `end_step <= begin_step`, a step is negative,
            `frequency < 1`, or `initial_bound`/`power` is not positive.

    Example:

    >>> schedule = BandSchedule(begin_step=0, end_step=1000)
    >>> due, bound = schedule(125)
    >>> bool(due), round(float(bound), 3)
    (True, 0.5)
    """

    def __init__(
        self,
        begin_step: int,
        end_step: int,
        initial_bound: float = 1.0,
        power: float = 1.0 / 3.0,
        frequency: int = 1,
    ):
        self.begin_step, self.end_step, self.frequency = _check_steps(
            begin_step, end_step, frequency
        )
        self.initial_bound = _check_positive("initial_bound", initial_bound)
        self.power = _check_positive("power", power)

    @classmethod
    def for_steps(
        cls,
        steps: int,
        anneal_fraction: float = 0.75,
        updates: int = 150,
        initial_bound: float = 1.0,
        power: float = 1.0 / 3.0,
    ) -> BandSchedule:
        """The paper's schedule for a run of `steps`: closed at 75% of it.

        Args:
            steps: Training steps of the run (> 1).
            anneal_fraction: Fraction of the run over which the band closes.
            updates: About how many times the bound changes (the reference
                code: 150); the frequency is `end_step // updates`, >= 1.
            initial_bound: The band's initial half-width.
            power: Exponent of the progress (1/3: the cube rule).

        Returns:
            A `BandSchedule` from step 0 to `max(1, round(anneal_fraction *
            steps))`.

        Raises:
            ValueError: If `steps < 1`, `anneal_fraction` is outside (0, 1]
                or `updates < 1`.
        """
        steps = _check_int("steps", steps, 1)
        updates = _check_int("updates", updates, 1)
        if not 0.0 < anneal_fraction <= 1.0:
            raise ValueError(
                f"anneal_fraction must be in (0, 1], got {anneal_fraction}."
            )
        end_step = max(1, round(anneal_fraction * steps))
        return cls(
            0,
            end_step,
            initial_bound=initial_bound,
            power=power,
            frequency=max(1, end_step // updates),
        )

    def bound(self, step):
        """The band's half-width at `step` (float32 tensor)."""
        elapsed = tf.cast(step, tf.float32) - float(self.begin_step)
        span = float(self.end_step - self.begin_step)
        progress = tf.clip_by_value(elapsed / span, 0.0, 1.0)
        return self.initial_bound * (1.0 - tf.pow(progress, self.power))

    def __call__(self, step):
        step = tf.cast(step, tf.int64)
        in_range = (step >= self.begin_step) & (step <= self.end_step)
        turn = tf.math.floormod(step - self.begin_step, self.frequency) == 0
        due = in_range & (turn | (step == self.end_step))
        return due, self.bound(step)

    def get_config(self) -> dict:
        return {
            "class_name": self.__class__.__name__,
            "config": {
                "begin_step": self.begin_step,
                "end_step": self.end_step,
                "initial_bound": self.initial_bound,
                "power": self.power,
                "frequency": self.frequency,
            },
        }


def deserialize(config: dict) -> PruningSchedule:
    """Rebuilds a schedule from `get_config()`: ours or tfmot's.

    Args:
        config: `{"class_name": ..., "config": {...}}` as returned by
            `get_config()` of `ChannelSparsity`, `MacsBudget`, `BandSchedule`,
            `tfmot.sparsity.keras.PolynomialDecay` or `ConstantSparsity`.

    Returns:
        The schedule.

    Raises:
        ValueError: If `config` is not such a dict.

    Example:

    >>> schedule = ChannelSparsity(0.0, 0.5, 0, 10)
    >>> deserialize(schedule.get_config()).final_sparsity
    0.5
    """
    classes = {
        cls.__name__: cls
        for cls in (
            ChannelSparsity,
            MacsBudget,
            BandSchedule,
            tfmot.sparsity.keras.PolynomialDecay,
            tfmot.sparsity.keras.ConstantSparsity,
        )
    }
    if not isinstance(config, dict) or config.get("class_name") not in classes:
        raise ValueError(
            f"Expected a schedule config with class_name in {sorted(classes)}, "
            f"got {config!r}."
        )
    return classes[config["class_name"]].from_config(config["config"])


def keep_count(sparsity, channels):
    """Channels a layer keeps at `sparsity`: `round(channels * (1 - sparsity))`.

    tfmot's rounding rule (`tf.round`: halves to even), clipped to
    `[1, channels]` so that no layer ever loses all its channels.

    Args:
        sparsity: Fraction of channels to remove: a number in [0, 1) or a
            float tensor (e.g. a schedule's output).
        channels: Number of channels of the layer (python int >= 1).

    Returns:
        A scalar int32 tensor.

    Raises:
        ValueError: If `channels < 1` or a python `sparsity` is outside [0, 1).

    Example:

    >>> int(keep_count(0.75, 64))
    16
    """
    channels = _check_int("channels", channels, 1)
    if isinstance(sparsity, numbers.Real):
        _check_sparsity("sparsity", sparsity)
    kept = tf.round(float(channels) * (1.0 - tf.cast(sparsity, tf.float32)))
    return tf.clip_by_value(tf.cast(kept, tf.int32), 1, channels)


def _top_k_mask(score, k):
    """Boolean mask of the `k` highest scores; ties go to the lower index."""
    order = tf.argsort(score, direction="DESCENDING", stable=True)
    ranks = tf.argsort(order, stable=True)
    return ranks < k


def _default_score(gate: ChannelGate):
    """How much the gate wants each channel: its parameter, |gamma| for scale."""
    parameter = tf.convert_to_tensor(gate.gate_parameter)
    if gate.mode == "scale":
        return tf.abs(parameter)
    return parameter


def apply_sparsity(gate: ChannelGate, sparsity, importance=None):
    """Sets `gate` so that it keeps exactly `keep_count(sparsity, C)` channels.

    The kept channels are the top ones by `importance`, or by the gate's own
    parameter when `importance` is None: `alpha` (binary), `weight` (dmad)
    and `logits` (gumbel) as they are -- their keep rule is a threshold on
    the signed value, so a very negative value means "drop" -- and `|gamma|`
    (scale). The decision is written by `ChannelGate.set_keep`: only the
    parameters on the wrong side of the keep rule move:
    a kept binary `alpha` is raised to `threshold`, a dropped one lowered to
    `threshold - 1e-3`; dmad `weight`/gumbel `logits` go to `1e-3` (kept) or
    `0` (dropped); a dropped scale `gamma` becomes 0 (its `beta` stays and
    `slim` folds it) and a kept zero `gamma` becomes `1e-3`. The decision
    holds in inference mode (`gate.keep_mask()`); in training the soft
    gates stay soft around it. Pure TensorFlow: works under XLA.

    Args:
        gate: A built `keras_layers.ChannelGate`.
        sparsity: Fraction of channels to remove, number or float tensor.
        importance: Optional per-channel scores, shape `(C,)`; higher is kept.

    Returns:
        The boolean keep mask, shape `(C,)`.

    Raises:
        TypeError: If `gate` is not a `ChannelGate`.
        ValueError: If the gate is not built, `importance` has the wrong
            shape or a python `sparsity` is outside [0, 1).

    Example:

    >>> gate = ChannelGate(mode="binary")
    >>> gate.build((None, 8))
    >>> keep = apply_sparsity(gate, 0.75, importance=tf.range(8.0))
    >>> gate.keep_mask().tolist()
    [False, False, False, False, False, False, True, True]
    """
    if not isinstance(gate, ChannelGate):
        raise TypeError(f"apply_sparsity needs a ChannelGate, got {type(gate)}.")
    if not gate.built:
        raise ValueError(f"Gate {gate.name!r} is not built: call it once first.")
    channels = gate.channels
    if importance is None:
        score = _default_score(gate)
    else:
        score = tf.cast(importance, tf.float32)
        if score.shape.rank != 1 or score.shape[0] != channels:
            raise ValueError(
                f"importance for gate {gate.name!r} must have shape ({channels},), "
                f"got {tuple(score.shape)}."
            )
    keep = _top_k_mask(score, keep_count(sparsity, channels))
    gate.set_keep(keep)
    return keep


def apply_schedule(gates: Sequence[ChannelGate], schedule: PruningSchedule, step):
    """Lets a schedule drive gates: `apply_sparsity` on each when it is due.

    Args:
        gates: The `ChannelGate`s to drive with one sparsity.
        schedule: Any `PruningSchedule` (ours or tfmot's).
        step: The training step (int or int tensor, e.g.
            `optimizer.iterations`).

    Returns:
        A boolean tensor: whether the gates were set at this step.

    Example:

    >>> gate = ChannelGate(mode="dmad")
    >>> gate.build((None, 4))
    >>> schedule = ChannelSparsity(0.5, 0.5, begin_step=0, end_step=10)
    >>> bool(apply_schedule([gate], schedule, 0)), int(gate.keep_mask().sum())
    (True, 2)
    """
    should_prune, sparsity = schedule(step)

    def prune():
        for gate in gates:
            apply_sparsity(gate, sparsity)
        return tf.constant(True)

    return tf.cond(should_prune, prune, lambda: tf.constant(False))
