"""`gcc`: GAN-generator cooperative compression (Li et al., NeurIPS 2021).

1. build: the teacher with a `"scale"` gate after every norm (its affine
   scale and offset moved into the gate; `tgc.pruning.add_gates`), and two
   PatchGANs: the student's *selective-activation* discriminator (a binary,
   straight-through gate after each conv(+norm), `gated="binary"`) and the
   teacher's discriminator (the pretrained teacher ships none: it is
   trained online against the teacher);
2. search: L1-sparse pre-training of the gates (`SparseGateTrainer`: pixel
   L1 + GAN + `lambda_sparsity * sum |gamma|`, the gates on their own Adam),
   then `GlobalThreshold`: one threshold on `|gamma|` for all layers
   (residual channels share one mask: the mean over the stream's gates),
   the lowest whose slimmed generator meets the MACs budget, by binary
   search (`tgc.pruning.prune_to_budget`) at the budget's input shape;
   by default (`teacher_weights`) the kept channels then take the
   teacher's weights back: the short pre-training only ranked them;
3. slim: the generator, recording the teacher channels it kept; with
   `inherit=False` it is re-initialised. The discriminator stays gated:
   its gates are learnt while fine-tuning;
4. refit to the teacher by least squares (the pipeline; inherited weights
   only);
5. fine-tune (`GCCTrainer`), each step: the teacher's discriminator (and,
   with `online_teacher`, a teacher generator trained from scratch), then
   the student discriminator's weights, the student generator, then the
   student discriminator's gates (weights and gates alternate, each on its
   own optimizer). Generator loss: GAN + pixel L1 + online collaborative
   distillation, content and Gram terms with square roots over the four
   generator taps (through bias-free 1x1 mappers) and the teacher
   discriminator's two taps (on the student's vs the teacher's images).
   Gate loss: global coordination `|Delta_S - EMA(Delta_T)|`,
   `Delta = |L_G^adv - L_D^fake|` of each generator-discriminator pair,
   plus local capacity, the student discriminator's own loss. At the end
   `SlimDiscriminator` removes the discriminator's switched-off channels
   (the reference code never does) and records its MACs before and after
   (`student.state["d_macs_before"]`, `["d_macs"]`) and its live-channel
   fraction per layer (`["d_live_fraction"]`; `pipeline.discriminator_report`
   puts them in the train and bench reports).

Training a teacher online needs paired batches (its targets); the
pretrained teacher works in both modes.

Deviations of the method's defaults from the paper (paired mode), measured
at proxy scale (README, GCC section): content and Gram weights a tenth of
the paper's (5 and 1e3), 10% of the steps on the search instead of 25%, and
the discriminator's gates on Adam 1e-2 instead of 1e-4 (at 1e-4 a gate
cannot close in a run of a few hundred steps). `GCCTrainer` keeps the
paper's weights as its own defaults.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import tensorflow as tf

import tfgancompress as tgc
from tfgancompress.models import with_taps
from training import losses
from training.callbacks import gates_of
from training.methods import base, register
from training.methods.uniform import reinitialised
from training.trainer import AdversarialTrainer, OptimizerGroup, Step

# GCC's weights of its content and Gram terms: pix2pix on cityscapes, and
# CycleGAN horse->zebra (the pseudo-pair setting).
_CONTENT = {"paired": 50.0, "unpaired": 0.01}
_GRAM = {"paired": 1e4, "unpaired": 10.0}
# The `gcc` method's defaults (a deviation from the paper, paired only): a
# tenth of those weights. At the paper's, content (~400) and Gram (~180)
# drowned the pixel L1 (~18) and the row lost PSNR to `distill`; at a tenth
# (with `search_share=0.1`, `gate_learning_rate=0.01`) the proxy row went
# from 21.41 dB / FD 70.1 to 22.11 / 67.7 (distill 21.78 / 73.5; README).
_METHOD_CONTENT = {"paired": 5.0, "unpaired": 0.01}
_METHOD_GRAM = {"paired": 1e3, "unpaired": 10.0}


class _GatedDiscriminatorMixin:
    """The discriminator step updates the weights only, never the gates."""

    def discriminator_variables(self) -> list:
        gates = {id(v) for g in gates_of(self.discriminator) for v in g.weights}
        return [v for v in self.discriminator.trainable_variables if id(v) not in gates]


class SparseGateTrainer(_GatedDiscriminatorMixin, AdversarialTrainer):
    """GCC's pre-training for pruning: L1 sparsity on the generator's gates.

    An `AdversarialTrainer` (GAN + pixel L1, no feature distillation) whose
    generator carries `"scale"` gates (`tgc.pruning.add_gates(g, "scale")`)
    and whose loss gains `lambda_sparsity * sum |gamma|` over them. The
    gates' `gamma` train on an optimizer of their own (`gate_optimizer` in
    `compile`), the rest of the generator on `g_optimizer`: network
    slimming's criterion needs the scales to move further than the weights
    in a short run. The discriminator's gates, if any, stay as they are.

    Args:
        generator: The scale-gated generator.
        discriminator: The discriminator.
        lambda_sparsity: Weight of the L1 norm of the gates' `gamma`.
        **kwargs: `AdversarialTrainer` arguments (`teacher`, `mode`, ...).

    Raises:
        ValueError: If the generator has no `"scale"` gates or
            `lambda_sparsity < 0`.
    """

    def __init__(
        self,
        generator: keras.Model,
        discriminator: keras.Model,
        lambda_sparsity: float = 1e-4,
        **kwargs,
    ):
        kwargs.setdefault("taps", None)
        super().__init__(generator, discriminator, name="sparse_gate_trainer", **kwargs)
        self.gates = [g for g in gates_of(generator) if g.mode == "scale"]
        if not self.gates:
            raise ValueError(
                f"SparseGateTrainer needs 'scale' gates in {generator.name!r}: "
                "use tgc.pruning.add_gates(generator, 'scale')."
            )
        if lambda_sparsity < 0:
            raise ValueError(f"lambda_sparsity must be >= 0, got {lambda_sparsity}.")
        self.lambda_sparsity = float(lambda_sparsity)

    def compile(self, g_optimizer, d_optimizer, gate_optimizer=None, **kwargs):
        """`AdversarialTrainer.compile`, plus the gates' own optimizer.

        Args:
            g_optimizer: Optimizer of the generator's weights.
            d_optimizer: Optimizer of the discriminator's weights.
            gate_optimizer: Optimizer of the gates' `gamma` (an `"after"`
                optimizer group named `"gates"`); `None`: `g_optimizer`
                trains them with the weights.
            **kwargs: More `AdversarialTrainer.compile` arguments.
        """
        self._separate_gates = gate_optimizer is not None
        groups = list(kwargs.pop("groups", ()))
        if self._separate_gates:
            groups.append(
                OptimizerGroup(
                    "gates",
                    gate_optimizer,
                    variables=lambda: [gate.gamma for gate in self.gates],
                    losses=lambda step: {
                        "gates_objective": tf.add_n(list(step.g_terms.values()))
                    },
                    loss_names=["gates_objective"],
                )
            )
        super().compile(g_optimizer, d_optimizer, groups=groups, **kwargs)

    def generator_variables(self) -> list:
        variables = super().generator_variables()
        if not getattr(self, "_separate_gates", False):
            return variables
        gammas = {id(gate.gamma) for gate in self.gates}
        return [v for v in variables if id(v) not in gammas]

    def generator_loss_names(self) -> list[str]:
        return [*super().generator_loss_names(), "sparsity"]

    def generator_losses(self, step: Step) -> dict:
        terms = super().generator_losses(step)
        l1 = tf.add_n([tf.reduce_sum(tf.abs(gate.gamma)) for gate in self.gates])
        terms["sparsity"] = self.lambda_sparsity * l1
        return terms


class GlobalThreshold(keras.callbacks.Callback):
    """At the end of training, prunes the generator to a MACs budget.

    One threshold on `tgc.pruning.scale_importance` (`|gamma|`, residual
    groups sharing the mean) for every layer, found by binary search
    (`tgc.pruning.prune_to_budget`); the result is kept in `self.result`.

    Args:
        generator: The scale-gated generator (its gates are set in place).
        budget: A `training.budget.Budget`: MACs and the input shape at
            which they are counted.
        min_channels: Channels each gate keeps whatever the threshold.
        restore: Weights (`generator.get_weights()` from before training)
            that the generator takes back after the search, keeping the
            search's decisions (`tgc.pruning.restore_weights`): training
            then only ranked the channels. `None` keeps the trained weights.
    """

    def __init__(
        self,
        generator: keras.Model,
        budget,
        min_channels: int = 1,
        restore: list | None = None,
    ):
        super().__init__()
        self.generator = generator
        self.budget = budget
        self.min_channels = int(min_channels)
        self.restore = restore
        self.result = None

    def on_train_end(self, logs=None):
        self.result = tgc.pruning.prune_to_budget(
            self.generator,
            tgc.pruning.scale_importance(self.generator),
            self.budget.macs,
            self.budget.input_shape,
            self.min_channels,
        )
        if self.restore is not None:
            tgc.pruning.restore_weights(self.generator, self.restore)


class GCCTrainer(_GatedDiscriminatorMixin, AdversarialTrainer):
    """GCC's fine-tuning: selective activation and online collaborative distillation.

    Trains a (slimmed) student generator against a selective-activation
    discriminator (`patchgan_discriminator(gated="binary")`), with a teacher
    generator and the teacher's discriminator trained in the same loop.
    Each step:

    1. online teacher (`online_teacher=True`, paired mode only): its
       generator minimises GAN + pixel L1 against its discriminator;
    2. the teacher's discriminator, on the real images vs the teacher's;
    3. the student discriminator's *weights* (its gates held);
    4. the student generator: GAN + pixel L1 + `lambda_content *
       sum sqrt(MSE(f_s, f_t))` + `lambda_gram * sum sqrt(MSE(gram(f_s),
       gram(f_t)))` over the generator taps (student taps mapped by
       bias-free 1x1 convolutions, `trainer.mappers`) and the teacher
       discriminator's taps on `G_S(x)` vs on `G_T(x)`;
    5. the student discriminator's *gates* (`alpha`, straight-through),
       on `losses.selective_activation_loss`: `|Delta_S - EMA(Delta_T)|` +
       the discriminator's own loss, where `Delta` is
       `losses.adversarial_balance` of each pair. The EMA follows GCC: its
       new-value weight falls linearly from 1 to 0 over `steps`.

    Args:
        generator: The student generator.
        discriminator: The student's gated discriminator.
        teacher: The teacher generator: frozen, or trained here with
            `online_teacher=True` (then usually freshly initialised).
        teacher_discriminator: A plain discriminator for the teacher (the
            same conditioning as `discriminator`), trained here.
        mode: `"paired"` or `"unpaired"` (see `AdversarialTrainer`).
        online_teacher: Train the teacher generator in the loop.
        taps: Generator distillation taps (`AdversarialTrainer`'s `taps`).
        **kwargs: More `AdversarialTrainer` arguments.

    Raises:
        ValueError: If the discriminator has no binary gates, or an online
            teacher is asked for in unpaired mode.

    Example:

    ```python
    trainer = GCCTrainer(student, gated_d, teacher, teacher_d)
    trainer.compile(**GCCTrainer.default_optimizers(2e-4, steps=1000))
    trainer.fit(pairs, epochs=20, steps_per_epoch=50)
    ```
    """

    def __init__(
        self,
        generator: keras.Model,
        discriminator: keras.Model,
        teacher: keras.Model,
        teacher_discriminator: keras.Model,
        mode: str = "paired",
        online_teacher: bool = False,
        taps="auto",
        **kwargs,
    ):
        if online_teacher and mode != "paired":
            raise ValueError(
                "An online teacher learns from the batches' targets: it needs "
                f"mode='paired', got {mode!r}."
            )
        kwargs.setdefault("name", "gcc_trainer")
        super().__init__(
            generator,
            discriminator,
            teacher=teacher,
            mode=mode,
            taps=taps,
            mapper_bias=False,
            freeze_teacher=not online_teacher,
            **kwargs,
        )
        self.gates = gates_of(discriminator)
        if not self.gates or any(g.mode != "binary" for g in self.gates):
            raise ValueError(
                f"GCCTrainer needs a selective-activation discriminator (binary "
                f"gates); {discriminator.name!r} has "
                f"{[g.mode for g in self.gates] or 'no gates'}. Build it with "
                "patchgan_discriminator(gated='binary')."
            )
        self.online_teacher = bool(online_teacher)
        self.teacher_discriminator = teacher_discriminator
        self.teacher_d_tapped = with_taps(teacher_discriminator)
        self.teacher_balance = keras.Variable(
            0.0, trainable=False, name="teacher_balance_ema"
        )

    @staticmethod
    def default_optimizers(learning_rate: float, steps: int, gate_learning_rate=1e-4):
        """Adam (beta_1 0.5, cosine decay over `steps`) for every network.

        Returns:
            `compile` keyword arguments: `g_optimizer`, `d_optimizer`,
            `teacher_g_optimizer`, `teacher_d_optimizer` and
            `gate_optimizer` (constant `gate_learning_rate`, GCC: 1e-4).
        """

        def adam(rate):
            schedule = keras.optimizers.schedules.CosineDecay(rate, max(1, steps))
            return keras.optimizers.Adam(schedule, beta_1=0.5)

        return {
            "g_optimizer": adam(learning_rate),
            "d_optimizer": adam(learning_rate),
            "teacher_g_optimizer": adam(learning_rate),
            "teacher_d_optimizer": adam(learning_rate),
            "gate_optimizer": keras.optimizers.Adam(gate_learning_rate),
            "steps": steps,
        }

    def compile(
        self,
        g_optimizer,
        d_optimizer,
        teacher_d_optimizer,
        gate_optimizer,
        teacher_g_optimizer=None,
        gan_loss: str = "lsgan",
        lambda_gan: float = 1.0,
        lambda_recon: float | None = None,
        lambda_content: float | None = None,
        lambda_gram: float | None = None,
        steps: int = 1,
        **kwargs,
    ):
        """Sets the five optimizers and the loss weights.

        Args:
            g_optimizer: The student generator and its mappers.
            d_optimizer: The student discriminator's weights.
            teacher_d_optimizer: The teacher's discriminator.
            gate_optimizer: The student discriminator's gates (GCC: Adam
                1e-4).
            teacher_g_optimizer: The online teacher generator (required
                with `online_teacher=True`, unused otherwise).
            gan_loss: `"lsgan"`, `"hinge"` or `"vanilla"` (a name: the gate
                loss needs its discriminator's fake term).
            lambda_gan: Weight of the adversarial terms.
            lambda_recon: Pixel L1 weight; default 100 paired, 10 unpaired.
            lambda_content: Content distillation weight; default 50 paired
                (GCC's pix2pix), 0.01 unpaired (its CycleGAN).
            lambda_gram: Gram distillation weight; default 1e4 paired, 10
                unpaired.
            steps: Steps of the run: the teacher-balance EMA's schedule.
            **kwargs: More `AdversarialTrainer.compile` arguments
                (`jit_compile`, ...).

        Raises:
            ValueError: On an unknown GAN loss name, negative weights or a
                missing teacher generator optimizer.
        """
        if not isinstance(gan_loss, str):
            raise ValueError(
                f"GCCTrainer takes a GAN loss name (lsgan, hinge, vanilla), got "
                f"{gan_loss!r}."
            )
        losses.gan_losses(gan_loss)
        if self.online_teacher and teacher_g_optimizer is None:
            raise ValueError("online_teacher=True needs a teacher_g_optimizer.")
        self.gan_loss_name = gan_loss
        self.lambda_content = (
            _CONTENT[self.mode] if lambda_content is None else lambda_content
        )
        self.lambda_gram = _GRAM[self.mode] if lambda_gram is None else lambda_gram
        if self.lambda_content < 0 or self.lambda_gram < 0:
            raise ValueError(
                f"lambda_content and lambda_gram must be >= 0, got "
                f"{self.lambda_content} and {self.lambda_gram}."
            )
        self.steps = max(1, int(steps))
        groups = []
        if self.online_teacher:
            groups.append(
                OptimizerGroup(
                    "teacher_g",
                    teacher_g_optimizer,
                    variables=lambda: self.teacher.trainable_variables,
                    losses=self._teacher_generator_losses,
                    loss_names=["teacher_gan", "teacher_recon"],
                    when="before",
                )
            )
        groups += [
            OptimizerGroup(
                "teacher_d",
                teacher_d_optimizer,
                variables=lambda: self.teacher_discriminator.trainable_variables,
                losses=self._teacher_discriminator_losses,
                loss_names=["teacher_d_gan"],
                when="before",
            ),
            OptimizerGroup(
                "gates",
                gate_optimizer,
                variables=lambda: [gate.alpha for gate in self.gates],
                losses=self._gate_losses,
                loss_names=["gate_coordination", "gate_capacity"],
            ),
        ]
        super().compile(
            g_optimizer,
            d_optimizer,
            gan_loss=gan_loss,
            lambda_gan=lambda_gan,
            lambda_recon=lambda_recon,
            lambda_distill=self.lambda_content,
            distill_distance="rmse",
            groups=groups,
            **kwargs,
        )

    # The teacher pair ---------------------------------------------------------

    def prepare_step(self, x, y) -> Step:
        if not self.online_teacher:
            return super().prepare_step(x, y)
        if y is None:
            raise ValueError("An online teacher needs (input, target) batches.")
        seed = tf.stack([tf.cast(self.optimizer.iterations, tf.int32), 0])
        return Step(x=x, real=y, target=y, seed=seed)

    def _teacher_generator_losses(self, step: Step) -> dict:
        """Online teacher generator: GAN + pixel L1; fills the step's teacher."""
        if self.teacher_tapped is not None:
            image, *features = self.teacher_tapped(step.x, training=True)
        else:
            image, features = self.teacher(step.x, training=True), []
        step.teacher_image = tf.stop_gradient(image)
        step.teacher_features = [tf.stop_gradient(f) for f in features]
        logits = self.teacher_discriminator(
            self.discriminator_input(step.x, image), training=True
        )
        return {
            "teacher_gan": self.lambda_gan * self.gan_loss.generator(logits),
            "teacher_recon": self.lambda_recon * losses.l1_loss(image, step.target),
        }

    def _teacher_discriminator_losses(self, step: Step) -> dict:
        real = self.discriminator_input(step.x, step.real)
        fake = self.discriminator_input(step.x, step.teacher_image)
        return {
            "teacher_d_gan": self.gan_loss.discriminator(
                self.teacher_discriminator(real, training=True),
                self.teacher_discriminator(fake, training=True),
            )
        }

    # The student generator ----------------------------------------------------

    def generator_loss_names(self) -> list[str]:
        names = ["gan"]
        if self.lambda_recon:
            names.append("recon")
        if self.lambda_content:
            names.append("content")
        if self.lambda_gram:
            names.append("gram")
        return names

    def generator_losses(self, step: Step) -> dict:
        logits = self.discriminator(
            self.discriminator_input(step.x, step.fake), training=True
        )
        terms = {"gan": self.lambda_gan * self.gan_loss.generator(logits)}
        if self.lambda_recon:
            terms["recon"] = self.lambda_recon * losses.l1_loss(step.fake, step.target)
        # The teacher's discriminator on the student's and the teacher's
        # images in one call; the teacher half carries no gradient.
        batch = tf.shape(step.x)[0]
        both = tf.concat(
            [
                self.discriminator_input(step.x, step.fake),
                self.discriminator_input(step.x, step.teacher_image),
            ],
            axis=0,
        )
        teacher_logits, *d_features = self.teacher_d_tapped(both, training=True)
        step.extras["teacher_balance"] = tf.stop_gradient(
            losses.adversarial_balance(self.gan_loss_name, teacher_logits[batch:])
        )
        students = [
            m(f) for m, f in zip(self.mappers, step.student_features, strict=True)
        ]
        teachers = list(step.teacher_features)
        students += [f[:batch] for f in d_features]
        teachers += [tf.stop_gradient(f[batch:]) for f in d_features]
        if self.lambda_content:
            terms["content"] = self.lambda_content * losses.feature_distillation_loss(
                students, teachers, None, "rmse"
            )
        if self.lambda_gram:
            terms["gram"] = self.lambda_gram * losses.gram_loss(
                students, teachers, None, "rmse"
            )
        return terms

    # The student discriminator's gates ---------------------------------------

    def _teacher_balance_ema(self, balance):
        """Updates and returns the EMA of the teacher pair's balance."""
        step = tf.cast(self.optimizer.iterations, tf.float32)
        weight = tf.maximum(1.0 - step / float(self.steps), 0.0)
        weight = tf.where(step <= 1.0, 1.0, weight)
        ema = weight * balance + (1.0 - weight) * self.teacher_balance
        self.teacher_balance.assign(ema)
        return ema

    def _gate_losses(self, step: Step) -> dict:
        real = self.discriminator(
            self.discriminator_input(step.x, step.real), training=True
        )
        fake = self.discriminator(
            self.discriminator_input(step.x, tf.stop_gradient(step.fake)),
            training=True,
        )
        ema = self._teacher_balance_ema(step.extras["teacher_balance"])
        terms = losses.selective_activation_loss(self.gan_loss_name, real, fake, ema)
        return {
            "gate_coordination": terms["coordination"],
            "gate_capacity": terms["capacity"],
        }


class SlimDiscriminator(keras.callbacks.Callback):
    """At the end of training, slims a student's gated discriminator.

    Replaces `student.discriminator` by `tgc.slim` of it and records, in
    `student.state`: `"d_macs_before"` and `"d_macs"` (before / after) at
    `input_shape` (the image size, with the discriminator's channels) and
    `"d_live_fraction"` `{conv layer: kept / total output channels}`.

    Args:
        student: The `training.methods.Student` being fine-tuned.
        input_shape: `(H, W, C)` of the generator's input at which MACs
            are counted.
    """

    def __init__(self, student: base.Student, input_shape):
        super().__init__()
        self.student = student
        self.input_shape = tuple(input_shape)

    def on_train_end(self, logs=None):
        gated = self.student.discriminator
        if not gates_of(gated):
            return
        shape = (*self.input_shape[:-1], gated.input_shape[-1])
        self.student.state["d_live_fraction"] = {
            layer.name: layer.kept / layer.total for layer in tgc.live_channels(gated)
        }
        slimmed = tgc.slim(gated)
        self.student.state["d_macs_before"] = tgc.profile(gated, shape).macs
        self.student.state["d_macs"] = tgc.profile(slimmed, shape).macs
        self.student.discriminator = slimmed


@register
class GCC(base.Method):
    """Global-threshold pruning, selective-activation D, online distillation."""

    name = "gcc"

    @dataclasses.dataclass(frozen=True)
    class Options:
        """GCC's knobs.

        Attributes:
            inherit: The pruned generator keeps its weights (and is
                refitted to the teacher); `False` re-initialises it.
            teacher_weights: With `inherit`, the kept channels take the
                teacher's weights back after the threshold search (the
                L1-sparse pre-training only ranks them, and the
                least-squares refit fits convolutions between the
                teacher's norms); `False` keeps the pre-trained weights
                (the paper, whose teacher is trained in the same run).
            online_teacher: Train a fresh teacher generator of the given
                teacher's architecture in the fine-tuning loop instead of
                distilling the given one (GCC from scratch; paired only).
            search_share: Fraction of the steps spent on the L1-sparse
                pre-training of the generator's gates (default 0.1: with
                `teacher_weights` the pre-training only ranks channels, so
                the fine-tuning gets the steps).
            min_channels: Channels every gate keeps whatever the global
                threshold (all of a smaller layer's): a floor against a
                layer of small scales being cut to nothing. With a floor of
                1 the vintage teacher's last upsampling layer kept 1 of 64
                channels at 1/20; 16 scored 0.57 dB and 22 FD better at
                proxy scale (README).
            lambda_sparsity: Weight of `sum |gamma|` in the pre-training.
            sparsity_learning_rate: Adam learning rate of the gates'
                `gamma` in the pre-training.
            gate_learning_rate: Adam learning rate of the discriminator's
                gates (GCC: 1e-4, at which a gate moves at most 1e-4 a step
                and cannot close, from 1 to below 0.5, in a short run;
                default 0.01, a deviation).
            lambda_recon: Pixel L1; `None`: 100 paired, 10 unpaired.
            lambda_content: Content distillation; `None`: 5 paired (a
                tenth of the paper's 50, see `_METHOD_CONTENT`), 0.01
                unpaired.
            lambda_gram: Gram distillation; `None`: 1e3 paired (the
                paper's 1e4 / 10), 10 unpaired.
            lambda_gan: The adversarial terms.
            gan_loss: `"lsgan"`, `"hinge"` or `"vanilla"`.
        """

        inherit: bool = True
        teacher_weights: bool = True
        online_teacher: bool = False
        search_share: float = 0.1
        min_channels: int = 16
        lambda_sparsity: float = 1e-4
        sparsity_learning_rate: float = 1e-2
        gate_learning_rate: float = 1e-2
        lambda_recon: float | None = None
        lambda_content: float | None = None
        lambda_gram: float | None = None
        lambda_gan: float = 1.0
        gan_loss: str = "lsgan"

        def __post_init__(self):
            if not 0.0 < self.search_share < 1.0:
                raise ValueError(
                    "gcc option search_share must be in (0, 1), got "
                    f"{self.search_share}."
                )
            if self.min_channels < 1:
                raise ValueError(
                    f"gcc option min_channels must be >= 1, got {self.min_channels}."
                )
            for key in ("sparsity_learning_rate", "gate_learning_rate"):
                if getattr(self, key) <= 0:
                    raise ValueError(
                        f"gcc option {key} must be > 0, got {getattr(self, key)}."
                    )
            for key in (
                "lambda_sparsity",
                "lambda_recon",
                "lambda_content",
                "lambda_gram",
                "lambda_gan",
            ):
                value = getattr(self, key)
                if value is not None and value < 0:
                    raise ValueError(f"gcc option {key} must be >= 0, got {value}.")
            losses.gan_losses(self.gan_loss)

    def smallest_macs(self, teacher, input_shape) -> int:
        """MACs of the teacher with `min_channels` left after every norm."""
        gated = tgc.pruning.add_gates(teacher, "scale")
        for gate in tgc.surgery.gate_layers(gated).values():
            gate.set_keep(np.arange(gate.channels) < self.options.min_channels)
        return tgc.cost.gate_macs(gated, input_shape)

    def split_steps(self, steps: int) -> dict[str, int]:
        # At least one search step: the threshold search ends that phase.
        search = max(1, min(round(self.options.search_share * steps), steps - 1))
        return {"search": search, "finetune": steps - search}

    def build(self, teacher, setup):
        channels = teacher.output_shape[-1]
        generator = tgc.pruning.add_gates(teacher, "scale")
        generator.name = f"{teacher.name}_gcc"
        state = {"teacher_discriminator": base.discriminator(setup, channels)}
        if self.options.inherit and self.options.teacher_weights:
            state["teacher_weights"] = generator.get_weights()
        return base.Student(
            generator, base.discriminator(setup, channels, gated="binary"), state=state
        )

    def search_trainer(self, student, teacher, setup, steps):
        options = self.options
        trainer = SparseGateTrainer(
            student.generator,
            student.discriminator,
            lambda_sparsity=options.lambda_sparsity,
            teacher=teacher if setup.mode == "unpaired" else None,
            mode=setup.mode,
        )
        trainer.compile(
            g_optimizer=base.adam(setup, steps),
            d_optimizer=base.adam(setup, steps),
            gate_optimizer=keras.optimizers.Adam(options.sparsity_learning_rate),
            gan_loss=options.gan_loss,
            lambda_gan=options.lambda_gan,
            lambda_recon=options.lambda_recon,
            jit_compile=setup.jit_compile,
        )
        return trainer

    def search_callbacks(self, student, setup, steps):
        search = GlobalThreshold(
            student.generator,
            setup.budget,
            self.options.min_channels,
            restore=student.state.get("teacher_weights"),
        )
        student.state["threshold_search"] = search
        return [search]

    def slim(self, student):
        generator = student.generator
        kept = tgc.surgery.kept_channels(generator) if self.options.inherit else None
        slimmed = tgc.slim(generator)
        if not self.options.inherit:
            slimmed = reinitialised(slimmed, slimmed.name)
        return dataclasses.replace(
            student, generator=slimmed, kept=kept, inherits_teacher=self.options.inherit
        )

    def _teacher(self, student, teacher, setup):
        """The distillation teacher: the given one, or a fresh online one."""
        if not self.options.online_teacher:
            return teacher
        online = student.state.get("online_teacher")
        if online is None:
            online = reinitialised(teacher, f"{teacher.name}_online")
            student.state["online_teacher"] = online
        return online

    def finetune_trainer(self, student, teacher, setup, steps):
        options = self.options
        teacher_d = student.state.get("teacher_discriminator")
        if teacher_d is None:  # resumed from a checkpoint without state
            teacher_d = base.discriminator(setup, teacher.output_shape[-1])
            student.state["teacher_discriminator"] = teacher_d
        trainer = GCCTrainer(
            student.generator,
            student.discriminator,
            self._teacher(student, teacher, setup),
            teacher_d,
            mode=setup.mode,
            online_teacher=options.online_teacher,
        )
        optimizers = GCCTrainer.default_optimizers(
            setup.learning_rate, steps, options.gate_learning_rate
        )
        trainer.compile(
            **optimizers,
            gan_loss=options.gan_loss,
            lambda_gan=options.lambda_gan,
            lambda_recon=options.lambda_recon,
            lambda_content=(
                _METHOD_CONTENT[setup.mode]
                if options.lambda_content is None
                else options.lambda_content
            ),
            lambda_gram=(
                _METHOD_GRAM[setup.mode]
                if options.lambda_gram is None
                else options.lambda_gram
            ),
            jit_compile=setup.jit_compile,
        )
        return trainer

    def finetune_callbacks(self, student, setup, steps):
        return [SlimDiscriminator(student, setup.budget.input_shape)]


__all__ = [
    "GCC",
    "GCCTrainer",
    "GlobalThreshold",
    "SlimDiscriminator",
    "SparseGateTrainer",
]
