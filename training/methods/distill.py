"""`distill`: the distillation baseline every method must beat.

1. build: the teacher with every layer cut to its top filters by L1 norm
   (residual channels ranked together), at the largest uniform keep-ratio
   that fits the MACs budget (`training.budget.keep_ratio_for_budget`);
2. no search phase: the L1 cut meets the budget at once;
3. `slim`, recording which teacher channels each layer kept;
4. the pipeline refits the student to the teacher by least squares
   (`tgc.reconstruction`, on by default);
5. fine-tune with pixel L1 + feature distillation (1x1 mappers on the
   teacher's taps) + a GAN loss, all steps.

GAN Compression initialises its students the same way.
"""

from __future__ import annotations

import dataclasses

from training import budget
from training.methods import base, register


@register
class Distill(base.Method):
    """L1-pruned teacher, least-squares refit, pixel + feature + GAN loss."""

    name = "distill"

    @dataclasses.dataclass(frozen=True)
    class Options:
        """Loss weights of the fine-tuning objective.

        Attributes:
            lambda_recon: L1 to the target; `None`: 100 paired, 10 unpaired.
            lambda_distill: Feature distillation; `None`: 1 paired, 0.01
                unpaired.
            lambda_gan: The adversarial term.
        """

        lambda_recon: float | None = None
        lambda_distill: float | None = None
        lambda_gan: float = 1.0

        def __post_init__(self):
            base.check_non_negative(self, "distill")

    def build(self, teacher, setup):
        keep_ratio, gated = budget.keep_ratio_for_budget(teacher, setup.budget, "l1")
        return base.Student(
            gated,
            base.discriminator(setup, teacher.output_shape[-1]),
            state={"keep_ratio": keep_ratio},
        )

    def finetune_trainer(self, student, teacher, setup, steps):
        return base.distillation_trainer(
            student,
            teacher,
            setup,
            steps,
            lambda_recon=self.options.lambda_recon,
            lambda_distill=self.options.lambda_distill,
            lambda_gan=self.options.lambda_gan,
        )
