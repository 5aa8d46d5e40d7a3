"""One life for every compression method: build, search, slim, refit, fine-tune.

`compress` runs a method (`training.methods.get(name)`) through its phases
on a teacher and a dataset of training batches, within one MACs budget and
one step budget:

1. `build`: the method's gated/super student, checked against the budget
   first (an unreachable budget is an error saying what is reachable);
2. `search`: the method's search/prune trainer, `fit` for its share of the
   steps (none for the baselines);
3. `slim`: plain, physically smaller models; optionally the generator is
   wrapped in a global colour skip (`tgc.models.with_colour_skip`) and/or
   a detail skip (`tgc.models.with_detail_skip`), whose MACs the budget
   the method builds to leaves room for (unless the method opts out:
   `Method.colour_skip`, `Method.detail_skip`);
4. `refit`: least-squares refit of the student's convolutions to the
   teacher (`tgc.reconstruction`) on calibration images, when the student
   inherits the teacher's channels; skipped without calibration images;
   then `match` (`match_steps`; 0 here, 1000 in the vintage task's
   defaults, `training.vintage.DEFAULTS`): the student alone learns
   to reproduce the teacher's outputs (MSE, Adam, no teacher features, no
   discriminator): a step costs a fraction of a distillation step, so many
   more fit in the same time;
5. `finetune`: the method's objective for the rest of the steps;
6. ship: export, score and time (`training.train`, `training.bench`).

Steps: `method.split_steps(steps)` shares `steps` between phases 2 and 5
(`Method.search_share`; the baselines give all steps to fine-tuning).

Validation: methods that score their own choices (GAN Compression's
sub-net search) read `Setup.validation`, images of the *training* photos.
When the caller gives none, `compress` uses `validation_slice`: the first
`validation_batches` batches of the (task-seeded) training stream, which the
student also trains on, until tasks provide a validation split of their
own.

Each phase is also a public function, usable from plain Keras code. With
`checkpoint_dir`, training phases back up every epoch
(`keras.callbacks.BackupAndRestore`) and the student is saved after the
search and after the refit, so a killed run resumes where it stopped when
the same call is made again.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from collections.abc import Callable, Sequence

import keras
import numpy as np

import tfgancompress as tgc
from training import callbacks as callbacks_lib
from training import distribute
from training.distribute import MultiWorkerFit
from training.methods import Method, Setup, Student

PHASES = ("build", "search", "slim", "refit", "match", "finetune")
# Steps on which `check_steps` asks a method whether it searches.
SEARCH_PROBE_STEPS = 100


@dataclasses.dataclass
class Compressed:
    """What `compress` returns.

    Attributes:
        student: The finished student (plain generator and discriminator).
        macs: The generator's MACs at the budget's input shape.
        steps: Training steps per phase (`search`, `finetune`).
        seconds: Wall time per phase run in this call.
        histories: `fit` histories of the training phases run in this call:
            `{phase: {name: [value per epoch]}}`, every logged loss and
            metric (`val_psnr` with `training.callbacks.Evaluate`) and
            `step`, the phase's step count at each epoch's end (a resumed
            phase holds the epochs run after the resume).
        refit_images: Calibration images of the least-squares refit run in
            this call, or `None`.
        trained_steps: The step counter of each training phase's trainer
            when its `fit` ended in this call (a resumed phase counts the
            steps made before the interruption too).
        skips: The skips around the student: `colour_skip` (bool) and
            `detail_skip` (the blur sigma, 0 for none), after the method's
            say (`Method.colour_skip`, `Method.detail_skip`).
    """

    student: Student
    macs: int
    steps: dict[str, int]
    seconds: dict[str, float]
    histories: dict[str, dict]
    refit_images: int | None = None
    trained_steps: dict[str, int] = dataclasses.field(default_factory=dict)
    skips: dict = dataclasses.field(default_factory=dict)


class _LogStep(keras.callbacks.Callback):
    """Logs the trainer's step count at each epoch's end as `step`.

    Only reads the counter: the training is the same with or without it.
    """

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["step"] = int(callbacks_lib.training_step(self.model).numpy())


class _StopAtStep(keras.callbacks.Callback):
    """Ends `fit` once the trainer has made `steps` steps."""

    def __init__(self, steps: int):
        super().__init__()
        self.steps = int(steps)

    def on_train_batch_end(self, batch, logs=None):
        if int(callbacks_lib.training_step(self.model).numpy()) >= self.steps:
            self.model.stop_training = True


def with_skips(
    generator: keras.Model,
    colour_map: tuple[np.ndarray, np.ndarray] | None = None,
    detail_skip: float = 0.0,
    zero_layer: str | None = "out_conv",
) -> keras.Model:
    """The generator in the skips a run asks for (none: itself).

    Args:
        generator: A slimmed generator.
        colour_map: `(matrix, bias)`: a global colour skip starting at this
            map (`tgc.models.with_colour_skip`: the generator's last
            convolution restarts at zero, so its output starts at the map).
        detail_skip: The blur sigma in pixels of a detail skip
            (`tgc.models.with_detail_skip`); 0: none.
        zero_layer: The layer the colour skip zeroes (`with_colour_skip`).

    Returns:
        The wrapped generator; the refit fits its output layer around them.

    Raises:
        ValueError: If both skips are asked for: the colour map already
            passes the input's detail, so the detail skip would pass it twice.
    """
    if colour_map is not None and detail_skip:
        raise ValueError(
            "A detail skip inside the colour skip passes the input's detail twice "
            "(the colour map already carries it): the benchmark's distill row "
            "fell from 24.97 to 23.17 dB with both. Turn the colour skip off "
            "(--nocolour_skip) or the detail skip (--detail_skip=0)."
        )
    if detail_skip:
        generator = tgc.models.with_detail_skip(generator, detail_skip)
    if colour_map is not None:
        generator = tgc.models.with_colour_skip(generator, colour_map, zero_layer)
    return generator


def skip_macs(
    input_shape,
    colour_map: tuple[np.ndarray, np.ndarray] | None = None,
    detail_skip: float = 0.0,
) -> int:
    """MACs `with_skips` adds to a generator at `input_shape`."""
    inputs = keras.Input(tuple(input_shape))
    probe = keras.Model(inputs, keras.layers.Identity()(inputs))
    wrapped = with_skips(probe, colour_map, detail_skip, zero_layer=None)
    shape = tuple(input_shape)
    return tgc.profile(wrapped, shape).macs - tgc.profile(probe, shape).macs


def validation_slice(
    data, teacher: keras.Model, mode: str, batches: int = 4
) -> tuple[np.ndarray, np.ndarray]:
    """`(inputs, targets)` of the first `batches` batches of `data`.

    The stand-in for a validation split of the training photos: the same
    images on every call (the training stream's own seed orders them).

    Args:
        data: The training dataset (`x` or `(x, y)` batches).
        teacher: Gives the targets in `"unpaired"` mode.
        mode: `"paired"`: the targets are the batches' `y`;
            `"unpaired"`: `teacher(x)`.
        batches: How many batches.

    Returns:
        Float32 arrays `(N, H, W, C)`.

    Raises:
        ValueError: If `data` has fewer batches, or paired batches lack `y`.
    """
    inputs, targets = [], []
    for batch in data.take(batches):
        if not isinstance(batch, tuple):
            batch = (batch,)
        x, y = batch[0], (batch[1] if len(batch) > 1 else None)
        if mode == "paired" and y is None:
            raise ValueError("validation_slice: paired batches must be (x, y).")
        inputs.append(np.asarray(x, np.float32))
        if mode == "paired":
            targets.append(np.asarray(y, np.float32))
    if len(inputs) < batches:
        raise ValueError(
            f"validation_slice wants {batches} batches, the dataset has {len(inputs)}."
        )
    images = np.concatenate(inputs)
    if mode == "paired":
        return images, np.concatenate(targets)
    outputs = teacher.predict(images, batch_size=len(inputs[0]), verbose=0)
    return images, np.asarray(outputs, np.float32)


def build(
    method: Method, teacher: keras.Model, setup: Setup, reserved_macs: int = 0
) -> Student:
    """Phase 1: the method's student, after checking the budget is reachable.

    Args:
        method: The method.
        teacher: The generator to compress.
        setup: Budget and training settings.
        reserved_macs: MACs the budget must leave for what is added to the
            generator later (the colour skip of `slim`); the method builds
            to `setup.budget.minus(reserved_macs)`.

    Returns:
        The `Student` (gated or super: not yet slimmed).

    Raises:
        BudgetError: If the method cannot reach the budget.
    """
    shape = setup.budget.input_shape
    setup.budget.check_reachable(
        method.smallest_macs(teacher, shape) + reserved_macs, f"method {method.name!r}"
    )
    keras.utils.set_random_seed(setup.seed)
    return method.build(
        teacher, dataclasses.replace(setup, budget=setup.budget.minus(reserved_macs))
    )


def _fit(
    trainer: keras.Model,
    data,
    steps: int,
    steps_per_epoch: int,
    callbacks: Sequence[keras.callbacks.Callback],
    backup_dir: str | None,
    verbose: int,
) -> dict:
    """`trainer.fit` for exactly `steps` steps, backed up every epoch.

    Resumed from the backup, the run sees the batches it would have seen
    uninterrupted (the data skips the steps of the completed epochs), so
    with stateless randomness it ends where the uninterrupted run ends.
    """
    per_epoch = min(steps_per_epoch, steps)
    run = [callbacks_lib.StopOnNaN()]
    if backup_dir:
        backup = callbacks_lib.BackupAndRestore(backup_dir)
        run.append(backup)
        completed = backup.completed_epochs()
        if completed:  # continue the batch stream where the backup left it
            data = data.skip(completed * per_epoch)
    run += [*callbacks, _StopAtStep(steps), _LogStep()]
    history = trainer.fit(
        data,
        epochs=math.ceil(steps / per_epoch),
        steps_per_epoch=per_epoch,
        callbacks=run,
        shuffle=False,  # the dataset shuffles; Keras warns about its own flag
        verbose=verbose,
    )
    history.history["trained_steps"] = int(callbacks_lib.training_step(trainer).numpy())
    return history.history


def search(
    method: Method,
    student: Student,
    teacher: keras.Model,
    setup: Setup,
    data,
    steps: int,
    *,
    steps_per_epoch: int = 50,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    backup_dir: str | None = None,
    verbose: int = 1,
) -> dict | None:
    """Phase 2: the method's search/prune trainer, fit for `steps` steps.

    Args:
        method: The method.
        student: From `build` (trained in place).
        teacher: The teacher.
        setup: Budget and training settings.
        data: A repeating dataset of training batches.
        steps: Steps of this phase; 0 skips it.
        steps_per_epoch: Steps between checkpoints and epoch callbacks.
        callbacks: More callbacks (e.g. `training.callbacks.Evaluate`).
        backup_dir: Where `BackupAndRestore` keeps this phase's backup.
        verbose: `fit`'s verbosity.

    Returns:
        The `fit` history, or `None` when the phase did not run.
    """
    if steps <= 0:
        return None
    trainer = method.search_trainer(student, teacher, setup, steps)
    if trainer is None:
        raise ValueError(
            f"Method {method.name!r} gives {steps} steps to a search phase but "
            "has no search_trainer: override split_steps or search_trainer."
        )
    keras.utils.set_random_seed(setup.seed)
    run = [*method.search_callbacks(student, setup, steps), *callbacks]
    return _fit(trainer, data, steps, steps_per_epoch, run, backup_dir, verbose)


def slim(
    method: Method,
    student: Student,
    colour_map: tuple[np.ndarray, np.ndarray] | None = None,
    detail_skip: float = 0.0,
) -> Student:
    """Phase 3: the method's `slim` (plain models, kept-channel map).

    Args:
        method: The method.
        student: The searched student.
        colour_map: `(matrix, bias)`: wrap the slimmed generator in a global
            colour skip starting at this map (`with_skips`; the refit fits
            the output layer around it).
        detail_skip: The blur sigma of a detail skip around it (`with_skips`);
            0: none.

    Returns:
        The slimmed `Student`.
    """
    student = method.slim(student)
    student.generator = with_skips(student.generator, colour_map, detail_skip)
    return student


def refit(
    student: Student,
    teacher: keras.Model,
    images: np.ndarray | Callable[[], np.ndarray] | None,
    verbose: bool = True,
) -> list | None:
    """Phase 4: least-squares refit of the student's convolutions, in place.

    Runs `tgc.reconstruction.reconstruct` when the student inherits the
    teacher's channels (`student.kept` is set) and `images` are given.

    Args:
        student: A slimmed student.
        teacher: The teacher.
        images: Calibration inputs (a few dozen training views), a function
            returning them (called only when the refit runs), or `None` to
            skip the refit.
        verbose: Show progress.

    Returns:
        The per-layer fits, or `None` when skipped.
    """
    if images is None or student.kept is None:
        return None
    if callable(images):
        images = images()
    return tgc.reconstruction.reconstruct(
        student.generator, teacher, images, student.kept, verbose=verbose
    )


class OutputMatcher(MultiWorkerFit, keras.Model):
    """A generator, trained alone on `(input, target image)` batches.

    The model `match` compiles with a mean-squared-error loss: `fit` trains
    the wrapped generator in place; the generator itself stays uncompiled.

    Args:
        generator: The student generator.
    """

    def __init__(self, generator: keras.Model, **kwargs):
        super().__init__(name="output_matcher", **kwargs)
        self.generator = generator
        self.built = True  # the generator is (BackupAndRestore needs it)

    def call(self, inputs, training=False):
        return self.generator(inputs, training=training)

    def train_step(self, data):
        return self.reducible_logs(super().train_step(data))

    def test_step(self, data):
        return self.reducible_logs(super().test_step(data))


def _teacher_targets(data, teacher: keras.Model):
    """`(x, teacher(x))` batches from a dataset of `x` or `(x, anything)`."""

    def pair(x, *_):
        return x, teacher(x, training=False)

    return data.map(pair)


def match(
    student: Student,
    teacher: keras.Model,
    setup: Setup,
    data,
    steps: int,
    *,
    learning_rate: float = 1e-3,
    steps_per_epoch: int = 50,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    backup_dir: str | None = None,
    verbose: int = 1,
) -> dict | None:
    """Phase 4b: the student alone learns the teacher's outputs (MSE).

    Adam at `learning_rate`, cosine-decayed to 0 over `steps`, on the
    task's batches. Measured on the vintage task at 1/20 of the teacher's
    MACs (see README, "Student quality"): per step about a seventh of the
    distillation step's cost, which runs the teacher's feature taps and a
    discriminator.

    Args:
        student: A slimmed (and maybe refitted) student; its generator is
            trained in place.
        teacher: The teacher: in `"unpaired"` mode the targets are its
            outputs; in `"paired"` mode the batches' targets are used.
        setup: Mode, seed and XLA.
        data: A repeating dataset of training batches (as `search`).
        steps: Steps of this phase; 0 skips it.
        learning_rate: Adam's initial learning rate.
        steps_per_epoch: Steps between checkpoints and epoch callbacks.
        callbacks: More callbacks (e.g. `training.callbacks.Evaluate`).
        backup_dir: Where `BackupAndRestore` keeps this phase's backup.
        verbose: `fit`'s verbosity.

    Returns:
        The `fit` history, or `None` when `steps` is 0.
    """
    if steps <= 0:
        return None
    keras.utils.set_random_seed(setup.seed)
    if setup.mode == "unpaired":
        data = _teacher_targets(data, teacher)
    matcher = OutputMatcher(student.generator)
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, steps)
    matcher.compile(
        optimizer=keras.optimizers.Adam(schedule),
        loss="mse",
        jit_compile=setup.jit_compile,
    )
    return _fit(matcher, data, steps, steps_per_epoch, callbacks, backup_dir, verbose)


def finetune(
    method: Method,
    student: Student,
    teacher: keras.Model,
    setup: Setup,
    data,
    steps: int,
    *,
    steps_per_epoch: int = 50,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    backup_dir: str | None = None,
    verbose: int = 1,
) -> dict | None:
    """Phase 5: the method's fine-tuning trainer, fit for `steps` steps.

    Arguments as `search`; the method's `finetune_callbacks` run first.
    The student's generator and discriminator are trained in place (the
    trainer holds the same models). A method whose `finetune_stages`
    splits the steps gets one `finetune_trainer` call and one `fit` per
    stage, in order (each backed up under `backup_dir/stage<i>`; a stage of
    0 steps gets the call but no `fit`).

    Returns:
        The `fit` history (the stages' histories concatenated: `step`
        counts from the first stage's start, a value a stage did not log
        is `None`), or `None` when `steps` is 0.
    """
    if steps <= 0:
        return None
    stages = list(method.finetune_stages(steps))
    if sum(stages) != steps or min(stages) < 0:
        raise ValueError(
            f"{type(method).__name__}.finetune_stages({steps}) returned {stages}: "
            f"the stages must be >= 0 steps and add up to {steps}."
        )
    history, done = {}, 0
    for index, stage_steps in enumerate(stages):
        keras.utils.set_random_seed(setup.seed + index)
        staged = {"stage": index} if len(stages) > 1 else {}
        trainer = method.finetune_trainer(
            student, teacher, setup, stage_steps, **staged
        )
        if not stage_steps:  # set up (the method counts its stages), not fit
            continue
        run = [*method.finetune_callbacks(student, setup, stage_steps), *callbacks]
        backup = backup_dir
        if backup_dir and len(stages) > 1:
            backup = os.path.join(backup_dir, f"stage{index}")
        # The batches that one fit of all the stages' steps would see.
        batches = data.skip(done) if done else data
        stage = _fit(
            trainer, batches, stage_steps, steps_per_epoch, run, backup, verbose
        )
        _extend_history(history, stage, done)
        done += stage_steps
    return history


def _extend_history(history: dict, stage: dict, offset: int) -> None:
    """Appends a fine-tuning stage's `fit` history (`offset` steps in)."""
    before, epochs = len(history.get("step", [])), len(stage.get("step", []))
    for key, values in stage.items():
        if key == "trained_steps":
            history[key] = history.get(key, 0) + values
        elif key == "step":  # each stage's trainer counts from 0
            history[key] = history.get(key, []) + [offset + v for v in values]
        else:
            history[key] = history.get(key, [None] * before) + list(values)
    for key, values in history.items():  # what this stage did not log
        if key != "trained_steps" and len(values) < before + epochs:
            values.extend([None] * epochs)


DISCRIMINATOR_REPORT = ("d_macs", "d_macs_before", "d_live_fraction")


def discriminator_report(student: Student) -> dict:
    """What a method recorded on slimming its discriminator, for reports.

    A method that slims its discriminator after training (GCC) keeps in
    `student.state`: `d_macs` and `d_macs_before`, the discriminator's
    MACs after and before slimming (at the budget's input size), and
    `d_live_fraction`, `{convolution: fraction of its output channels
    kept}`.

    Returns:
        Those entries present in `student.state` (empty when none).
    """
    state = student.state
    return {key: state[key] for key in DISCRIMINATOR_REPORT if key in state}


def method_state(student: Student) -> dict:
    """The scalar facts a method recorded in `student.state`, for reports.

    For example GAN Compression's chosen `config` or DMAD's `budget`.
    Objects (controllers, searches, discriminators) and the discriminator
    facts of `discriminator_report` are left out.

    Returns:
        `{key: value}` for the string and number entries of `student.state`.
    """
    return {
        key: value
        for key, value in student.state.items()
        if isinstance(value, str | int | float)
        and not isinstance(value, bool)
        and key not in DISCRIMINATOR_REPORT
    }


# Checkpoints between phases ---------------------------------------------------


def _save(student: Student, directory: str) -> None:
    """Saves `student` to `directory` as a whole (atomically; the chief only)."""
    with distribute.chief_path(directory, directory=True) as temporary:
        student.generator.save(os.path.join(temporary, "generator.keras"))
        student.discriminator.save(os.path.join(temporary, "discriminator.keras"))
        if student.kept is not None:
            np.savez(os.path.join(temporary, "kept.npz"), **student.kept)
        with open(os.path.join(temporary, "student.json"), "w") as file:
            json.dump({"inherits_teacher": student.inherits_teacher}, file)


def _load(directory: str) -> Student | None:
    """The student saved in `directory`, or `None` if it was not finished."""
    if not os.path.exists(os.path.join(directory, "student.json")):
        return None
    with open(os.path.join(directory, "student.json")) as file:
        info = json.load(file)
    kept_path = os.path.join(directory, "kept.npz")
    kept = None
    if os.path.exists(kept_path):
        with np.load(kept_path) as saved:
            kept = {name: saved[name] for name in saved.files}
    return Student(
        keras.models.load_model(os.path.join(directory, "generator.keras")),
        keras.models.load_model(os.path.join(directory, "discriminator.keras")),
        inherits_teacher=info["inherits_teacher"],
        kept=kept,
    )


def _claim(checkpoint_dir: str, run: dict) -> None:
    """Records what `checkpoint_dir` holds; refuses a different run."""
    os.makedirs(checkpoint_dir, exist_ok=True)
    path = os.path.join(checkpoint_dir, "pipeline.json")
    if os.path.exists(path):
        with open(path) as file:
            previous = json.load(file)
        if previous != run:
            raise ValueError(
                f"{checkpoint_dir} holds checkpoints of another run ({previous}); "
                f"this one is {run}. Use another directory or delete it."
            )
        return
    if distribute.is_chief():
        tgc.reports.write_json(path, run)


def check_steps(method: Method, steps: int) -> None:
    """Refuses `steps` that `compress` cannot share out for `method`.

    `steps=0` (only the phases up to `match`) suits a method without a
    search; one that searches would slim a student it never searched.

    Raises:
        ValueError: If `steps` is negative, or 0 for a method with a search.
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}.")
    if steps == 0 and method.split_steps(SEARCH_PROBE_STEPS)["search"]:
        raise ValueError(
            f"steps=0 leaves method {method.name!r} no steps for its search: "
            "give it steps, or use a method without a search (distill, "
            "uniform) to ship the matched student."
        )


def compress(
    method: Method,
    teacher: keras.Model,
    data,
    setup: Setup,
    *,
    steps: int,
    steps_per_epoch: int = 50,
    calibration: np.ndarray | Callable[[], np.ndarray] | None = None,
    colour_map: tuple[np.ndarray, np.ndarray] | None = None,
    detail_skip: float = 0.0,
    match_steps: int = 0,
    match_learning_rate: float = 1e-3,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    checkpoint_dir: str | None = None,
    after_phase: Callable[[str, Student], None] | None = None,
    validation_batches: int = 4,
    verbose: int = 1,
) -> Compressed:
    """Runs every phase of `method`; returns the plain, budget-checked student.

    Call it inside a `tf.distribute` strategy's scope to train distributed.

    Args:
        method: A method, e.g. `training.methods.get("distill")`.
        teacher: The trained generator to compress.
        data: A repeating `tf.data.Dataset` of training batches (as the
            method's trainers read them: `(x, y)` when `setup.mode` is
            `"paired"`), e.g. with `drop_remainder=True` for XLA. Each
            phase reads it with an iterator of its own; for reproducible
            runs every iterator must read the same stream (build a
            reshuffling dataset with `tgc.data.pipeline.replayable`, as
            the tasks' and `tgc.data`'s repeating datasets are).
        setup: Budget and training settings.
        steps: Training steps of all phases together (`method.split_steps`).
        steps_per_epoch: Steps between checkpoints and epoch callbacks.
        calibration: Images (or a function returning them) for the
            least-squares refit, and `setup.calibration` when that is `None`
            (`distill` selects channels on them); `None` turns the refit
            off.
        colour_map: `(matrix, bias)` of a global colour skip around the
            student (see `slim`).
        detail_skip: The blur sigma in pixels of a detail skip around the
            student (see `slim`); 0: none.
        match_steps: Steps of the `match` phase after the refit (the
            student alone against the target images; on top of `steps`).
        match_learning_rate: Its Adam learning rate.
        callbacks: More callbacks for all training phases (e.g.
            `training.callbacks.Evaluate`).
        checkpoint_dir: Where to keep backups and finished phases; rerun
            the same call to resume. `None`: no checkpoints.
        after_phase: Called as `after_phase(phase, student)` after each
            phase that ran (e.g. to score the untrained student).
        validation_batches: Batches of `data` that become
            `setup.validation` when it is `None` (`validation_slice`,
            computed only if the method asks for them).
        verbose: 0 silent, 1 progress.

    Returns:
        A `Compressed` result.

    Raises:
        BudgetError: If the budget is out of reach for the method, or (a
            bug in the method) its finished student is over budget.
        ValueError: If `checkpoint_dir` holds another run's checkpoints, on
            `steps` that `check_steps` refuses, or when both skips are asked
            for (and the method takes both).
    """
    check_steps(method, steps)
    split = method.split_steps(steps)
    if sorted(split) != ["finetune", "search"] or sum(split.values()) != steps:
        raise ValueError(
            f"{type(method).__name__}.split_steps({steps}) returned {split}: it "
            f"must be {{'search': n, 'finetune': m}} with n + m = {steps}."
        )
    if not method.colour_skip:
        colour_map = None
    if not method.detail_skip:
        detail_skip = 0.0
    seconds, histories = {}, {}
    directories, refit_images = {}, None
    if setup.validation is None:
        setup = dataclasses.replace(
            setup,
            validation=functools.cache(
                functools.partial(
                    validation_slice, data, teacher, setup.mode, validation_batches
                )
            ),
        )
    if calibration is not None:
        # One array for the method's build and the refit, computed when first
        # needed (a resumed run may need neither).
        given = calibration
        calibration = functools.cache(given if callable(given) else lambda: given)
        if setup.calibration is None:
            setup = dataclasses.replace(setup, calibration=calibration)
    if checkpoint_dir and setup.work_dir is None:
        setup = dataclasses.replace(
            setup, work_dir=os.path.join(checkpoint_dir, "method")
        )
    # The generator the method builds and searches leaves room for the skips
    # (and both together are refused here, before any work).
    skip = skip_macs(setup.budget.input_shape, colour_map, detail_skip)
    if checkpoint_dir:
        _claim(
            checkpoint_dir,
            {
                **method.describe(),
                "budget_macs": setup.budget.macs,
                "steps": steps,
                "seed": setup.seed,
                "colour_skip": colour_map is not None,
                **({"detail_skip": detail_skip} if detail_skip else {}),
                "match_steps": match_steps,
                "match_learning_rate": match_learning_rate,
            },
        )
        directories = {
            name: os.path.join(checkpoint_dir, name)
            for name in (
                "searched",
                "refitted",
                "matched",
                "backup_search",
                "backup_match",
                "backup_finetune",
            )
        }

    def log(text: str) -> None:
        if verbose:
            print(f"      {method.name}: {text}", flush=True)

    def timed(phase: str, function, *args, **kwargs):
        start = time.perf_counter()
        result = function(*args, **kwargs)
        seconds[phase] = time.perf_counter() - start
        return result

    def finished(phase: str, student: Student) -> None:
        if after_phase is not None:
            after_phase(phase, student)

    training_kwargs = {
        "steps_per_epoch": steps_per_epoch,
        "callbacks": callbacks,
        "verbose": verbose,
    }
    student = _load(directories["refitted"]) if directories else None
    if student is not None:
        log("resuming from the refitted student")
    else:
        student = _load(directories["searched"]) if directories else None
        if student is not None:
            log("resuming from the searched student")
        else:
            log(f"building the student for {setup.budget.describe()}")
            student = timed("build", build, method, teacher, setup, skip)
            finished("build", student)
            inner = dataclasses.replace(setup, budget=setup.budget.minus(skip))
            if split["search"]:
                log(f"searching, {split['search']} steps")
                histories["search"] = timed(
                    "search",
                    search,
                    method,
                    student,
                    teacher,
                    inner,
                    data,
                    split["search"],
                    backup_dir=directories.get("backup_search"),
                    **training_kwargs,
                )
                finished("search", student)
                if directories:
                    _save(student, directories["searched"])
        student = timed("slim", slim, method, student, colour_map, detail_skip)
        finished("slim", student)
        if student.kept is not None and calibration is not None:
            images = calibration()
            refit_images = len(images)
            log(f"refitting to the teacher by least squares on {refit_images} images")
            timed("refit", refit, student, teacher, images, verbose=bool(verbose))
            finished("refit", student)
        if directories:
            _save(student, directories["refitted"])
    matched = _load(directories["matched"]) if match_steps and directories else None
    if matched is not None:
        log("resuming from the matched student")
        student = matched
    elif match_steps:
        log(f"matching the teacher's outputs, {match_steps} steps")
        histories["match"] = timed(
            "match",
            match,
            student,
            teacher,
            setup,
            data,
            match_steps,
            learning_rate=match_learning_rate,
            backup_dir=directories.get("backup_match"),
            **training_kwargs,
        )
        finished("match", student)
        if directories:
            _save(student, directories["matched"])
    macs = tgc.profile(student.generator, setup.budget.input_shape).macs
    setup.budget.check_met(macs, f"Method {method.name!r}'s student")
    if split["finetune"]:
        log(f"fine-tuning, {split['finetune']} steps")
        histories["finetune"] = timed(
            "finetune",
            finetune,
            method,
            student,
            teacher,
            setup,
            data,
            split["finetune"],
            backup_dir=directories.get("backup_finetune"),
            **training_kwargs,
        )
        finished("finetune", student)
    trained = {
        phase: history.pop("trained_steps")
        for phase, history in histories.items()
        if history is not None
    }
    skips = {"colour_skip": colour_map is not None, "detail_skip": detail_skip}
    return Compressed(
        student, macs, split, seconds, histories, refit_images, trained, skips
    )
