"""Baseline students that every compression method must beat.

* `l1_pruned_student`: the distillation baseline's student — the teacher
  with each layer cut to its top filters by L1 norm (residual channels
  ranked together), physically slimmed; GAN Compression initialises its
  students the same way. Train it with `AdversarialTrainer` (pixel +
  feature distillation + GAN loss).
* `uniform_student`: the teacher's architecture at a uniformly reduced
  width, randomly initialised (trained from scratch).
* `keep_ratio_for_budget`: the width ratio whose slimmed model fits a MACs
  budget.
"""

from __future__ import annotations

import keras

import keras_layers
import tfgancompress as tgc


def _pruned(gated: keras.Model, keep_ratio: float, importance: dict) -> keras.Model:
    for layer in gated.layers:
        if isinstance(layer, keras_layers.ChannelGate):
            tgc.schedules.apply_sparsity(
                layer, 1.0 - keep_ratio, importance[layer.name]
            )
    return tgc.slim(gated)


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
    gated = tgc.surgery.add_gates(teacher, "binary")
    importance = tgc.surgery.l1_importance(gated)

    def macs(ratio: float) -> int:
        return tgc.profile(_pruned(gated, ratio, importance), input_shape).macs

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


def l1_pruned_student(teacher: keras.Model, keep_ratio: float) -> keras.Model:
    """The teacher cut to `keep_ratio` of each layer's filters by L1 norm.

    Args:
        teacher: A trained functional generator (e.g. `pretrained("vintage")`).
        keep_ratio: Fraction of filters kept in every gated layer, in (0, 1].

    Returns:
        A plain, slimmed Keras model initialised from the teacher's weights.

    Raises:
        ValueError: If `keep_ratio` is outside (0, 1].
    """
    if not 0.0 < keep_ratio <= 1.0:
        raise ValueError(f"keep_ratio must be in (0, 1], got {keep_ratio}.")
    gated = tgc.surgery.add_gates(teacher, "binary")
    student = _pruned(gated, keep_ratio, tgc.surgery.l1_importance(gated))
    student.name = f"{teacher.name}_l1_pruned"
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
