"""`uniform`: the teacher's architecture at a uniform width, from scratch.

1. build: every layer of the teacher keeps the same fraction of its
   channels, the largest that fits the MACs budget (the widths of the
   `distill` student), and all weights are re-initialised;
2. no search phase; 3. nothing to slim; 4. no refit (no teacher weights);
5. train with pixel L1 + a GAN loss, all steps, no feature distillation.

It shows what the teacher's weights are worth: every method that inherits
them should beat it.
"""

from __future__ import annotations

import dataclasses

import keras

import tfgancompress as tgc
from training import budget
from training.methods import base, register


def reinitialised(model: keras.Model, name: str) -> keras.Model:
    """A copy of `model` with every weight drawn afresh from its initializer."""
    fresh = keras.models.clone_model(model)
    fresh.name = name
    return fresh


@register
class Uniform(base.Method):
    """Uniformly thinner teacher architecture, randomly initialised."""

    name = "uniform"

    @dataclasses.dataclass(frozen=True)
    class Options:
        """Loss weights.

        Attributes:
            lambda_recon: L1 to the target; `None`: 100 paired, 10 unpaired.
            lambda_gan: The adversarial term.
        """

        lambda_recon: float | None = None
        lambda_gan: float = 1.0

        def __post_init__(self):
            base.check_non_negative(self, "uniform")

    def build(self, teacher, setup):
        _, gated = budget.keep_ratio_for_budget(teacher, setup.budget, "position")
        generator = reinitialised(tgc.slim(gated), f"{teacher.name}_uniform")
        return base.Student(
            generator,
            base.discriminator(setup, teacher.output_shape[-1]),
            inherits_teacher=False,
        )

    def finetune_trainer(self, student, teacher, setup, steps):
        return base.distillation_trainer(
            student,
            teacher if setup.mode == "unpaired" else None,
            setup,
            steps,
            lambda_recon=self.options.lambda_recon,
            lambda_gan=self.options.lambda_gan,
            taps=None,
        )
