"""Compression methods: one module per paper, plus the baselines they beat."""

from training.methods.baselines import (
    keep_ratio_for_budget,
    l1_pruned_student,
    uniform_student,
)

__all__ = ["keep_ratio_for_budget", "l1_pruned_student", "uniform_student"]
