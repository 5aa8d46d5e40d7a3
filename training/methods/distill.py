"""`distill`: the distillation baseline every method must beat.

1. build: the teacher with every layer cut to the same fraction of its
   channels, the largest uniform keep-ratio that fits the MACs budget
   (`training.budget.keep_ratio_for_budget`). Which channels stay
   (`selection`): by default, when calibration images are given
   (`Setup.calibration`; `training.pipeline.compress` passes its refit
   images), the ones the teacher's next layers need most, by greedy
   least-squares selection (`tgc.pruning.greedy_paths`, He et al. 2017;
   residual channels chosen together for every block that reads them);
   without them, or with `selection="l1"`, each layer's top filters by L1
   norm (residual channels ranked together);
2. no search phase: the cut meets the budget at once;
3. `slim`, recording which teacher channels each layer kept;
4. the pipeline refits the student to the teacher by least squares
   (`tgc.reconstruction`, on by default);
5. fine-tune with pixel L1 + feature distillation (1x1 mappers on the
   teacher's taps) + a GAN loss, all steps.

GAN Compression initialises its students the L1 way.
"""

from __future__ import annotations

import dataclasses

from training import budget
from training.methods import base, register

SELECTIONS = ("auto", "greedy", "l1")


@register
class Distill(base.Method):
    """Pruned teacher (greedy or L1 selection), least-squares refit, distillation."""

    name = "distill"

    @dataclasses.dataclass(frozen=True)
    class Options:
        """Channel selection and the loss weights of the fine-tuning objective.

        Attributes:
            selection: Which channels the student keeps: `"greedy"`
                (least-squares reconstruction of the teacher's next layers
                on `Setup.calibration`), `"l1"` (filter L1 norm) or
                `"auto"`: greedy when calibration images are given, else L1.
            lambda_recon: L1 to the target; `None`: 100 paired, 10 unpaired.
            lambda_distill: Feature distillation; `None`: 1 paired, 0.01
                unpaired.
            lambda_gan: The adversarial term.
            colour_skip: Whether the pipeline may wrap the student in the
                global colour skip when the run asks for it
                (`training.train --colour_skip`); `False`: never.
        """

        selection: str = "auto"
        lambda_recon: float | None = None
        lambda_distill: float | None = None
        lambda_gan: float = 1.0
        colour_skip: bool = base.key_neutral(True)

        def __post_init__(self):
            if self.selection not in SELECTIONS:
                raise ValueError(
                    f"distill's selection must be one of {SELECTIONS}, got "
                    f"{self.selection!r}."
                )
            base.check_non_negative(self, "distill")

    @property
    def colour_skip(self) -> bool:
        """The `colour_skip` option."""
        return self.options.colour_skip

    def build(self, teacher, setup):
        images = setup.calibration_images()
        selection = self.options.selection
        if selection == "auto":
            selection = "l1" if images is None else "greedy"
        keep_ratio, gated = budget.keep_ratio_for_budget(
            teacher, setup.budget, selection, images=images
        )
        return base.Student(
            gated,
            base.discriminator(setup, teacher.output_shape[-1]),
            state={"keep_ratio": keep_ratio, "selection": selection},
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
