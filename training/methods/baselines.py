"""Baseline students that every compression method must beat.

* `l1_pruned_student`: the distillation baseline's student — the teacher
  with each layer cut to its top filters by L1 norm (residual channels
  ranked together), physically slimmed; GAN Compression initialises its
  students the same way. Optionally its convolutions are then refitted to
  the teacher by least squares on calibration images
  (`tgc.reconstruction`). Train it with `AdversarialTrainer` (pixel +
  feature distillation + GAN loss).
* `uniform_student`: the teacher's architecture at a uniformly reduced
  width, randomly initialised (trained from scratch).
* `keep_ratio_for_budget`: the width ratio whose slimmed model fits a MACs
  budget.
"""

from __future__ import annotations

import keras
import numpy as np

import tfgancompress as tgc


def keep_ratio_for_budget(
    teacher: keras.Model,
    macs_budget: int,
    input_shape=(256, 256, 3),
    tolerance: float = 0.005,
) -> float:
    """The largest filter keep-ratio whose L1-pruned student fits the budget.

    Args:
        teacher: The generator to prune.
        macs_budget: Target MACs of the slimmed student at `input_shape`.
        input_shape: `(H, W, C)` at which MACs are counted.
        tolerance: Bisection stops when the ratio interval is this narrow.

    Returns:
        The keep ratio in (0, 1].

    Raises:
        ValueError: If the budget is not positive, or not reachable even
            when every layer keeps a single filter.
    """
    if macs_budget <= 0:
        raise ValueError(f"macs_budget must be > 0, got {macs_budget}.")

    def macs(ratio: float) -> int:
        return tgc.profile(tgc.pruning.l1_prune(teacher, ratio), input_shape).macs

    if macs(1.0) <= macs_budget:
        return 1.0
    low, high = 1e-3, 1.0
    smallest = macs(low)
    if smallest > macs_budget:
        raise ValueError(
            f"A MACs budget of {macs_budget / 1e9:.3f} G is out of reach: even one "
            f"filter per layer costs {smallest / 1e9:.3f} G at {input_shape}."
        )
    while high - low > tolerance:
        middle = (low + high) / 2
        low, high = (middle, high) if macs(middle) <= macs_budget else (low, middle)
    return low


def l1_pruned_student(
    teacher: keras.Model,
    keep_ratio: float,
    colour_map: tuple[np.ndarray, np.ndarray] | None = None,
    calibration: np.ndarray | None = None,
    verbose: bool = True,
) -> keras.Model:
    """The distillation baseline's student: the teacher L1-pruned, slimmed.

    Args:
        teacher: A trained functional generator (e.g. `pretrained("vintage")`).
        keep_ratio: Fraction of filters kept in every gated layer, in (0, 1].
        colour_map: `(matrix, bias)`: wrap the student in a global colour
            skip starting at this map (`tgc.models.with_colour_skip`).
        calibration: Images on which the pruned convolutions are refitted
            to the teacher by least squares (`tgc.reconstruction`); `None`
            keeps the teacher's weights, sliced.
        verbose: Show the reconstruction's progress.

    Returns:
        A plain, slimmed Keras model initialised from the teacher.
    """
    gated = tgc.pruning.l1_gated(teacher, keep_ratio)
    student = tgc.slim(gated)
    student.name = f"{teacher.name}_l1_pruned"
    if colour_map is not None:
        student = tgc.models.with_colour_skip(student, colour_map)
    if calibration is not None:
        tgc.reconstruction.reconstruct(
            student,
            teacher,
            calibration,
            tgc.surgery.kept_channels(gated),
            verbose=verbose,
        )
    return student


def uniform_student(
    keep_ratio: float, n_blocks: int = 9, ngf: int = 64, **kwargs
) -> keras.Model:
    """A randomly initialised ResNet generator at `keep_ratio` of the width.

    Args:
        keep_ratio: Width ratio against `ngf`, in (0, 1].
        n_blocks: ResBlocks (as the teacher).
        ngf: The teacher's stem width.
        **kwargs: Passed to `tgc.models.resnet_generator` (e.g. `affine`).

    Returns:
        The untrained student.
    """
    if not 0.0 < keep_ratio <= 1.0:
        raise ValueError(f"keep_ratio must be in (0, 1], got {keep_ratio}.")
    width = max(1, round(ngf * keep_ratio))
    return tgc.models.resnet_generator(
        ngf=width, n_blocks=n_blocks, name=f"uniform_ngf{width}", **kwargs
    )
