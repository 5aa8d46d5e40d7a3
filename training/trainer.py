"""Adversarial trainers: the base of every compression method, and CycleGAN.

`AdversarialTrainer` trains a student generator against a discriminator,
optionally distilling a frozen teacher, in one of two modes:

- `"paired"` (pix2pix): batches are `(x, y)`; the discriminator is
  conditional and sees `concat(x, y)` vs `concat(x, G(x))`; the
  reconstruction target is the real `y`.
- `"unpaired"` (GAN Compression's pseudo-pairs): batches are `x` or
  `(x, y_other)`; the target is `teacher(x)`; the discriminator is
  unconditional and sees real target-domain images `y_other` when given,
  else the teacher's outputs.

Each training step is the pix2pix order: one generator forward pass, a
discriminator update on the detached fakes, then a generator update against
the updated discriminator. Subclasses (the methods in `training.methods`)
customise it through small hooks: `generator_losses`/`discriminator_losses`
(and their `*_loss_names`), `generator_variables`/`discriminator_variables`,
`prepare_step` and `after_step` (per-step gate updates), and two for
pruning agents: `gate_masks` computes gate masks inside the step (so that
gradients reach whatever computed them) and `drive_gates` makes the gates
use them. More networks train in the same step through `OptimizerGroup`s
given to `compile`: an online teacher before the student's updates, or
agents after them, differentiated through the whole step.

`CycleGANTrainer` trains CycleGAN teachers: two generators, two
discriminators, LSGAN, cycle and identity losses, image pools.

Both compile with one optimizer per network role and `jit_compile=True` by
default, and run unchanged under `tf.distribute` strategies: every loss is a
per-replica batch mean divided by the number of replicas, so the summed
gradients are those of the global batch mean.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Mapping, Sequence

import keras
import tensorflow as tf

import keras_layers
from tfgancompress.models import tap_names, with_taps
from training import losses
from training.distribute import MultiWorkerFit
from training.image_pool import ImagePool

MODES = ("paired", "unpaired")
WHEN = ("before", "generator", "after")


@dataclasses.dataclass
class Step:
    """Tensors of one training step, handed to the loss hooks.

    Attributes:
        x: Input images `(B, H, W, C_in)`.
        real: Images the discriminator treats as real (the paired target,
            the other domain's images or the teacher's outputs).
        target: Reconstruction target of the student (`y` or `teacher(x)`).
        fake: The student's outputs (set once the generator has run).
        student_features: The student's distillation taps (maybe empty).
        teacher_image: `teacher(x)` (None without a teacher).
        teacher_features: The teacher's distillation taps (maybe empty).
        seed: A `(2,)` int32 seed for stateless randomness in this step.
        masks: `{ChannelGate: mask tensor}` from `gate_masks` (maybe empty).
        g_terms: The generator's loss terms, once computed.
        d_terms: The discriminator's loss terms, once computed.
        extras: Tensors a subclass or an optimizer group passes on within
            the step (e.g. an online teacher's outputs).
    """

    x: tf.Tensor
    real: tf.Tensor
    target: tf.Tensor
    fake: tf.Tensor | None = None
    student_features: list = dataclasses.field(default_factory=list)
    teacher_image: tf.Tensor | None = None
    teacher_features: list = dataclasses.field(default_factory=list)
    seed: tf.Tensor | None = None
    masks: dict = dataclasses.field(default_factory=dict)
    g_terms: dict = dataclasses.field(default_factory=dict)
    d_terms: dict = dataclasses.field(default_factory=dict)
    extras: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class OptimizerGroup:
    """More variables trained in the same step, by their own optimizer.

    Attributes:
        name: Unique name; the group's total loss is tracked as
            `<name>_loss`, next to each of its terms.
        optimizer: The group's optimizer.
        variables: Returns the variables it updates (disjoint from the
            generator's, the discriminator's and other groups').
        losses: Maps the step's `Step` to `{term name: float32 scalar}`;
            their sum is minimised.
        loss_names: The names of those terms.
        when: `"before"`: in a tape of its own, after `prepare_step` and
            before the student's updates (an online teacher G and D;
            groups run in the order given, passing tensors on in
            `step.extras`). `"after"`: after the generator update, its loss
            differentiated through everything the step computed in one
            tape, from `gate_masks` through both networks' forward passes
            and losses (`step.g_terms`, `step.d_terms`): pruning agents that
            drive the gates. `"generator"`: the variables minimise the
            generator's loss, their gradients taken in the generator's own
            backward pass (`losses` is not used): parameters of the
            generator that want another optimizer (GAN Slimming's SGD on
            the scale gates).

    Example:

    ```python
    agent = keras.Sequential([keras.layers.Dense(16)])
    group = OptimizerGroup(
        "agent",
        keras.optimizers.Adam(1e-3),
        variables=lambda: agent.trainable_variables,
        losses=lambda step: {"agent_gan": step.g_terms["gan"]},
        loss_names=["agent_gan"],
    )
    trainer.compile(g_optimizer, d_optimizer, groups=[group])
    ```
    """

    name: str
    optimizer: keras.optimizers.Optimizer
    variables: Callable[[], list]
    losses: Callable[[Step], dict]
    loss_names: Sequence[str]
    when: str = "after"

    def __post_init__(self):
        if self.when not in WHEN:
            raise ValueError(
                f"OptimizerGroup {self.name!r}: when must be one of {WHEN}, got "
                f"{self.when!r}."
            )
        self.loss_names = list(self.loss_names)


def _replicas() -> int:
    return tf.distribute.get_strategy().num_replicas_in_sync


def _step_seed(iterations, salt: int) -> tf.Tensor:
    replica = tf.distribute.get_replica_context()
    replica_id = 0 if replica is None else replica.replica_id_in_sync_group
    step = tf.cast(iterations, tf.int32)
    return tf.stack([step, tf.cast(replica_id, tf.int32) * 7919 + salt])


def _unpack(data, what: str):
    """`(x, y_or_None)` from a batch given as `x`, `(x,)`, `(x, y)` or
    Keras' `(x, y, None)` (sample weights are not supported)."""
    if isinstance(data, (list, tuple)):
        if len(data) == 3 and data[2] is not None:
            raise ValueError(f"{what} does not support sample weights.")
        if len(data) not in (1, 2, 3):
            raise ValueError(
                f"{what} expects batches of `x` or `(x, y)`, got a tuple of "
                f"{len(data)} elements."
            )
        x, y = data[0], (data[1] if len(data) > 1 else None)
    else:
        x, y = data, None
    for name, tensor in (("x", x), ("y", y)):
        if tensor is None:
            continue
        if isinstance(tensor, dict) or not tf.as_dtype(tensor.dtype).is_floating:
            raise ValueError(
                f"{what} expects float images in [-1, 1]; batch element {name} "
                f"is {getattr(tensor, 'dtype', type(tensor))}."
            )
        if len(tensor.shape) != 4:
            raise ValueError(
                f"{what} expects NHWC image batches; batch element {name} has "
                f"shape {tuple(tensor.shape)}."
            )
    return x, y


def _check_images(a, b, what: str) -> None:
    """Raise unless two image batches agree in (H, W, C) where known."""
    a_shape, b_shape = tuple(a.shape[1:]), tuple(b.shape[1:])
    if len(a_shape) != len(b_shape) or any(
        i is not None and j is not None and i != j
        for i, j in zip(a_shape, b_shape, strict=True)
    ):
        raise ValueError(
            f"{what}: image shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}."
        )


def _channels(model, what: str) -> int | None:
    shape = getattr(model, "input_shape", None)
    if isinstance(shape, list):
        raise ValueError(f"The {what} must have one image input, got {shape}.")
    return None if shape is None else shape[-1]


def _apply(optimizer, loss, tape, variables) -> None:
    grads = tape.gradient(loss, variables)
    optimizer.apply_gradients(zip(grads, variables, strict=True))


def _apply_group(group: OptimizerGroup, loss, tape) -> None:
    variables = list(group.variables())
    grads = tape.gradient(loss, variables)
    missing = [v.path for v, g in zip(variables, grads, strict=True) if g is None]
    if missing:
        raise ValueError(
            f"Optimizer group {group.name!r}: its loss does not depend on "
            f"{missing}. Compute what they drive inside the step (gate_masks, "
            "or the group's losses)."
        )
    group.optimizer.apply_gradients(zip(grads, variables, strict=True))


def _paused(tape):
    """A context in which `tape` (if any) does not record."""
    return tape.stop_recording() if tape is not None else contextlib.nullcontext()


def _total(terms: dict):
    return tf.add_n([tf.cast(v, tf.float32) for v in terms.values()])


def _pool_shape(discriminator, image_size) -> tuple:
    """`(H, W, C)` of the discriminator's input, for an image pool."""
    shape = tuple(getattr(discriminator, "input_shape", (None, None, None, None)))
    size = tuple(image_size) if image_size is not None else shape[1:3]
    full = (*size, shape[-1])
    if len(full) != 3 or not all(isinstance(d, int) for d in full):
        raise ValueError(
            "An image pool needs the image size to allocate its buffer: pass "
            "image_size=(height, width) or build the discriminator with a known "
            f"input_shape (its input shape is {shape}); or set image_pool_size=0."
        )
    return full


class _TrackedModel(MultiWorkerFit, keras.Model):
    """Metric trackers by name, created in `compile()` (shared by trainers).

    `fit` runs under every `tf.distribute` strategy, multi-worker too
    (`training.distribute.MultiWorkerFit`).
    """

    def _make_trackers(self, names: Sequence[str]) -> None:
        if len(set(names)) != len(names):
            raise ValueError(f"Loss names must be unique, got {list(names)}.")
        with self.distribute_strategy.scope():
            self._trackers = {name: keras.metrics.Mean(name=name) for name in names}
            self._eval_tracker = keras.metrics.Mean(name=self._eval_name)

    @property
    def metrics(self):
        trackers = getattr(self, "_trackers", None)
        if trackers is None:
            return []
        return [*trackers.values(), self._eval_tracker]

    def _update(self, terms: dict, expected: Sequence[str], role: str) -> None:
        if sorted(terms) != sorted(expected):
            raise ValueError(
                f"The {role} loss terms {sorted(terms)} differ from the names "
                f"declared for tracking {sorted(expected)}: override "
                f"{role}_loss_names() to match."
            )
        for name, value in terms.items():
            self._trackers[name].update_state(value)

    def _results(self) -> dict:
        return {name: tracker.result() for name, tracker in self._trackers.items()}


class AdversarialTrainer(_TrackedModel):
    """Trains a student generator adversarially, with optional distillation.

    Args:
        generator: The student generator (a Keras model, images -> images).
        discriminator: The discriminator; conditional (`C_in + C_out` input
            channels) in `"paired"` mode, unconditional (`C_out`) otherwise.
        teacher: An optional teacher generator; it is frozen
            (`teacher.trainable = False`). Required in `"unpaired"` mode.
        mode: `"paired"` or `"unpaired"` (see the module docstring).
        taps: Feature distillation taps: `"auto"` uses `tap_names()` of the
            student and the teacher when a teacher is given (none without
            one); `None` disables distillation; or a pair
            `(student_layer_names, teacher_layer_names)` of equal lengths.
            Each student tap gets a 1x1 convolution mapping it to the width of
            its teacher tap (`trainer.mappers`), trained with the generator.
        mapper_bias: Whether the 1x1 mappers have a bias (GAN Compression:
            yes, GCC: no).
        image_pool_size: Size of the history buffer of fakes shown to the
            discriminator (CycleGAN: 50); 0 disables it.
        image_size: `(H, W)` of the training images, needed by the image
            pool when the discriminator's input size is not fixed.
        freeze_teacher: Freeze the teacher (`trainable = False`). `False`
            for an online teacher trained in the same loop by an
            `OptimizerGroup` (GCC); the student still sees its outputs
            through `stop_gradient`.
        name: Model name.

    Raises:
        ValueError: On an unknown mode, a missing teacher in `"unpaired"`
            mode, a discriminator whose input channels do not fit the mode,
            bad taps, or an image pool without a known image size.

    Example:

    ```python
    from tfgancompress.models import patchgan_discriminator, resnet_generator

    trainer = AdversarialTrainer(
        resnet_generator(ngf=16, n_blocks=6),
        patchgan_discriminator(ndf=32),
        teacher=tgc.models.pretrained("vintage"),
        mode="unpaired",
    )
    trainer.compile(
        g_optimizer=keras.optimizers.Adam(2e-4, beta_1=0.5),
        d_optimizer=keras.optimizers.Adam(2e-4, beta_1=0.5),
        gan_loss="lsgan",
    )
    trainer.fit(photos.batch(4, drop_remainder=True), epochs=10)
    student = trainer.student
    ```
    """

    _eval_name = "l1"

    def __init__(
        self,
        generator: keras.Model,
        discriminator: keras.Model,
        teacher: keras.Model | None = None,
        mode: str = "paired",
        taps="auto",
        mapper_bias: bool = True,
        image_pool_size: int = 0,
        image_size: tuple | None = None,
        freeze_teacher: bool = True,
        name: str = "adversarial_trainer",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
        if mode == "unpaired" and teacher is None:
            raise ValueError(
                "mode='unpaired' trains on pseudo-pairs (x, teacher(x)): give a "
                "teacher generator."
            )
        self.mode = mode
        self.generator = generator
        self.discriminator = discriminator
        self.teacher = teacher
        if teacher is not None and freeze_teacher:
            teacher.trainable = False
        self._check_discriminator()
        student_taps, teacher_taps = self._resolve_taps(taps)
        self.student_tapped = (
            with_taps(generator, student_taps) if student_taps else None
        )
        self.teacher_tapped = with_taps(teacher, teacher_taps) if teacher_taps else None
        self.mappers = self._build_mappers(student_taps, teacher_taps, mapper_bias)
        self.image_pool = (
            ImagePool(
                image_pool_size,
                _pool_shape(discriminator, image_size),
                name="image_pool",
            )
            if image_pool_size
            else None
        )
        self.built = True

    @property
    def student(self) -> keras.Model:
        """The student generator (alias of `generator`)."""
        return self.generator

    def _check_discriminator(self) -> None:
        in_c = _channels(self.generator, "generator")
        out_c = self.generator.output_shape[-1]
        d_c = _channels(self.discriminator, "discriminator")
        if self.mode == "paired":
            expected = None if in_c is None else in_c + out_c
            how = "conditional, input concat(x, y)"
        else:
            expected, how = out_c, "unconditional"
        if expected is not None and d_c is not None and d_c != expected:
            raise ValueError(
                f"mode={self.mode!r} needs a {how} discriminator with "
                f"{expected} input channels; {self.discriminator.name!r} takes "
                f"{d_c} (patchgan_discriminator(conditional="
                f"{self.mode == 'paired'}) builds one)."
            )

    def _resolve_taps(self, taps) -> tuple[list, list]:
        if taps is None:
            return [], []
        if isinstance(taps, str):
            if taps != "auto":
                raise ValueError(f"taps must be 'auto', None or a pair, got {taps!r}.")
            if self.teacher is None:
                return [], []
            try:
                return tap_names(self.generator), tap_names(self.teacher)
            except ValueError as error:
                raise ValueError(
                    f"taps='auto' could not find distillation taps ({error}) Pass "
                    "taps=(student_layer_names, teacher_layer_names) or taps=None."
                ) from error
        if self.teacher is None:
            raise ValueError("Distillation taps need a teacher generator.")
        if len(taps) != 2 or len(taps[0]) != len(taps[1]) or not taps[0]:
            raise ValueError(
                "taps must be a pair (student_layer_names, teacher_layer_names) of "
                f"equal, non-zero lengths, got {taps!r}."
            )
        return list(taps[0]), list(taps[1])

    def _build_mappers(self, student_taps, teacher_taps, bias: bool) -> list:
        mappers = []
        for i, (s_name, t_name) in enumerate(
            zip(student_taps, teacher_taps, strict=True)
        ):
            s_shape = self.generator.get_layer(s_name).output.shape
            t_shape = self.teacher.get_layer(t_name).output.shape
            if any(
                a is not None and b is not None and a != b
                for a, b in zip(s_shape[1:3], t_shape[1:3], strict=True)
            ):
                raise ValueError(
                    f"Distillation tap {i}: student {s_name!r} {tuple(s_shape)} and "
                    f"teacher {t_name!r} {tuple(t_shape)} differ in spatial size."
                )
            mapper = keras.layers.Conv2D(
                t_shape[-1], 1, use_bias=bias, name=f"mapper{i}_{s_name}"
            )
            mapper.build((None, None, None, s_shape[-1]))
            mappers.append(mapper)
        return mappers

    def compile(
        self,
        g_optimizer: keras.optimizers.Optimizer,
        d_optimizer: keras.optimizers.Optimizer,
        gan_loss: str | losses.GanLoss = "lsgan",
        lambda_gan: float = 1.0,
        lambda_recon: float | None = None,
        lambda_distill: float | None = None,
        distill_distance: str = "mse",
        jit_compile: bool = True,
        groups: Sequence[OptimizerGroup] = (),
        **kwargs,
    ):
        """Sets the optimizers, losses and weights of the loss terms.

        Call it inside the distribution strategy's scope, if any.

        Args:
            g_optimizer: Optimizer of the generator and the mappers (becomes
                `trainer.optimizer`; its `iterations` count training steps).
            d_optimizer: Optimizer of the discriminator.
            gan_loss: `"lsgan"`, `"hinge"`, `"vanilla"` or a
                `losses.GanLoss` pair of functions.
            lambda_gan: Weight of the generator's adversarial term.
            lambda_recon: Weight of the L1 reconstruction term; defaults to
                100 in `"paired"` mode (pix2pix) and 10 in `"unpaired"`
                mode (GAN Compression's CycleGAN setting). 0 disables it.
            lambda_distill: Weight of the feature distillation term;
                defaults to 1 (paired) / 0.01 (unpaired), as in GAN
                Compression. Unused without taps.
            distill_distance: `"mse"` (GAN Compression), `"rmse"` (GCC) or
                `"l1"`.
            jit_compile: Compile each step with XLA.
            groups: More `OptimizerGroup`s trained in the same step
                (pruning agents, an online teacher).
            **kwargs: More `keras.Model.compile` arguments (e.g.
                `steps_per_execution`, `run_eagerly`).

        Raises:
            ValueError: On an unknown GAN loss or distance, negative
                weights, or groups with clashing names or shared variables.
        """
        self.gan_loss = (
            gan_loss
            if isinstance(gan_loss, losses.GanLoss)
            else losses.gan_losses(gan_loss)
        )
        paired = self.mode == "paired"
        self.lambda_gan = float(lambda_gan)
        self.lambda_recon = float(
            (100.0 if paired else 10.0) if lambda_recon is None else lambda_recon
        )
        self.lambda_distill = float(
            (1.0 if paired else 0.01) if lambda_distill is None else lambda_distill
        )
        for key in ("lambda_gan", "lambda_recon", "lambda_distill"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key} must be >= 0, got {getattr(self, key)}.")
        if distill_distance not in losses.DISTANCES:
            raise ValueError(
                f"distill_distance must be one of {losses.DISTANCES}, got "
                f"{distill_distance!r}."
            )
        self.distill_distance = distill_distance
        super().compile(optimizer=g_optimizer, jit_compile=jit_compile, **kwargs)
        self.d_optimizer = d_optimizer
        self._set_groups(groups)
        with self.distribute_strategy.scope():
            if not self.optimizer.built:
                self.optimizer.build(self.generator_variables())
            if not d_optimizer.built:
                d_optimizer.build(self.discriminator_variables())
            for group in self.groups:
                if not group.optimizer.built:
                    group.optimizer.build(group.variables())
        group_names = [
            name
            for group in self.groups
            if group.when != "generator"
            for name in (f"{group.name}_loss", *group.loss_names)
        ]
        self._make_trackers(
            ["g_loss", *self.generator_loss_names(), "d_loss"]
            + self.discriminator_loss_names()
            + group_names
        )

    def _set_groups(self, groups: Sequence[OptimizerGroup]) -> None:
        """Checks the groups' names and variables; tracks their optimizers."""
        for group in groups:
            if not group.variables():
                raise ValueError(f"Optimizer group {group.name!r} has no variables.")
        owners = {}
        roles = [
            ("the generator", self.generator_variables()),
            ("the discriminator", self.discriminator_variables()),
            *((f"optimizer group {g.name!r}", g.variables()) for g in groups),
        ]
        for role, variables in roles:
            for variable in variables:
                owner = owners.setdefault(id(variable), role)
                if owner != role:
                    raise ValueError(
                        f"Variable {variable.path!r} is updated by both {owner} "
                        f"and {role}: give each variable to one optimizer."
                    )
        names = [group.name for group in groups]
        if len(set(names)) != len(names):
            raise ValueError(f"Optimizer group names must be unique, got {names}.")
        self.groups = tuple(groups)
        # Keras saves optimizers it finds in attributes (BackupAndRestore).
        self.group_optimizers = {g.name: g.optimizer for g in groups}

    @property
    def g_optimizer(self) -> keras.optimizers.Optimizer:
        """The generator's optimizer (the same object as `optimizer`)."""
        return self.optimizer

    # Hooks for subclasses -------------------------------------------------

    def generator_variables(self) -> list:
        """Variables the generator step updates: student and mappers."""
        mapped = [v for mapper in self.mappers for v in mapper.trainable_variables]
        return [*self.generator.trainable_variables, *mapped]

    def discriminator_variables(self) -> list:
        """Variables the discriminator step updates."""
        return list(self.discriminator.trainable_variables)

    def generator_loss_names(self) -> list[str]:
        """Names of the terms `generator_losses` returns (one tracker each)."""
        names = ["gan"]
        if self.lambda_recon:
            names.append("recon")
        if self.mappers and self.lambda_distill:
            names.append("distill")
        return names

    def discriminator_loss_names(self) -> list[str]:
        """Names of the terms `discriminator_losses` returns."""
        return ["d_gan"]

    def discriminator_input(self, x, images):
        """What the discriminator sees: `concat(x, images)` when paired."""
        if self.mode == "paired":
            return tf.concat([tf.cast(x, images.dtype), images], axis=-1)
        return images

    def prepare_step(self, x, y) -> Step:
        """Runs the teacher and picks the target and the real images.

        Args:
            x: Input batch.
            y: Target batch (paired), other-domain batch or None (unpaired).

        Returns:
            A `Step` without the student's outputs.

        Raises:
            ValueError: On missing targets or mismatched shapes.
        """
        teacher_image, teacher_features = None, []
        if self.teacher is not None:
            if self.teacher_tapped is not None:
                teacher_image, *teacher_features = self.teacher_tapped(
                    x, training=False
                )
            else:
                teacher_image = self.teacher(x, training=False)
            teacher_image = tf.stop_gradient(teacher_image)
            teacher_features = [tf.stop_gradient(f) for f in teacher_features]
        if self.mode == "paired":
            if y is None:
                raise ValueError(
                    "mode='paired' needs (input, target) batches, got inputs only."
                )
            target = real = y
        else:
            target = teacher_image
            real = teacher_image if y is None else y
            _check_images(real, target, "Real target-domain images vs teacher outputs")
        return Step(
            x=x,
            real=real,
            target=target,
            teacher_image=teacher_image,
            teacher_features=teacher_features,
            seed=_step_seed(self.optimizer.iterations, 0),
        )

    def generate(self, x) -> tuple:
        """The student's `(images, taps)` in training mode."""
        if self.student_tapped is None:
            return self.generator(x, training=True), []
        fake, *features = self.student_tapped(x, training=True)
        return fake, features

    def discriminator_losses(self, step: Step) -> dict:
        """Discriminator loss terms; their sum is minimised.

        Args:
            step: The step's tensors (`step.fake` is set).

        Returns:
            A dict name -> float32 scalar, keys `discriminator_loss_names()`.
        """
        real = self.discriminator_input(step.x, step.real)
        fake = self.discriminator_input(step.x, tf.stop_gradient(step.fake))
        if self.image_pool is not None:
            fake = self.image_pool(fake, seed=step.seed)
        return {
            "d_gan": self.gan_loss.discriminator(
                self.discriminator(real, training=True),
                self.discriminator(fake, training=True),
            )
        }

    def generator_losses(self, step: Step) -> dict:
        """Weighted generator loss terms; their sum is minimised.

        Args:
            step: The step's tensors.

        Returns:
            A dict name -> float32 scalar, keys `generator_loss_names()`.
        """
        logits = self.discriminator(
            self.discriminator_input(step.x, step.fake), training=True
        )
        terms = {"gan": self.lambda_gan * self.gan_loss.generator(logits)}
        if self.lambda_recon:
            terms["recon"] = self.lambda_recon * losses.l1_loss(step.fake, step.target)
        if self.mappers and self.lambda_distill:
            terms["distill"] = self.lambda_distill * losses.feature_distillation_loss(
                step.student_features,
                step.teacher_features,
                self.mappers,
                self.distill_distance,
            )
        return terms

    def after_step(self, step: Step) -> None:
        """Called at the end of every training step (e.g. gate updates)."""

    def gate_masks(self, step: Step) -> Mapping:
        """Gate masks computed inside the step, e.g. by pruning agents.

        Called at the start of every step, inside the generator's tape and
        the tape of the `"after"` optimizer groups, so gradients reach what
        computed the masks. The whole step then runs inside
        `drive_gates(masks)`: the generator's and the discriminator's gates
        multiply by them instead of using their own parameters. Default:
        none.

        Args:
            step: The step's tensors (no student outputs yet).

        Returns:
            `{ChannelGate: mask tensor}`, masks of shape `(C,)` or
            `(batch, C)`, typically in [0, 1].
        """
        return {}

    def drive_gates(self, masks: Mapping):
        """The context in which the gates in `masks` apply their masks.

        Default: `keras_layers.driven_gates(masks)`; nothing without masks.
        """
        if not masks:
            return contextlib.nullcontext()
        return keras_layers.driven_gates(masks)

    # Keras API -----------------------------------------------------------

    def call(self, inputs, training=False):
        return self.generator(inputs, training=training)

    def _group_losses(self, group: OptimizerGroup, step: Step):
        terms = group.losses(step)
        self._update(terms, group.loss_names, f"optimizer group {group.name!r}")
        total = _total(terms)
        self._trackers[f"{group.name}_loss"].update_state(total)
        return total / _replicas()

    def _apply_generator(self, loss, tape) -> None:
        """One backward pass for the generator and its `"generator"` groups."""
        shared = [g for g in self.groups if g.when == "generator"]
        parts = [(self.optimizer, self.generator_variables())]
        parts += [(g.optimizer, list(g.variables())) for g in shared]
        grads = tape.gradient(loss, [v for _, variables in parts for v in variables])
        start = 0
        for optimizer, variables in parts:
            end = start + len(variables)
            optimizer.apply_gradients(zip(grads[start:end], variables, strict=True))
            start = end

    def train_step(self, data):
        x, y = _unpack(data, f"{type(self).__name__} ({self.mode})")
        step = self.prepare_step(x, y)
        replicas = _replicas()
        for group in (g for g in self.groups if g.when == "before"):
            with tf.GradientTape() as tape:
                loss = self._group_losses(group, step)
            _apply_group(group, loss, tape)
        after = [group for group in self.groups if group.when == "after"]
        with contextlib.ExitStack() as stack:
            step_tape = None
            if after:
                step_tape = stack.enter_context(tf.GradientTape(persistent=True))
            with tf.GradientTape() as g_tape:
                step.masks = dict(self.gate_masks(step))
                stack.enter_context(self.drive_gates(step.masks))
                step.fake, step.student_features = self.generate(x)
            _check_images(step.fake, step.target, "Generator output vs target")

            with tf.GradientTape() as d_tape:
                step.d_terms = self.discriminator_losses(step)
                d_loss = _total(step.d_terms)
                scaled = d_loss / replicas
            with _paused(step_tape):
                _apply(self.d_optimizer, scaled, d_tape, self.discriminator_variables())

            with g_tape:
                step.g_terms = self.generator_losses(step)
                g_loss = _total(step.g_terms)
                scaled = g_loss / replicas
            with _paused(step_tape):
                self._apply_generator(scaled, g_tape)
            group_losses = [self._group_losses(group, step) for group in after]
        for group, loss in zip(after, group_losses, strict=True):
            _apply_group(group, loss, step_tape)
        self.after_step(step)

        self._update(
            {"g_loss": g_loss, "d_loss": d_loss}, ["g_loss", "d_loss"], "total"
        )
        self._update(step.g_terms, self.generator_loss_names(), "generator")
        self._update(step.d_terms, self.discriminator_loss_names(), "discriminator")
        return self.reducible_logs(self._results())

    def test_step(self, data):
        x, y = _unpack(data, f"{type(self).__name__} ({self.mode})")
        if self.mode == "paired":
            if y is None:
                raise ValueError(
                    "mode='paired' evaluates on (input, target) batches, got "
                    "inputs only."
                )
            target = y
        else:
            target = self.teacher(x, training=False)
        fake = self.generator(x, training=False)
        _check_images(fake, target, "Generator output vs target")
        self._eval_tracker.update_state(losses.l1_loss(fake, target))
        return self.reducible_logs({self._eval_name: self._eval_tracker.result()})


class CycleGANTrainer(_TrackedModel):
    """Trains a CycleGAN teacher pair (Zhu et al. 2017).

    Two generators `G: A -> B`, `F: B -> A` and two unconditional
    discriminators (`discriminator_a` judges domain A, `discriminator_b`
    domain B). Generator loss: `gan(D_B(G(a))) + gan(D_A(F(b)))` +
    `lambda_cycle * (|F(G(a)) - a| + |G(F(b)) - b|)` +
    `lambda_cycle * lambda_identity * (|G(b) - b| + |F(a) - a|)`; each
    discriminator minimises its GAN loss on real images vs pooled fakes. The
    generators update first, then the discriminators (CycleGAN's order).

    Args:
        generator_ab: `G`, domain A -> B (what `call`/`predict` run).
        generator_ba: `F`, domain B -> A.
        discriminator_a: Discriminator of domain A.
        discriminator_b: Discriminator of domain B.
        image_pool_size: Size of each image pool (CycleGAN: 50); 0 disables
            the pools.
        image_size: `(H, W)` of the training images, needed by the pools
            when the discriminators' input size is not fixed.
        name: Model name.

    Raises:
        ValueError: If a pool cannot be allocated (unknown image size).

    Example:

    ```python
    trainer = CycleGANTrainer(
        resnet_generator(), resnet_generator(),
        patchgan_discriminator(), patchgan_discriminator(),
        image_size=(256, 256),
    )
    trainer.compile(keras.optimizers.Adam(2e-4, beta_1=0.5),
                    keras.optimizers.Adam(2e-4, beta_1=0.5))
    pairs = tf.data.Dataset.zip((photos_a, photos_b))
    trainer.fit(pairs.batch(1, drop_remainder=True), epochs=200)
    ```
    """

    _eval_name = "cycle_l1"

    def __init__(
        self,
        generator_ab: keras.Model,
        generator_ba: keras.Model,
        discriminator_a: keras.Model,
        discriminator_b: keras.Model,
        image_pool_size: int = 50,
        image_size: tuple | None = None,
        name: str = "cyclegan_trainer",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        self.generator_ab = generator_ab
        self.generator_ba = generator_ba
        self.discriminator_a = discriminator_a
        self.discriminator_b = discriminator_b
        self.pool_a = self.pool_b = None
        if image_pool_size:
            self.pool_a = ImagePool(
                image_pool_size, _pool_shape(discriminator_a, image_size), name="pool_a"
            )
            self.pool_b = ImagePool(
                image_pool_size, _pool_shape(discriminator_b, image_size), name="pool_b"
            )
        self.built = True

    def compile(
        self,
        g_optimizer: keras.optimizers.Optimizer,
        d_optimizer: keras.optimizers.Optimizer,
        gan_loss: str | losses.GanLoss = "lsgan",
        lambda_cycle: float = 10.0,
        lambda_identity: float = 0.5,
        jit_compile: bool = True,
        **kwargs,
    ):
        """Sets the optimizers and the loss weights.

        Args:
            g_optimizer: Optimizer of both generators (`trainer.optimizer`).
            d_optimizer: Optimizer of both discriminators.
            gan_loss: `"lsgan"` (CycleGAN), `"hinge"`, `"vanilla"` or a
                `losses.GanLoss`.
            lambda_cycle: Weight of each cycle-consistency L1 term.
            lambda_identity: Identity weight relative to `lambda_cycle`
                (0 disables the identity terms).
            jit_compile: Compile each step with XLA.
            **kwargs: More `keras.Model.compile` arguments.

        Raises:
            ValueError: On an unknown GAN loss or negative weights.
        """
        self.gan_loss = (
            gan_loss
            if isinstance(gan_loss, losses.GanLoss)
            else losses.gan_losses(gan_loss)
        )
        if lambda_cycle < 0 or lambda_identity < 0:
            raise ValueError(
                f"lambda_cycle and lambda_identity must be >= 0, got "
                f"{lambda_cycle} and {lambda_identity}."
            )
        self.lambda_cycle = float(lambda_cycle)
        self.lambda_identity = float(lambda_identity)
        super().compile(optimizer=g_optimizer, jit_compile=jit_compile, **kwargs)
        self.d_optimizer = d_optimizer
        with self.distribute_strategy.scope():
            if not self.optimizer.built:
                self.optimizer.build(self._generator_variables())
            if not d_optimizer.built:
                d_optimizer.build(self._discriminator_variables())
        names = ["g_loss", "gan", "cycle", "d_loss", "d_a", "d_b"]
        if self.lambda_identity:
            names.insert(3, "identity")
        self._make_trackers(names)

    def _generator_variables(self) -> list:
        return [
            *self.generator_ab.trainable_variables,
            *self.generator_ba.trainable_variables,
        ]

    def _discriminator_variables(self) -> list:
        return [
            *self.discriminator_a.trainable_variables,
            *self.discriminator_b.trainable_variables,
        ]

    def call(self, inputs, training=False):
        return self.generator_ab(inputs, training=training)

    def _unpack_pair(self, data, what: str):
        a, b = _unpack(data, what)
        if b is None:
            raise ValueError(f"{what} needs (domain_a, domain_b) batches, got one.")
        return a, b

    def _discriminate(self, discriminator, pool, real, fake, salt: int):
        fake = tf.stop_gradient(fake)
        if pool is not None:
            fake = pool(fake, seed=_step_seed(self.d_optimizer.iterations, salt))
        return self.gan_loss.discriminator(
            discriminator(real, training=True), discriminator(fake, training=True)
        )

    def train_step(self, data):
        a, b = self._unpack_pair(data, "CycleGANTrainer")
        replicas = _replicas()
        with tf.GradientTape() as g_tape:
            fake_b = self.generator_ab(a, training=True)
            fake_a = self.generator_ba(b, training=True)
            _check_images(fake_b, b, "generator_ab(a) vs b")
            _check_images(fake_a, a, "generator_ba(b) vs a")
            rec_a = self.generator_ba(fake_b, training=True)
            rec_b = self.generator_ab(fake_a, training=True)
            g_terms = {
                "gan": self.gan_loss.generator(
                    self.discriminator_b(fake_b, training=True)
                )
                + self.gan_loss.generator(self.discriminator_a(fake_a, training=True)),
                "cycle": self.lambda_cycle
                * (losses.l1_loss(rec_a, a) + losses.l1_loss(rec_b, b)),
            }
            if self.lambda_identity:
                g_terms["identity"] = (
                    self.lambda_cycle
                    * self.lambda_identity
                    * (
                        losses.l1_loss(self.generator_ab(b, training=True), b)
                        + losses.l1_loss(self.generator_ba(a, training=True), a)
                    )
                )
            g_loss = _total(g_terms)
            scaled = g_loss / replicas
        _apply(self.optimizer, scaled, g_tape, self._generator_variables())

        with tf.GradientTape() as d_tape:
            d_terms = {
                "d_a": self._discriminate(
                    self.discriminator_a, self.pool_a, a, fake_a, salt=1
                ),
                "d_b": self._discriminate(
                    self.discriminator_b, self.pool_b, b, fake_b, salt=2
                ),
            }
            d_loss = _total(d_terms)
            scaled = d_loss / replicas
        _apply(self.d_optimizer, scaled, d_tape, self._discriminator_variables())

        self._update(
            {"g_loss": g_loss, "d_loss": d_loss, **g_terms, **d_terms},
            [name for name in self._trackers],
            "cyclegan",
        )
        return self.reducible_logs(self._results())

    def test_step(self, data):
        a, b = self._unpack_pair(data, "CycleGANTrainer")
        rec_a = self.generator_ba(self.generator_ab(a, training=False), training=False)
        rec_b = self.generator_ab(self.generator_ba(b, training=False), training=False)
        self._eval_tracker.update_state(
            0.5 * (losses.l1_loss(rec_a, a) + losses.l1_loss(rec_b, b))
        )
        return self.reducible_logs({self._eval_name: self._eval_tracker.result()})
