"""The MACs budget every compression method must meet.

A budget is a number of multiply-accumulates of the *generator* at a fixed
input shape (256x256x3 by default, the resolution the papers count at),
counted like `tgc.profile` counts them. The command-line entry points take
it as a ratio to the teacher (`--macs_ratio`, default 20: the student costs
at most 1/20 of the teacher) or in absolute G MACs (`--macs_budget`, which
wins when given).

    budget = Budget.resolve(teacher, macs_ratio=20)
    budget.macs / 1e9  # 2.84 for the vintage teacher
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np

import tfgancompress as tgc
from tfgancompress import schedules
from training.callbacks import gates_of

DEFAULT_INPUT_SHAPE = (256, 256, 3)
DEFAULT_MACS_RATIO = 20.0
IMPORTANCES = ("greedy", "l1", "position")
# The greedy paths go this far past the keep ratio (each layer's rounding
# may keep a channel more than the ratio says).
GREEDY_MARGIN = 0.05


class BudgetError(ValueError):
    """A MACs budget that cannot be met; the message says what is reachable."""


@dataclasses.dataclass(frozen=True)
class Budget:
    """Generator MACs a student may cost, at `input_shape`.

    Attributes:
        macs: The most MACs the compressed generator may cost.
        input_shape: `(H, W, C)` at which MACs are counted.
        teacher_macs: The teacher's MACs at `input_shape` (for ratios and
            messages), or `None` when unknown.
    """

    macs: int
    input_shape: tuple = DEFAULT_INPUT_SHAPE
    teacher_macs: int | None = None

    def __post_init__(self):
        if int(self.macs) <= 0:
            raise BudgetError(f"A MACs budget must be > 0, got {self.macs}.")
        object.__setattr__(self, "macs", int(self.macs))
        object.__setattr__(self, "input_shape", tuple(self.input_shape))

    @classmethod
    def resolve(
        cls,
        teacher: keras.Model,
        macs_ratio: float | None = DEFAULT_MACS_RATIO,
        macs_budget: float | None = None,
        input_shape=DEFAULT_INPUT_SHAPE,
    ) -> Budget:
        """The budget of the command-line flags.

        Args:
            teacher: The generator being compressed.
            macs_ratio: The student costs at most `teacher MACs / macs_ratio`
                (>= 1).
            macs_budget: Absolute budget in G MACs (1e9); wins over
                `macs_ratio` when given.
            input_shape: `(H, W, C)` at which MACs are counted.

        Returns:
            The budget.

        Raises:
            BudgetError: On a ratio below 1, a budget <= 0 or neither given.
        """
        teacher_macs = tgc.profile(teacher, tuple(input_shape)).macs
        if macs_budget is not None:
            if macs_budget <= 0:
                raise BudgetError(f"--macs_budget must be > 0 G, got {macs_budget}.")
            return cls(round(macs_budget * 1e9), input_shape, teacher_macs)
        if macs_ratio is None or macs_ratio < 1:
            raise BudgetError(
                f"--macs_ratio must be >= 1 (the student costs 1/ratio of the "
                f"teacher's MACs), got {macs_ratio}."
            )
        return cls(int(teacher_macs / macs_ratio), input_shape, teacher_macs)

    @property
    def ratio(self) -> float | None:
        """Teacher MACs / budget, or `None` without the teacher's MACs."""
        return None if self.teacher_macs is None else self.teacher_macs / self.macs

    def minus(self, macs: int) -> Budget:
        """The budget left once something else costs `macs`."""
        return dataclasses.replace(self, macs=self.macs - int(macs))

    def describe(self, macs: int | None = None) -> str:
        """`"2.840 G MACs (20.0x fewer than the teacher's 56.80 G)"`."""
        macs = self.macs if macs is None else macs
        text = f"{macs / 1e9:.3f} G MACs"
        if self.teacher_macs:
            text += (
                f" ({self.teacher_macs / macs:.1f}x fewer than the teacher's "
                f"{self.teacher_macs / 1e9:.2f} G)"
            )
        return text

    def check_reachable(self, smallest_macs: int, what: str) -> None:
        """Raises `BudgetError` unless `smallest_macs` fits in the budget.

        Args:
            smallest_macs: MACs of the cheapest student `what` can make.
            what: Who cannot reach it (e.g. `"method 'distill'"`).
        """
        if smallest_macs <= self.macs:
            return
        reachable = f"--macs_budget >= {smallest_macs / 1e9:.4f}"
        if self.teacher_macs:
            reachable += f" or --macs_ratio <= {self.teacher_macs / smallest_macs:.1f}"
        raise BudgetError(
            f"A budget of {self.describe()} at {self.input_shape} is out of reach "
            f"for {what}: its smallest student costs {self.describe(smallest_macs)}. "
            f"Reachable: {reachable}."
        )

    def check_met(self, macs: int, what: str) -> None:
        """Raises `BudgetError` if a finished student costs more than the budget."""
        if macs > self.macs:
            raise BudgetError(
                f"{what} costs {self.describe(macs)} at {self.input_shape}, over "
                f"its budget of {self.describe()}."
            )


def _macs(gated: keras.Model, input_shape) -> int:
    return tgc.cost.gate_macs(gated, input_shape)


class _UniformPruning:
    """A gated copy of a model whose gates all keep one fraction of channels.

    `importance` maps gate names to channel scores (`"l1"`: filter L1
    norms); gates without scores keep their first channels.
    """

    def __init__(self, teacher: keras.Model, importance: str):
        self.gated = tgc.pruning.add_gates(teacher, "binary")
        self.importance = (
            tgc.pruning.l1_importance(self.gated) if importance == "l1" else {}
        )

    def set(self, keep_ratio: float) -> keras.Model:
        for gate in gates_of(self.gated):
            score = self.importance.get(gate.name)
            if score is None:  # the first channels, by position
                score = np.arange(gate.channels, 0, -1, dtype=np.float32)
            schedules.apply_sparsity(gate, 1.0 - keep_ratio, score)
        return self.gated


def smallest_gated_macs(teacher: keras.Model, input_shape=DEFAULT_INPUT_SHAPE) -> int:
    """MACs of `teacher` with one channel left after every normalization.

    The cheapest student a method that prunes the teacher's channels (gates
    after every norm, `tgc.pruning.add_gates`) can reach.
    """
    pruning = _UniformPruning(teacher, "position")
    return _macs(pruning.set(1e-3), tuple(input_shape))


def keep_ratio_for_budget(
    teacher: keras.Model,
    budget: Budget,
    importance: str = "l1",
    tolerance: float = 0.005,
    images: np.ndarray | None = None,
    verbose: bool = True,
) -> tuple[float, keras.Model]:
    """The largest uniform keep-ratio whose pruned teacher fits the budget.

    Every gated layer (`tgc.pruning.add_gates`: one gate after every norm)
    keeps the same fraction of its channels; bisection on that fraction
    (which channels are kept does not change the MACs).

    Args:
        teacher: The generator to prune.
        budget: The MACs budget.
        importance: Which channels each layer keeps. `"greedy"`: the ones
            the teacher's next layers need most, by greedy least-squares
            selection on `images` (`tgc.pruning.greedy_paths`; residual
            channels chosen together for every block that reads them);
            `"l1"`: its top filters by L1 norm (residual channels ranked
            together, `tgc.pruning.l1_importance`); `"position"`: its
            first channels.
        tolerance: Bisection stops when the ratio interval is this narrow.
        images: `(N, H, W, C)` calibration inputs in the teacher's range,
            for `"greedy"` only (a few dozen training views).
        verbose: Show the greedy selection's progress.

    Returns:
        `(keep_ratio, gated)`: the ratio in (0, 1] and the binary-gated copy
        of `teacher` set to it (`tgc.slim` of it is the student).

    Raises:
        BudgetError: If the budget is not reachable even when every layer
            keeps a single channel.
        ValueError: On an unknown `importance`, or `"greedy"` without
            `images`.
    """
    if importance not in IMPORTANCES:
        raise ValueError(
            f"importance must be one of {IMPORTANCES}, got {importance!r}."
        )
    if importance == "greedy" and images is None:
        raise ValueError(
            "Greedy channel selection needs calibration images (images=...): "
            "the teacher's activations on them decide which channels stay."
        )
    shape = budget.input_shape
    # Greedy scores are set after the bisection (the widths do not depend on
    # them); until then its gates keep their first channels.
    pruning = _UniformPruning(teacher, importance)
    if _macs(pruning.set(1.0), shape) <= budget.macs:
        return 1.0, pruning.gated
    low, high = 1e-3, 1.0
    budget.check_reachable(_macs(pruning.set(low), shape), f"pruning {teacher.name!r}")
    while high - low > tolerance:
        middle = (low + high) / 2
        fits = _macs(pruning.set(middle), shape) <= budget.macs
        low, high = (middle, high) if fits else (low, middle)
    if importance == "greedy":
        paths = tgc.pruning.greedy_paths(
            pruning.gated,
            teacher,
            images,
            max_keep=min(1.0, low + GREEDY_MARGIN),
            verbose=verbose,
        )
        pruning.importance = tgc.pruning.path_importance(paths)
    return low, pruning.set(low)
