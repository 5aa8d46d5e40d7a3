"""What a compression method is: its options, its student, its phases.

A method is a `Method` subclass with a `name`, an `Options` dataclass (its
knobs, each with a default) and the phases of the one life every method
shares (`training.pipeline` runs them in order):

1. `build(teacher, setup)`: the gated or super student (and the
   discriminator) from the teacher, as a `Student`;
2. `search_trainer(...)` + `search_callbacks(...)`: the method's own
   search/prune phase, a compiled `keras.Model` (usually an
   `AdversarialTrainer` subclass, with its agents as `OptimizerGroup`s)
   that `fit` drives, with those callbacks, until the MACs budget is met;
   no such phase by default;
3. `slim(student)`: `tgc.slim` of the generator (and of a gated
   discriminator), recording which teacher channels the student kept;
4. the least-squares refit to the teacher, done by the pipeline when the
   student inherits the teacher's channels (`Student.inherits_teacher`);
5. `finetune_trainer(...)` + `finetune_callbacks(...)`: the method's own
   objective, a compiled trainer, and the callbacks of its `fit` (one per
   stage of `finetune_stages(...)`, one stage by default);
6. ship: the entry points export, score and time the result.

Every phase is a public call, so one method runs from plain Keras code:

    method = training.methods.get("distill", "lambda_distill=2")
    student = method.build(teacher, setup)
    student = method.slim(student)
    trainer = method.finetune_trainer(student, teacher, setup, steps=1000)
    trainer.fit(pairs, epochs=20, steps_per_epoch=50)

Steps: the pipeline's one step budget is split between the two training
phases by `split_steps` (default: `search_share` of the steps to the search
phase, the rest to fine-tuning).
"""

from __future__ import annotations

import abc
import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import ClassVar

import keras
import numpy as np

import tfgancompress as tgc
from training import budget as budget_lib
from training.callbacks import gates_of
from training.trainer import MODES, AdversarialTrainer

KEY_NEUTRAL = "key_neutral"


def key_neutral(default):
    """An option field whose default value does not enter run keys.

    Declare an option added to a method's `Options` after runs of the
    method were cached this way (`added: int = methods.key_neutral(3)`):
    at its default it is left out of `Method.describe` (so out of
    `training.train.run_key`, benchmark row keys and checkpoint claims),
    and every earlier run's key stays valid; any other value enters them.
    An option declared plainly enters the key at every value (the options
    the methods had when this existed stay so: their keys do not change).

    Args:
        default: The option's default; it must keep the method training
            exactly as it did before the option existed.

    Returns:
        A `dataclasses.field` with that default.
    """
    return dataclasses.field(default=default, metadata={KEY_NEUTRAL: True})


@dataclasses.dataclass(frozen=True)
class NoOptions:
    """The options of a method without knobs."""


@dataclasses.dataclass(frozen=True)
class Setup:
    """What every phase of every method is given, besides the models.

    The task (teacher, data) decides these; the method decides the rest
    through its own options.

    Attributes:
        budget: The generator's MACs budget.
        mode: How batches are read: `"paired"` (`(x, y)`, `y` the target)
            or `"unpaired"` (the target is the teacher's output); see
            `training.AdversarialTrainer`.
        learning_rate: Base learning rate of every optimizer the method
            makes (methods may scale it).
        ndf: Width of the discriminator.
        seed: Seed of model initialisation and training.
        jit_compile: Compile the train steps with XLA.
        validation: `(inputs, targets)` arrays of *training* photos a method
            may score its own choices on (GAN Compression's sub-net
            search), never the held-out ones; `targets` are what the
            student should output (the paired target, or the teacher's
            output in `"unpaired"` mode). A function returning them is
            called when needed (`validation_arrays`). `None`: none given
            (`training.pipeline.compress` then supplies a slice of the
            training batches).
        calibration: Training-view inputs (or a function returning them)
            that methods building from the teacher's activations read
            (`distill`'s greedy channel selection), `None` when none were
            given; `training.pipeline.compress` sets its `calibration`
            images, the ones the refit uses (`calibration_images`).
        work_dir: A folder for the method's own files (search logs, caches,
            resumable state), or `None` to keep them in memory;
            `training.pipeline.compress` sets `<checkpoint_dir>/method`.
        report_dir: A folder for the method's reports that outlive the run
            (DMAD's mask trajectory plot), or `None` to write none;
            `training.train` sets its `output_dir`, `training.bench` the
            row's folder.
    """

    budget: budget_lib.Budget
    mode: str = "paired"
    learning_rate: float = 2e-4
    ndf: int = 64
    seed: int = 0
    jit_compile: bool = True
    validation: typing.Any = dataclasses.field(default=None, compare=False, repr=False)
    calibration: typing.Any = dataclasses.field(default=None, compare=False, repr=False)
    work_dir: str | None = None
    report_dir: str | None = None

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}.")
        if self.learning_rate <= 0 or self.ndf < 1:
            raise ValueError(
                f"learning_rate must be > 0 and ndf >= 1, got {self.learning_rate} "
                f"and {self.ndf}."
            )

    def validation_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """The validation `(inputs, targets)` as float32 arrays.

        Raises:
            ValueError: If no validation images were given, or the arrays
                do not pair up as image batches.
        """
        validation = self.validation() if callable(self.validation) else self.validation
        if validation is None:
            raise ValueError(
                "This method scores its choices on validation images of the "
                "training photos: give Setup(validation=(inputs, targets)), or "
                "run it through training.pipeline.compress, which supplies them."
            )
        inputs, targets = (np.asarray(a, np.float32) for a in validation)
        if inputs.ndim != 4 or targets.ndim != 4 or len(inputs) != len(targets):
            raise ValueError(
                "Setup.validation must be (inputs, targets) image batches of equal "
                f"length, got shapes {inputs.shape} and {targets.shape}."
            )
        return inputs, targets

    def calibration_images(self) -> np.ndarray | None:
        """The calibration inputs as a float32 `(N, H, W, C)` array, or `None`.

        Raises:
            ValueError: If they are not a batch of images.
        """
        images = self.calibration() if callable(self.calibration) else self.calibration
        if images is None:
            return None
        images = np.asarray(images, np.float32)
        if images.ndim != 4 or not len(images):
            raise ValueError(
                "Setup.calibration must be a non-empty (N, H, W, C) batch of "
                f"images, got shape {images.shape}."
            )
        return images


@dataclasses.dataclass
class Student:
    """The models a method carries from phase to phase.

    Attributes:
        generator: The student generator: gated or super while the method
            searches, a plain Keras model after `slim`.
        discriminator: The discriminator trained against it (gated when the
            method prunes it too).
        inherits_teacher: Whether the generator's channels are channels of
            the teacher (it was cut from the teacher, not re-initialised):
            then `slim` records `kept` and the pipeline can refit the student
            to the teacher by least squares.
        kept: After `slim`: `{layer name: indices of the teacher's channels
            the layer kept}` (`tgc.surgery.kept_channels`), or `None`.
        state: The method's own objects that live across phases (agents,
            mappers, an online teacher); not saved by pipeline checkpoints.
    """

    generator: keras.Model
    discriminator: keras.Model
    inherits_teacher: bool = True
    kept: dict | None = None
    state: dict = dataclasses.field(default_factory=dict)


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def parse_options(options) -> dict:
    """Options given as `"key=value,..."`, a list of `"key=value"` or a mapping.

    Args:
        options: `None`, a string `"a=1,b=x"`, a sequence of `"a=1"` strings
            (absl's `DEFINE_list`) or a mapping.

    Returns:
        `{key: value}`; values from strings stay strings.

    Raises:
        ValueError: On an item without `=` or a repeated key.
    """
    if options is None:
        return {}
    if isinstance(options, Mapping):
        return dict(options)
    items = options.split(",") if isinstance(options, str) else list(options)
    parsed = {}
    for item in (item.strip() for item in items):
        if not item:
            continue
        key, equals, value = item.partition("=")
        if not equals or not key.strip():
            raise ValueError(f"Method options are key=value pairs, got {item!r}.")
        key = key.strip()
        if key in parsed:
            raise ValueError(f"Method option {key!r} is given twice.")
        parsed[key] = value.strip()
    return parsed


def _allowed_types(hint) -> tuple:
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return typing.get_args(hint)
    return (hint,)


def _convert(value, hint, where: str):
    """`value` (maybe a string) as the option's declared type."""
    allowed = _allowed_types(hint)
    if value is None or (
        isinstance(value, str) and value.lower() == "none" and type(None) in allowed
    ):
        if type(None) in allowed:
            return None
        raise ValueError(f"{where} cannot be None.")
    for kind in (t for t in allowed if t is not type(None)):
        if isinstance(value, str):
            if kind is bool and value.lower() in _TRUE + _FALSE:
                return value.lower() in _TRUE
            if kind in (int, float):
                try:
                    return kind(value)
                except ValueError:
                    continue
            if kind is str:
                return value
        elif kind is float and isinstance(value, (int, float)):
            if not isinstance(value, bool):
                return float(value)
        elif isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
            return value
    names = " or ".join(getattr(t, "__name__", str(t)) for t in allowed)
    raise ValueError(f"{where} must be {names}, got {value!r}.")


class Method(abc.ABC):
    """Base class of the compression methods (see the module docstring).

    Args:
        options: The method's options: an `Options` instance, a mapping, a
            `"key=value,..."` string or a list of `"key=value"`; unset keys
            keep their defaults.
        **overrides: More options as keyword arguments.

    Raises:
        ValueError: On an unknown option (the message names the known
            ones) or a value of the wrong type or range.

    Class attributes a subclass sets:
        name: The registry name (`training.methods.get(name)`).
        Options: A frozen dataclass of the knobs, every field with a
            default; its `__post_init__` may validate them. A knob added
            once runs of the method exist is declared with `key_neutral`,
            so that at its default those runs keep their keys.
        search_share: Fraction of the pipeline's steps given to the search
            phase by the default `split_steps`.
        colour_skip: Whether the pipeline may wrap the slimmed generator in
            the global colour skip (which resets its output layer); `False`
            for a student that keeps the output layer it trained.
        detail_skip: Whether the pipeline may wrap it in the detail skip
            (`tgc.models.with_detail_skip`, whose output layer the refit
            fits around it); `False` as for `colour_skip`.
    """

    name: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions
    search_share: ClassVar[float] = 0.0
    colour_skip: ClassVar[bool] = True
    detail_skip: ClassVar[bool] = True

    def __init__(self, options=None, **overrides):
        if isinstance(options, self.Options):
            options = dataclasses.asdict(options)
        given = {**parse_options(options), **overrides}
        hints = typing.get_type_hints(self.Options)
        fields = {f.name for f in dataclasses.fields(self.Options)}
        unknown = sorted(set(given) - fields)
        if unknown:
            raise ValueError(
                f"Unknown option(s) {unknown} for method {self.name!r}; known: "
                f"{', '.join(sorted(fields)) or 'none'}."
            )
        converted = {
            key: _convert(value, hints[key], f"Option {key!r} of method {self.name!r}")
            for key, value in given.items()
        }
        self.options = self.Options(**converted)

    # Identity --------------------------------------------------------------

    def option_values(self) -> dict:
        """Every option's value by name, for reports (`describe` names the run)."""
        return dataclasses.asdict(self.options)

    def describe(self) -> dict:
        """`{"method": name, "options": {...}}`: JSON-able, what names the run.

        Every option, except a `key_neutral` one at its default: the
        identity of a run (`training.train.run_key`), unchanged when such
        an option is added.
        """
        values = self.option_values()
        for field in dataclasses.fields(self.options):
            if field.metadata.get(KEY_NEUTRAL) and values[field.name] == field.default:
                del values[field.name]
        return {"method": self.name, "options": values}

    @property
    def description(self) -> str:
        """A stable one-line description, e.g. `distill(lambda_distill=1.0,...)`.

        The options of `describe`, sorted by name with their values'
        `repr`: two methods are the same run configuration exactly when
        their descriptions are equal (use it as a cache key).
        """
        options = self.describe()["options"]
        inner = ",".join(f"{key}={options[key]!r}" for key in sorted(options))
        return f"{self.name}({inner})"

    def __eq__(self, other) -> bool:
        return isinstance(other, Method) and self.description == other.description

    def __hash__(self) -> int:
        return hash(self.description)

    def __repr__(self) -> str:
        return f"<Method {self.description}>"

    # Budget and steps ------------------------------------------------------

    def smallest_macs(self, teacher: keras.Model, input_shape) -> int:
        """MACs of the cheapest generator this method can make from `teacher`.

        The default: the teacher with one channel left after every norm.
        """
        return budget_lib.smallest_gated_macs(teacher, input_shape)

    def split_steps(self, steps: int) -> dict[str, int]:
        """How the pipeline's `steps` are shared: `{"search": n, "finetune": m}`.

        The default gives `round(search_share * steps)` to the search phase
        and the rest to fine-tuning; `n + m == steps`.
        """
        search = round(self.search_share * steps)
        return {"search": search, "finetune": steps - search}

    # Phases ----------------------------------------------------------------

    @abc.abstractmethod
    def build(self, teacher: keras.Model, setup: Setup) -> Student:
        """Phase 1: the gated or super student and its discriminator.

        Args:
            teacher: The trained generator being compressed (do not modify).
            setup: The budget and training settings; the finished student
                must cost at most `setup.budget.macs`.

        Returns:
            The `Student`.
        """

    def search_trainer(
        self, student: Student, teacher: keras.Model, setup: Setup, steps: int
    ) -> keras.Model | None:
        """Phase 2: a compiled trainer of the search/prune phase, or `None`.

        `fit` on the task's batches for `steps` steps, with
        `search_callbacks`, must leave the student within the budget.
        """
        return None

    def search_callbacks(self, student: Student, setup: Setup, steps: int) -> list:
        """Phase 2: the callbacks that drive the search over `steps` steps.

        E.g. `training.callbacks.UpdateCompressionStep` with a schedule
        that reaches the budget by the end, or `BudgetReached`.
        """
        return []

    def slim(self, student: Student) -> Student:
        """Phase 3: plain models without the switched-off channels.

        The default slims the generator and, when it has gates, the
        discriminator (`tgc.slim`), and records `kept` when the student
        inherits the teacher's channels.
        """
        kept = None
        if student.inherits_teacher:
            kept = tgc.surgery.kept_channels(student.generator)
        return dataclasses.replace(
            student,
            generator=_slimmed(student.generator),
            discriminator=_slimmed(student.discriminator),
            kept=kept,
        )

    @abc.abstractmethod
    def finetune_trainer(
        self, student: Student, teacher: keras.Model, setup: Setup, steps: int
    ) -> keras.Model:
        """Phase 5: a compiled trainer of the slimmed student (its objective).

        Args:
            student: The slimmed (and maybe refitted) student.
            teacher: The teacher.
            setup: Training settings.
            steps: The steps `fit` will run (e.g. for learning-rate decay).

        Returns:
            A compiled `keras.Model` whose `generator` attribute is the
            student generator (an `AdversarialTrainer` or subclass).
        """

    def finetune_stages(self, steps: int) -> list[int]:
        """Phase 5's steps split into stages, each its own trainer and `fit`.

        `finetune_trainer` is called once per stage, in order, with that
        stage's steps (e.g. float fine-tuning, then quantization-aware) and,
        when there is more than one stage, `stage=<its index>` (so a method
        that splits its steps takes a `stage` argument); a stage of 0 steps
        is not fit. One stage of all `steps` by default.
        """
        return [steps]

    def finetune_callbacks(self, student: Student, setup: Setup, steps: int) -> list:
        """Phase 5: callbacks of the fine-tuning `fit` over `steps` steps.

        E.g. one that slims a gated discriminator when training ends.
        None by default.
        """
        return []


def check_non_negative(options, method: str) -> None:
    """Raises `ValueError` on a negative numeric option (loss weights)."""
    for key, value in dataclasses.asdict(options).items():
        if isinstance(value, (int, float)) and value < 0:
            raise ValueError(f"{method} option {key} must be >= 0, got {value}.")


def _slimmed(model: keras.Model) -> keras.Model:
    return tgc.slim(model) if gates_of(model) else model


# Helpers methods share ------------------------------------------------------


def discriminator(setup: Setup, channels: int = 3, gated: bool = False):
    """A PatchGAN discriminator for `setup`: conditional when paired."""
    return tgc.models.patchgan_discriminator(
        ndf=setup.ndf,
        input_channels=channels,
        conditional=setup.mode == "paired",
        gated=gated,
    )


def adam(setup: Setup, steps: int, scale: float = 1.0) -> keras.optimizers.Adam:
    """Adam (beta_1 0.5), learning rate cosine-decayed to 0 over `steps`.

    The schedule follows the optimizer's step count, which
    `keras.callbacks.BackupAndRestore` restores on resume.
    """
    schedule = keras.optimizers.schedules.CosineDecay(
        setup.learning_rate * scale, max(1, steps)
    )
    return keras.optimizers.Adam(schedule, beta_1=0.5)


def distillation_trainer(
    student: Student,
    teacher: keras.Model | None,
    setup: Setup,
    steps: int,
    *,
    lambda_recon: float | None = None,
    lambda_distill: float | None = None,
    lambda_gan: float = 1.0,
    taps="auto",
    gan_loss: str = "lsgan",
    trainer_class: type = AdversarialTrainer,
    **trainer_kwargs,
) -> AdversarialTrainer:
    """A compiled `AdversarialTrainer` (or subclass) of pixel + feature + GAN loss.

    Args:
        student: Its `generator` and `discriminator` are trained.
        teacher: The teacher (frozen), or `None` in paired mode.
        setup: Mode, learning rate, XLA.
        steps: Steps of the run (cosine learning-rate decay).
        lambda_recon: Weight of the L1 to the target (trainer default when
            `None`).
        lambda_distill: Weight of feature distillation (idem).
        lambda_gan: Weight of the adversarial term.
        taps: Distillation taps (`AdversarialTrainer`'s `taps`).
        gan_loss: `"lsgan"`, `"hinge"` or `"vanilla"`.
        trainer_class: `AdversarialTrainer` or a subclass.
        **trainer_kwargs: More arguments of the trainer's constructor.
    """
    trainer = trainer_class(
        student.generator,
        student.discriminator,
        teacher=teacher,
        mode=setup.mode,
        taps=taps,
        **trainer_kwargs,
    )
    trainer.compile(
        g_optimizer=adam(setup, steps),
        d_optimizer=adam(setup, steps),
        gan_loss=gan_loss,
        lambda_gan=lambda_gan,
        lambda_recon=lambda_recon,
        lambda_distill=lambda_distill,
        jit_compile=setup.jit_compile,
    )
    return trainer


__all__ = [
    "Method",
    "NoOptions",
    "Setup",
    "Student",
    "adam",
    "check_non_negative",
    "discriminator",
    "distillation_trainer",
    "key_neutral",
    "parse_options",
]
