"""`gan_slimming`: distillation, proximal channel pruning and quantization in one.

GAN Slimming (Wang et al., ECCV 2020; METHODS.md section 2):

1. build: the dense teacher itself, with a scale gate after every norm
   (`tgc.pruning.add_gates(teacher, "scale")`: each affine norm's gamma and
   beta move into the gate, so the student starts equal to the teacher);
   with `quantize="search"` (GS-8 as in the paper) it is also made
   quantization-aware (`tgc.quantization.quantize_generator`: weights
   per-tensor `max|W|/127`, ReLU outputs clamped to [0, 4], 8 bits,
   straight-through); `quantize="finetune"` (the default of the
   `gan_slimming_int8` method) does it after extraction and the refit
   instead, leaving in float32 the convolutions whose int8 output alone
   costs the slimmed student the most (`float_layers="auto"`,
   `tgc.quantization.plan_int8` on the validation images);
2. search: one objective, `L_G = beta * perceptual(G_s(x), G_t(x)) + LSGAN`
   on pseudo-pairs (the discriminator's real samples are the teacher's
   outputs); the scale gates' `gamma` train with their own SGD (lr 0.1,
   momentum 0.5, an `OptimizerGroup`), everything else with Adam; after
   every step the proximal soft-threshold `gamma <- sign(gamma) max(|gamma|
   - rho * lr, 0)` at the gates' current learning rate. The residual
   stream's gates are never shrunk (`tgc.proximal.scale_gates`). `rho` is
   driven by the MACs budget (`tgc.proximal.RhoController`: it starts where
   the proximal steps alone would meet the budget and follows a target
   that reaches it at `reach` of the search); at the end the smallest
   `|gamma|` close until the budget is met (`tgc.proximal.prune_to_budget`);
3. slim: the channels with `gamma == 0` go, their `beta` folded into the
   next layer (`tgc.slim`, exact: no fine-tuning is needed to recover);
4. the pipeline's least-squares refit to the teacher (`refit=True`, the
   default; the paper has none) and its `match` phase;
5. fine-tuning with the same objective (`search_share < 1`; the default
   gives it half the steps, the paper's recipe none), its content weight
   `finetune_beta` (default `beta`), or with the `distill` baseline's
   objective (`finetune_loss="distill"`; README "GAN Slimming" has the
   proxy rows).

The defaults are tuned for short runs; `PAPER_OPTIONS` (the bench row
`gan_slimming_paper`) is the paper's recipe: perceptual content, Adam at
1e-5, search only, no refit.

The perceptual loss is the paper's: L1 of VGG16 `relu1_2` features plus
`1e5` times the Gram MSE of `relu1_2..relu4_3`, on the HED-VGG16 weights the
project ships (`training.losses.hed_vgg16_features`), its features scaled
by 1/255 to the magnitude of the paper's [0, 1]-input VGG (so that
`beta = 20` weighs it against the GAN loss as in the paper).
`content="mse"` is the paper's pixel-MSE variant.

The project's colour skip (`with_colour_skip`, which resets the output
layer) is used only with `refit=True`, which fits that layer again: without
it the student keeps the output layer it trained.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import tensorflow as tf

import tfgancompress as tgc
from tfgancompress import proximal
from tfgancompress.schedules import MacsBudget
from training import losses
from training.callbacks import training_step
from training.methods import base, register
from training.trainer import AdversarialTrainer, OptimizerGroup

CONTENTS = ("perceptual", "mse")
QUANTIZE = ("none", "search", "finetune")
FINETUNE_LOSSES = ("slimming", "distill")
FLOAT_LAYERS = ("auto", "none")
# The paper's recipe, where the defaults deviate from it.
PAPER_OPTIONS = "content=perceptual,learning_rate_scale=0.05,search_share=1,refit=false"
_CONTENT_LAYER = "relu1_2"
_STYLE_LAYERS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3")
_STYLE_WEIGHT = 1e5
# HED's Caffe VGG reads 0..255 pixels; the paper's VGG reads [0, 1].
_FEATURE_SCALE = 1.0 / 255.0


def perceptual_features() -> keras.Model:
    """GAN Slimming's VGG16 features (`relu1_2..relu4_3`), scaled by 1/255."""
    vgg = losses.hed_vgg16_features(_STYLE_LAYERS)
    inputs = keras.Input((None, None, 3))
    scaled = [keras.layers.Rescaling(_FEATURE_SCALE)(f) for f in vgg(inputs)]
    model = keras.Model(inputs, scaled, name="gan_slimming_vgg16")
    model.trainable = False
    return model


class GanSlimmingTrainer(AdversarialTrainer):
    """GAN Slimming's objective, with the proximal step after every update.

    `L_G = beta * content(G_s(x), target) + LSGAN(D(G_s(x)))`, the content
    being the perceptual loss of `features` or the pixel MSE. With
    `rho`, the prunable scale gates are soft-thresholded after each step by
    `rho * learning_rate`, the gates' optimizer's rate of that step; their
    `gamma`s are then trained by that optimizer (an `OptimizerGroup` named
    `"gamma"` given to `compile`), not by the generator's.

    Args:
        generator: The student generator (gated while searching).
        discriminator: Its discriminator.
        teacher: The teacher, for `"unpaired"` batches (in `"paired"` mode
            the batches already hold the teacher's outputs).
        mode: `"paired"` or `"unpaired"` (see `AdversarialTrainer`).
        beta: Weight of the content term (paper: 20).
        features: The perceptual feature model (`perceptual_features()`),
            or `None` for the pixel-MSE content.
        rho: A non-trainable scalar variable: the L1 weight of the
            proximal step, or `None` for no pruning (fine-tuning).
        prune_residual: Shrink the residual stream's gates too.
        **kwargs: More `AdversarialTrainer` arguments.
    """

    def __init__(
        self,
        generator: keras.Model,
        discriminator: keras.Model,
        teacher: keras.Model | None = None,
        mode: str = "paired",
        beta: float = 20.0,
        features: keras.Model | None = None,
        rho: keras.Variable | None = None,
        prune_residual: bool = False,
        **kwargs,
    ):
        super().__init__(
            generator, discriminator, teacher=teacher, mode=mode, taps=None, **kwargs
        )
        self.beta = float(beta)
        self.features = features
        self.rho = rho
        self.gates = []
        if rho is not None:
            self.gates = proximal.scale_gates(generator, prune_residual)
        self.gammas = [gate.gamma for gate in self.gates]

    def generator_variables(self) -> list:
        gammas = {id(g) for g in self.gammas}
        return [v for v in super().generator_variables() if id(v) not in gammas]

    def generator_loss_names(self) -> list[str]:
        return ["gan", "perceptual" if self.features is not None else "mse"]

    def content(self, fake, target):
        """The paper's perceptual loss of `fake` against `target`, or the MSE."""
        if self.features is None:
            return tf.reduce_mean(tf.square(fake - tf.cast(target, fake.dtype)))
        fake_maps = self.features(fake)
        target_maps = self.features(target)
        loss = losses.content_loss(fake_maps[0], target_maps[0], "l1")
        return loss + _STYLE_WEIGHT * losses.gram_loss(fake_maps, target_maps)

    def generator_losses(self, step) -> dict:
        logits = self.discriminator(
            self.discriminator_input(step.x, step.fake), training=True
        )
        name = self.generator_loss_names()[1]
        return {
            "gan": self.lambda_gan * self.gan_loss.generator(logits),
            name: self.beta * self.content(step.fake, step.target),
        }

    def prepare_step(self, x, y):
        step = super().prepare_step(x, y)
        if self.rho is not None:
            # The rate of this step's update (the schedule moves on after it).
            optimizer = self.group_optimizers["gamma"]
            step.extras["gamma_learning_rate"] = optimizer.learning_rate
        return step

    def after_step(self, step) -> None:
        if self.rho is not None:
            threshold = self.rho * step.extras["gamma_learning_rate"]
            proximal.proximal_step(self.gates, threshold)


class RhoControl(keras.callbacks.Callback):
    """Drives the trainer's `rho` from the MACs budget; meets it at the end.

    Every `interval` steps `controller.update` sets `rho`; when training
    ends, `tgc.proximal.prune_to_budget` closes the smallest `|gamma|`s
    still over the budget.

    Args:
        controller: A `tgc.proximal.RhoController` of the trainer's generator.
        macs_budget: The generator's MACs budget.
        interval: Steps between updates.
    """

    def __init__(self, controller: proximal.RhoController, macs_budget, interval):
        super().__init__()
        self.controller = controller
        self.macs_budget = float(macs_budget)
        self.interval = int(interval)

    def on_train_begin(self, logs=None):
        self.controller.rho = float(self.model.rho.numpy())  # resumed runs

    def on_train_batch_end(self, batch, logs=None):
        step = int(training_step(self.model))
        if step % self.interval == 0:
            optimizer = self.model.group_optimizers["gamma"]
            rho = self.controller.update(step, float(optimizer.learning_rate))
            self.model.rho.assign(rho)

    def on_train_end(self, logs=None):
        proximal.prune_to_budget(
            self.model.generator,
            self.macs_budget,
            self.controller.input_shape,
            residual=self.controller.residual,
        )


@register
class GanSlimming(base.Method):
    """GAN Slimming: perceptual + GAN loss, proximal pruning of scale gates."""

    name = "gan_slimming"

    @dataclasses.dataclass(frozen=True)
    class Options:
        """The objective, the pruning and the schedule.

        The defaults deviate from the paper where its recipe does not
        survive a short run (README "GAN Slimming"): pixel-MSE content,
        Adam at the setup's rate, half the steps fine-tuning, the
        least-squares refit. `PAPER_OPTIONS` is the paper's recipe.

        Attributes:
            beta: Weight of the content term against the LSGAN term.
            content: `"perceptual"` (VGG16 content + Gram) or `"mse"`.
            quantize: `"none"`; `"search"` (GS-8): quantization-aware from
                the first step, pruned in the same objective; `"finetune"`:
                search in float, then the slimmed (and refitted) student is
                made quantization-aware and fine-tuned (needs
                `search_share < 1`).
                Either way its int8 LiteRT file needs no calibration data.
            rho: A fixed L1 weight (the paper's hand-set `rho`, ~0.01), or
                `None`: driven by the MACs budget.
            reach: Fraction of the search after which the MACs target is
                the budget.
            control_interval: Steps between updates of `rho`.
            gamma_learning_rate: SGD learning rate of the gates' `gamma`
                (cosine-decayed).
            gamma_momentum: Its momentum.
            learning_rate_scale: Adam's rate for the generator is the
                setup's times this (paper: 1e-5, i.e. 0.05 x 2e-4).
            search_share: Fraction of the steps spent pruning; the rest
                fine-tunes the slimmed student with the same objective.
            prune_residual: Prune the residual stream too (the paper never
                does): its channels go when every gate on them closes.
            refit: Let the pipeline wrap the slimmed student in the colour
                skip and refit it to the teacher by least squares before
                fine-tuning.
            finetune_loss: The fine-tuning objective: `"slimming"`, the
                search's (`finetune_beta * content + LSGAN`); `"distill"`,
                the `distill` baseline's (pixel L1 + feature distillation +
                LSGAN, `base.distillation_trainer`), whose weights do not
                scale the gates' search.
            finetune_beta: The content weight of the `"slimming"`
                fine-tuning; `None`: `beta`.
            qat_share: With `quantize="finetune"`: the fraction of the
                fine-tuning steps that is quantization-aware, at its end;
                before it the student fine-tunes in float (its own trainer
                and `fit`, as `quantize="none"` does), and the quantizers
                (and `float_layers="auto"`'s plan) are set up at the switch
                on the float-fine-tuned student. 1: quantization-aware
                from the first fine-tuning step.
            qat_learning_rate_scale: The quantization-aware stage's
                learning rates (generator and discriminator, cosine-decayed
                over that stage) are the float stage's times this.
        """

        beta: float = 20.0
        content: str = "mse"
        quantize: str = "none"
        rho: float | None = None
        reach: float = 0.7
        control_interval: int = 10
        gamma_learning_rate: float = 0.1
        gamma_momentum: float = 0.5
        learning_rate_scale: float = 1.0
        search_share: float = 0.5
        prune_residual: bool = False
        refit: bool = True
        finetune_loss: str = "slimming"
        finetune_beta: float | None = None
        qat_share: float = 1.0
        qat_learning_rate_scale: float = 1.0

        def __post_init__(self):
            choices_of = (
                ("content", CONTENTS),
                ("quantize", QUANTIZE),
                ("finetune_loss", FINETUNE_LOSSES),
            )
            for key, choices in choices_of:
                if getattr(self, key) not in choices:
                    raise ValueError(
                        f"gan_slimming option {key} must be one of {choices}, got "
                        f"{getattr(self, key)!r}."
                    )
            if self.quantize == "search" and self.refit:
                raise ValueError(
                    "gan_slimming option quantize='search' cannot be combined with "
                    "refit=true: the least-squares refit and the colour skip need "
                    "the plain convolutions a quantization-aware search wraps; set "
                    "refit=false, or quantize='finetune' to quantize after the refit."
                )
            if self.quantize == "finetune" and self.search_share == 1:
                raise ValueError(
                    "gan_slimming option quantize='finetune' needs fine-tuning "
                    "steps: set search_share below 1."
                )
            if self.qat_share < 1 and self.quantize != "finetune":
                raise ValueError(
                    "gan_slimming option qat_share < 1 splits a quantization-aware "
                    f"fine-tuning; it needs quantize='finetune', got {self.quantize!r}."
                )
            positive = (
                "beta",
                "gamma_learning_rate",
                "learning_rate_scale",
                "qat_learning_rate_scale",
            )
            for key in positive:
                if getattr(self, key) <= 0:
                    raise ValueError(
                        f"gan_slimming option {key} must be > 0, got "
                        f"{getattr(self, key)}."
                    )
            if self.finetune_beta is not None and self.finetune_beta <= 0:
                raise ValueError(
                    f"gan_slimming option finetune_beta must be > 0, got "
                    f"{self.finetune_beta}."
                )
            if self.finetune_beta is not None and self.finetune_loss != "slimming":
                raise ValueError(
                    "gan_slimming option finetune_beta weighs the 'slimming' "
                    f"fine-tuning loss; finetune_loss is {self.finetune_loss!r}."
                )
            if self.rho is not None and self.rho <= 0:
                raise ValueError(f"gan_slimming option rho must be > 0, got {self.rho}")
            for key in ("reach", "search_share", "qat_share"):
                if not 0 < getattr(self, key) <= 1:
                    raise ValueError(
                        f"gan_slimming option {key} must be in (0, 1], got "
                        f"{getattr(self, key)}."
                    )
            if not 0 <= self.gamma_momentum < 1 or self.control_interval < 1:
                raise ValueError(
                    "gan_slimming options need 0 <= gamma_momentum < 1 and "
                    f"control_interval >= 1, got {self.gamma_momentum} and "
                    f"{self.control_interval}."
                )

    @property
    def colour_skip(self) -> bool:
        """Only with the refit: the skip resets the output layer it refits."""
        return self.options.refit

    @property
    def detail_skip(self) -> bool:
        """Only with the refit, which fits the output layer around the skip."""
        return self.options.refit

    def smallest_macs(self, teacher, input_shape) -> int:
        """The teacher with every prunable scale gate closed."""
        gated = tgc.pruning.add_gates(teacher, "scale")
        for gate in proximal.scale_gates(gated, self.options.prune_residual):
            gate.gamma.assign(np.zeros(gate.channels, np.float32))
        return tgc.cost.gate_macs(gated, tuple(input_shape))

    def split_steps(self, steps: int) -> dict[str, int]:
        search = max(1, round(self.options.search_share * steps))
        return {"search": search, "finetune": steps - search}

    def build(self, teacher, setup):
        generator = tgc.pruning.add_gates(teacher, "scale")
        generator.name = f"{teacher.name}_slimming"
        if self.options.quantize == "search":
            generator = tgc.quantization.quantize_generator(generator)
        return base.Student(
            generator, base.discriminator(setup, teacher.output_shape[-1])
        )

    def _trainer(self, student, teacher, setup, steps, beta, rho=None):
        unpaired = setup.mode == "unpaired"
        features = None
        if self.options.content == "perceptual":
            features = perceptual_features()
        trainer = GanSlimmingTrainer(
            student.generator,
            student.discriminator,
            teacher=teacher if unpaired else None,
            mode=setup.mode,
            beta=beta,
            features=features,
            rho=rho,
            prune_residual=self.options.prune_residual,
        )
        groups = []
        if rho is not None:
            rate = keras.optimizers.schedules.CosineDecay(
                self.options.gamma_learning_rate, max(1, steps)
            )
            groups.append(
                OptimizerGroup(
                    "gamma",
                    keras.optimizers.SGD(rate, momentum=self.options.gamma_momentum),
                    variables=lambda: trainer.gammas,
                    losses=lambda step: {},
                    loss_names=[],
                    when="generator",
                )
            )
        trainer.compile(
            g_optimizer=base.adam(setup, steps, self.options.learning_rate_scale),
            d_optimizer=base.adam(setup, steps),
            gan_loss="lsgan",
            lambda_recon=0.0,
            lambda_distill=0.0,
            groups=groups,
            jit_compile=setup.jit_compile,
        )
        return trainer

    def _controller(self, generator, setup, steps) -> proximal.RhoController:
        shape = setup.budget.input_shape
        full = tgc.cost.gate_macs(generator, shape)
        end = max(1, round(self.options.reach * steps))
        schedule = MacsBudget(full, min(setup.budget.macs, full), 0, end, frequency=1)
        horizon = 2 * self.options.control_interval
        residual = self.options.prune_residual
        if self.options.rho is not None:  # the paper: a fixed rho
            return proximal.RhoController(
                generator, schedule, shape, self.options.rho, horizon, residual=residual
            )
        rate = keras.optimizers.schedules.CosineDecay(
            self.options.gamma_learning_rate, max(1, steps)
        )
        return proximal.RhoController.for_budget(
            generator, schedule, shape, rate, horizon=horizon, residual=residual
        )

    def search_trainer(self, student, teacher, setup, steps):
        controller = self._controller(student.generator, setup, steps)
        student.state["rho_controller"] = controller
        rho = keras.Variable(controller.rho, trainable=False, name="rho")
        return self._trainer(student, teacher, setup, steps, self.options.beta, rho)

    def search_callbacks(self, student, setup, steps):
        interval = self.options.control_interval
        if self.options.rho is not None:  # fixed: the budget is met at the end
            interval = steps + 1
        controller = student.state["rho_controller"]
        return [RhoControl(controller, setup.budget.macs, interval)]

    def slim(self, student):
        student = super().slim(student)
        if not self.options.refit:
            student.kept = None
        return student

    def finetune_stages(self, steps: int) -> list[int]:
        """Float, then quantization-aware fine-tuning with `qat_share < 1`."""
        if self.options.quantize != "finetune" or self.options.qat_share == 1:
            return [steps]
        quantized = min(steps, max(1, round(self.options.qat_share * steps)))
        return [steps - quantized, quantized]

    def finetune_trainer(self, student, teacher, setup, steps, stage: int = 0):
        """The fine-tuning trainer of `finetune_stages`' stage `stage`."""
        float_stage = self.options.qat_share < 1 and stage == 0
        if self.options.quantize == "finetune" and not float_stage:
            if not tgc.quantization.is_quantized(student.generator):
                # After the refit (and the float stage); its moving ranges
                # start at the first batch.
                float_layers = self.int8_float_layers(student.generator, setup)
                student.state["int8_float_layers"] = ",".join(float_layers)
                student.generator = tgc.quantization.quantize_generator(
                    student.generator, float_layers=float_layers
                )
            if self.options.qat_share < 1:
                setup = dataclasses.replace(
                    setup,
                    learning_rate=setup.learning_rate
                    * self.options.qat_learning_rate_scale,
                )
        if self.options.finetune_loss == "distill":
            return base.distillation_trainer(student, teacher, setup, steps)
        beta = self.options.finetune_beta or self.options.beta
        return self._trainer(student, teacher, setup, steps, beta)

    def int8_float_layers(self, generator, setup) -> list[str]:
        """Convolutions `quantize="finetune"` leaves in float32: none here."""
        return []


@register
class GanSlimmingInt8(GanSlimming):
    """GS-8: GAN Slimming with a quantization-aware fine-tuning, shipped int8.

    The defaults search in float, slim, refit, then make the student
    quantization-aware (`quantize="finetune"`, the convolutions whose int8
    output costs most kept float32: `float_layers="auto"`) and fine-tune it
    with the `distill` baseline's objective (`finetune_loss="distill"`).
    The paper's
    order, quantization-aware from the first search step
    (`quantize="search"`), needs `refit=false` (the refit and the colour
    skip work on the plain convolutions the quantizers wrap) and, in short
    runs, collapses (README "GAN Slimming").
    """

    name = "gan_slimming_int8"

    @dataclasses.dataclass(frozen=True)
    class Options(GanSlimming.Options):
        """GAN Slimming's options, GS-8's defaults, and `float_layers`.

        Attributes:
            float_layers: `"auto"`: before the quantization-aware
                fine-tuning, `tgc.quantization.plan_int8` measures on the
                setup's validation images (training photos) what each
                tensor's int8 rounding alone costs the slimmed student, and
                the convolutions costing more than `float_layer_psnr`
                stay float32 (no quantizers; the int8 file runs them in
                float, as `to_litert` does for calibrated files).
                `"none"`: every convolution quantized.
            float_layer_psnr: The threshold of `"auto"`, dB PSNR of the
                output against the float model. Above `to_litert`'s 40 dB:
                the plan's calibrated ranges underrate what the
                quantization-aware model's moving ranges cost (README "GAN
                Slimming").
        """

        quantize: str = "finetune"
        finetune_loss: str = "distill"
        float_layers: str = "auto"
        float_layer_psnr: float = 50.0

        def __post_init__(self):
            super().__post_init__()
            if self.float_layers not in FLOAT_LAYERS:
                raise ValueError(
                    f"gan_slimming_int8 option float_layers must be one of "
                    f"{FLOAT_LAYERS}, got {self.float_layers!r}."
                )
            if self.float_layer_psnr <= 0:
                raise ValueError(
                    f"gan_slimming_int8 option float_layer_psnr must be > 0, got "
                    f"{self.float_layer_psnr}."
                )

    def int8_float_layers(self, generator, setup) -> list[str]:
        """The convolutions whose int8 output costs the most (`"auto"`)."""
        if self.options.float_layers == "none":
            return []
        images, _ = setup.validation_arrays()
        plan = tgc.quantization.plan_int8(
            generator,
            images,
            min_layer_psnr=self.options.float_layer_psnr,
            equalize=False,
        )
        return plan.float_layers
