r"""Compress a generator on a task: your teacher and photos, or the built-in task.

    python -m training.train --teacher=G.pth --photos=my_photos/ [--held_out=DIR]
    python -m training.train --teacher=G.keras --pairs=facades/train
    python -m training.train --output_dir=outputs/vintage      # the built-in task
    python -m training.train --photo_set=extended --match_steps=1600 --steps=0 \
        --nocolour_skip --detail_skip=2 \
        --dead_leaves=400 --dead_leaves_fov=0.5            # what `make train` runs
    python -m training.train --method=uniform --macs_ratio=25
    python -m training.train --method=distill --method_options=lambda_distill=2

The task (`training.tasks`): with `--teacher` (a `.pth` PyTorch checkpoint,
read without torch, or a `.keras` file) and `--photos`, your generator's
outputs on views of your photos are the targets; `--pairs` takes AB images
(input left, target right) instead; `--held_out` is a folder held out for
the final score, else `--held_out_fraction` of your files (seeded, by
file). Without them: the pretrained vintage CycleGAN teacher on the
built-in photos (the README's main job). The view settings (`--photo_size`,
`--crop_size`, `--crops_per_photo`, ...) say how many teacher runs the data
cost; the teacher's outputs are cached on disk. `--dead_leaves=N` adds N
synthetic dead-leaves images to the training photos
(`tgc.data.dead_leaves_photos`; `--dead_leaves_fov` frames a fraction of
them in a circular field of view), labelled by the teacher as the photos are;
`make train` adds 400, half of them framed.

`--method` is any registered method (`training.methods.available()`), run
through its phases by `training.pipeline` at `--macs_ratio` (default 20:
the student costs at most 1/20 of the teacher's MACs at 256x256) or
`--macs_budget` G MACs, for `--steps` training steps in all; its knobs are
`--method_options=key=value,...`. The default, `distill`, is the
distillation baseline: the teacher cut to the budget, keeping the channels
its next layers need most by greedy least-squares selection on
`--reconstruction_views` training views (`tgc.pruning.greedy_paths`;
`--method_options=selection=l1` keeps the largest filters instead), its
convolutions refitted to the teacher by least squares on the same views
(`tgc.reconstruction`), then matched to the teacher's outputs for
`--match_steps` steps (MSE, the student alone) and trained with pixel +
feature distillation + a GAN loss (`--steps=0`: no such steps; the
matched student is shipped). With `--colour_skip` (default) the student
is wrapped as `y = colour_map(x) + student(x)`, starting at the task's
least-squares colour map (`tgc.models.with_colour_skip`); `make train`
turns it off, which scored higher on the held-out photos (README,
"Student quality at 1/20"). `--detail_skip=sigma` (off by default) wraps
the student as `y = student(x) + A (x - blur(x))`, the input's detail
finer than a Gaussian of `sigma` pixels through a trainable colour matrix
`A` (`tgc.models.with_detail_skip`): detail without tone; `make train`
uses `--detail_skip=2`.

Training checkpoints to `<output_dir>/checkpoints/` every epoch and after
each phase; run the same command again after an interruption and it resumes
there. `<output_dir>/run.json` names the run: a rerun with other settings
is refused (`--overwrite` replaces the other run's results). `--strategy`
trains under a `tf.distribute` strategy (`training.distribute`;
`multi_worker` reads `TF_CONFIG`, and only the chief writes files).

Then `training.ship` writes `student.keras`, `student.tflite` (fp32),
`student_int8.tflite`, `teacher.tflite`, `samples.png` (input | teacher |
student | |teacher - student| x4) and `report.md`/`report.json` (MACs,
params, LiteRT latency and speed-up, PSNR/detail PSNR/SSIM/FD/KID vs the
teacher on the held-out photos, next to the identity and colour-map
references, and the wall time of every phase). With `--fold_norms` (off by default: it
costs quality) the `.tflite` files, and the student's row, are of the student with its
instance norms frozen and folded into its convolutions (faster; the
report's `student_unfolded` row scores the trained student itself).
Methods write their own reports there too (`Setup.report_dir`): `dmad`
writes `mask_trajectory.png` and `.json` (live channels and their MACs at
every step of its mask search) when the search ends.
TensorFlow's and LiteRT's C++ log lines are
filtered out unless `--verbose` (`tfgancompress.console`).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable

import keras
import numpy as np
from absl import app, flags, logging

import tfgancompress as tgc
from training import callbacks, distribute, methods, pipeline, ship, tasks
from training.budget import DEFAULT_MACS_RATIO, Budget, BudgetError

# The run's settings besides the task's (`tasks.DEFAULTS`).
RUN_DEFAULTS = {
    "method": "distill",
    "method_options": "",
    "macs_ratio": DEFAULT_MACS_RATIO,
    "macs_budget": None,
    "colour_skip": True,
    "detail_skip": 0.0,
    "reconstruction_views": 64,
    "match_steps": 1000,
    "match_learning_rate": 1e-3,
    "steps": 150,
    "steps_per_epoch": 50,
    "batch_size": 8,
    "learning_rate": 2e-4,
    "ndf": 32,
    "latency_runs": 10,
    "fold_norms": False,
    "seed": 0,
    "jit_compile": True,
    "progress": 1,
    "strategy": "default",
    "ship": True,
    "output_dir": "outputs/vintage",
    "overwrite": False,
}
DEFAULTS = {**RUN_DEFAULTS, **tasks.DEFAULTS}

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Defines the command-line flags (only when run as a script)."""
    flags.DEFINE_string(
        "method",
        DEFAULTS["method"],
        "Compression method (training.methods.available(): "
        f"{', '.join(methods.available())}).",
    )
    flags.DEFINE_list(
        "method_options",
        [],
        "The method's options as key=value,... (an unknown key is an error "
        "naming the known ones).",
    )
    define_run_flags()
    flags.DEFINE_integer(
        "steps",
        DEFAULTS["steps"],
        "Training steps of all phases together (the method splits them); 0: "
        "none (a method without a search then stops after the match phase).",
        lower_bound=0,
    )
    flags.DEFINE_integer(
        "steps_per_epoch",
        DEFAULTS["steps_per_epoch"],
        "Steps between checkpoints and validation scores.",
        lower_bound=1,
    )
    flags.DEFINE_string("output_dir", DEFAULTS["output_dir"], "Where to write results.")
    flags.DEFINE_bool(
        "overwrite",
        DEFAULTS["overwrite"],
        "Replace the results of a different run in --output_dir (without it, "
        "such a run is refused; the same run resumes).",
    )
    flags.DEFINE_bool(
        "ship",
        DEFAULTS["ship"],
        "After training, export, score and time the student (off: stop at "
        "student.keras, e.g. to ship it elsewhere with training.export).",
    )
    flags.DEFINE_enum(
        "strategy",
        DEFAULTS["strategy"],
        distribute.STRATEGIES,
        "tf.distribute strategy: default (one device), mirrored (all devices "
        "of this machine), multi_worker (the cluster in TF_CONFIG; start the "
        "same command on every worker), tpu.",
    )
    tasks.define_flags()


def define_run_flags() -> None:
    """Flags `training.train` and `training.bench` share (budget, training)."""
    flags.DEFINE_float(
        "macs_ratio",
        DEFAULTS["macs_ratio"],
        "The student costs at most 1/macs_ratio of the teacher's MACs at 256x256.",
        lower_bound=1.0,
    )
    flags.DEFINE_float(
        "macs_budget",
        None,
        "Absolute budget: student G MACs (1e9) at 256x256; overrides --macs_ratio.",
    )
    flags.DEFINE_bool(
        "colour_skip",
        DEFAULTS["colour_skip"],
        "Wrap the student in a global colour skip (y = colour map + student).",
    )
    flags.DEFINE_float(
        "detail_skip",
        DEFAULTS["detail_skip"],
        "Blur sigma in pixels of a detail skip around the student "
        "(y = student + A (x - blur(x))); 0: none.",
        lower_bound=0.0,
    )
    flags.DEFINE_integer(
        "reconstruction_views",
        DEFAULTS["reconstruction_views"],
        "Training views on which a student that inherits the teacher's channels "
        "is refitted to it by least squares before fine-tuning (0: off).",
        lower_bound=0,
    )
    flags.DEFINE_integer(
        "match_steps",
        DEFAULTS["match_steps"],
        "Steps after the refit in which the student alone learns the teacher's "
        "outputs (MSE; a fraction of a distillation step's cost); 0: off.",
        lower_bound=0,
    )
    flags.DEFINE_float(
        "match_learning_rate",
        DEFAULTS["match_learning_rate"],
        "Adam learning rate of the match phase, cosine-decayed to 0.",
    )
    flags.DEFINE_integer(
        "batch_size", DEFAULTS["batch_size"], "Pairs per step.", lower_bound=1
    )
    flags.DEFINE_float(
        "learning_rate",
        DEFAULTS["learning_rate"],
        "Adam learning rate (G and D), cosine-decayed to 0 over --steps.",
    )
    flags.DEFINE_integer("ndf", DEFAULTS["ndf"], "Discriminator width.", lower_bound=1)
    flags.DEFINE_integer(
        "latency_runs", DEFAULTS["latency_runs"], "Interleaved LiteRT timing rounds."
    )
    flags.DEFINE_bool(
        "fold_norms",
        DEFAULTS["fold_norms"],
        "Ship the student with its instance norms frozen (statistics of the "
        "reference views) and folded into the convolutions: faster files, a "
        "slightly different function, scored as shipped. Not part of the "
        "run key: changing it re-exports, never retrains.",
    )
    flags.DEFINE_integer("seed", DEFAULTS["seed"], "Random seed.")
    flags.DEFINE_bool(
        "jit_compile", DEFAULTS["jit_compile"], "Compile the train steps with XLA."
    )
    flags.DEFINE_bool(
        "verbose",
        False,
        "Show TensorFlow's and LiteRT's C++ log lines and INFO logs.",
    )


def settings(overrides: dict) -> dict:
    """`DEFAULTS` updated with `overrides`.

    Raises:
        ValueError: On a key `DEFAULTS` does not have.
    """
    unknown = sorted(set(overrides) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"Unknown settings {unknown}; known: {sorted(DEFAULTS)}.")
    return {**DEFAULTS, **overrides}


# What a trained student depends on, besides the method, budget and task.
RUN_KEYS = (
    "colour_skip",
    "reconstruction_views",
    "match_steps",
    "match_learning_rate",
    "steps",
    "steps_per_epoch",
    "batch_size",
    "learning_rate",
    "ndf",
    "seed",
)


def run_settings(
    method: methods.Method, budget: Budget, config: dict, task: tasks.TaskData
) -> dict:
    """What names one run: method, options, budget, training settings, data.

    A detail skip enters only when on, so runs without one keep their keys.
    """
    return {
        **method.describe(),
        "macs_budget": budget.macs,
        "data": task.key,
        **{key: config[key] for key in RUN_KEYS},
        **({"detail_skip": config["detail_skip"]} if config["detail_skip"] else {}),
    }


def run_key(
    method: methods.Method, budget: Budget, config: dict, task: tasks.TaskData
) -> str:
    """A short hash naming one run (`run_settings`)."""
    text = json.dumps(run_settings(method, budget, config, task), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


# What a run writes to its output folder besides `checkpoints/`.
OUTPUT_FILES = (
    "student.keras",
    "student.tflite",
    "student_int8.tflite",
    "teacher.tflite",
    "samples.png",
    "report.md",
    "report.json",
    "mask_trajectory.json",
    "mask_trajectory.png",
)


def claim_output_dir(output_dir: str, settings: dict, overwrite: bool) -> None:
    """Records in `<output_dir>/run.json` which run writes there.

    The same run (a rerun after an interruption) resumes; a run with other
    settings is refused unless `overwrite`, which deletes the previous run's
    results (`OUTPUT_FILES`; checkpoints are kept per run) first.

    Raises:
        FileExistsError: If `output_dir` holds another run's results and
            `overwrite` is False.
    """
    path = os.path.join(output_dir, "run.json")
    if os.path.exists(path):
        with open(path) as file:
            previous = json.load(file)
        current = json.loads(json.dumps(settings))  # as JSON reads it back
        if previous == current:
            return
        changed = sorted(
            key
            for key in set(previous) | set(current)
            if previous.get(key) != current.get(key)
        )
        if not overwrite:
            differences = ", ".join(
                f"{key}: {previous.get(key)!r} -> {current.get(key)!r}"
                for key in changed
            )
            raise FileExistsError(
                f"{output_dir} holds the results of a run with other settings "
                f"({differences}). Use another --output_dir, or --overwrite to "
                "replace them."
            )
        for name in OUTPUT_FILES:
            if os.path.exists(os.path.join(output_dir, name)):
                os.remove(os.path.join(output_dir, name))
    tgc.reports.write_json(path, settings)


def _discriminator_macs(discriminator, budget: Budget) -> int:
    shape = (*budget.input_shape[:2], discriminator.input_shape[-1])
    return tgc.profile(discriminator, shape).macs


class _DiscriminatorMacs:
    """Records a gated discriminator's MACs before and after `slim`.

    Kept in `<checkpoint_dir>/d_macs.json`, so a resumed run still knows them.
    """

    def __init__(self, budget: Budget, checkpoint_dir: str | None):
        self.budget = budget
        self.path = checkpoint_dir and os.path.join(checkpoint_dir, "d_macs.json")
        self.macs: dict[str, int] = {}
        if self.path and os.path.exists(self.path):
            with open(self.path) as file:
                self.macs = json.load(file)

    def __call__(self, phase: str, student) -> None:
        gated = callbacks.gates_of(student.discriminator)
        if phase in ("build", "search") and gated:
            self.macs = {
                "before": _discriminator_macs(student.discriminator, self.budget)
            }
        elif phase == "slim" and "before" in self.macs:
            self.macs["after"] = _discriminator_macs(student.discriminator, self.budget)
            if self.path and distribute.is_chief():
                tgc.reports.write_json(self.path, self.macs)


def budget_for(task: tasks.TaskData, config: dict) -> Budget:
    """The MACs budget of the settings (`macs_ratio` or `macs_budget`)."""
    return Budget.resolve(task.teacher, config["macs_ratio"], config["macs_budget"])


def compress(
    method: methods.Method,
    task: tasks.TaskData,
    config: dict,
    budget: Budget,
    checkpoint_dir: str | None = None,
    after_phase: Callable | None = None,
    report_dir: str | None = None,
) -> tuple[pipeline.Compressed, dict]:
    """Runs `method` through the pipeline on `task`.

    Args:
        method: A registered method (`training.methods.get`).
        task: The loaded task.
        config: Settings (`DEFAULTS` keys).
        budget: The MACs budget (`budget_for`).
        checkpoint_dir: Where the run checkpoints and resumes (one folder
            per run: `run_key`); `None`: no checkpoints.
        after_phase: Passed to `pipeline.compress`.
        report_dir: Where the method writes its reports (`Setup.report_dir`,
            e.g. DMAD's `mask_trajectory.png`); `None`: none.

    Returns:
        `(result, d_macs)`: `d_macs` is `{"before", "after"}` when the
        method slimmed a gated discriminator (plus `"live_fraction"`,
        `{convolution: fraction of its channels kept}`, when the method
        reports it, as GCC does), else empty.

    Raises:
        BudgetError: If the method cannot reach the budget.
    """
    setup = methods.Setup(
        budget,
        mode=task.mode,
        learning_rate=config["learning_rate"],
        ndf=config["ndf"],
        seed=config["seed"],
        jit_compile=config["jit_compile"],
        validation=task.validation,
        report_dir=report_dir,
    )
    if checkpoint_dir:
        os.makedirs(checkpoint_dir, exist_ok=True)
    d_macs = _DiscriminatorMacs(budget, checkpoint_dir)

    def phase_done(phase, student):
        d_macs(phase, student)
        if after_phase is not None:
            after_phase(phase, student)

    views = config["reconstruction_views"]
    skip = config["colour_skip"] and method.colour_skip
    result = pipeline.compress(
        method,
        task.teacher,
        distribute.shard(task.dataset(config["batch_size"], config["seed"])),
        setup,
        steps=config["steps"],
        steps_per_epoch=config["steps_per_epoch"],
        calibration=(lambda: task.calibration(views, config["seed"]))
        if views
        else None,
        colour_map=task.colour_map if skip else None,
        detail_skip=config["detail_skip"],
        match_steps=config["match_steps"],
        match_learning_rate=config["match_learning_rate"],
        callbacks=[callbacks.Evaluate(*task.validation)] if task.validation else [],
        checkpoint_dir=checkpoint_dir,
        after_phase=phase_done,
        verbose=config["progress"],
    )
    return result, {**d_macs.macs, **_reported_discriminator(result.student)}


def _reported_discriminator(student) -> dict:
    """What the method itself recorded on slimming its discriminator (GCC)."""
    reported = pipeline.discriminator_report(student)
    if "d_macs" not in reported:
        return {}
    return {
        "before": reported["d_macs_before"],
        "after": reported["d_macs"],
        "live_fraction": reported.get("d_live_fraction", {}),
    }


def _generate(generator, inputs: np.ndarray, batch_size: int = 2) -> np.ndarray:
    """`generator` on `inputs` in batches, on this process alone (no `predict`,
    which would be a collective operation under a multi-worker strategy)."""
    return np.concatenate(
        [
            np.asarray(generator(inputs[i : i + batch_size], training=False))
            for i in range(0, len(inputs), batch_size)
        ]
    )


def _notes(facts: dict) -> list[str]:
    steps = facts["phase_steps"]
    if facts["initial_psnr"] is None:
        initial = "not measured (resumed from a checkpoint)."
    else:
        initial = f"{facts['initial_psnr']:.2f} dB PSNR " + (
            f"(refitted by least squares on {facts['reconstruction_views']} "
            "training views)."
            if facts["reconstruction_views"]
            else "(no least-squares refit)."
        )
    seconds = ", ".join(f"{k} {v:.0f} s" for k, v in facts["phase_seconds"].items())
    method_state = []
    if facts["method_state"]:  # e.g. gan_compression's chosen config
        items = ", ".join(f"{k}={v}" for k, v in facts["method_state"].items())
        method_state = [f"Method state: {items}.", ""]
    discriminator = []
    if facts["d_macs"]:
        d_macs = facts["d_macs"]
        live = ", ".join(
            f"{name} {fraction:.2f}"
            for name, fraction in d_macs.get("live_fraction", {}).items()
        )
        discriminator = [
            f"Discriminator slimmed from {d_macs['before'] / 1e9:.2f} to "
            f"{d_macs['after'] / 1e9:.2f} G MACs"
            + (f"; live channels per layer: {live}." if live else "."),
            "",
        ]
    return [
        f"`{facts['description']}` at a budget of {facts['budget']}.",
        "",
        f"{facts['steps']} steps (search {steps['search']}, fine-tuning "
        f"{steps['finetune']}) after {facts['match_steps']} match steps, "
        f"batch {facts['batch_size']}; "
        f"{facts['wall_seconds']:.0f} s in all ({seconds}).",
        "",
        f"Student before training: {initial}",
        "",
        f"Skips around the student: {_skips(facts)}.",
        "",
        *method_state,
        *discriminator,
    ]


def _skips(facts: dict) -> str:
    skips = ["the colour skip"] if facts["colour_skip"] else []
    if facts["detail_skip"]:
        skips.append(f"a detail skip (blur sigma {facts['detail_skip']:g} px)")
    return " and ".join(skips) or "none"


def run(**overrides) -> dict:
    """The whole job; returns the report (also written to `output_dir`).

    Args:
        **overrides: Values replacing `DEFAULTS` (the flags' defaults).

    Returns:
        The report; with `ship=False`, only `student` (its path),
        `phase_steps` and `trained_steps`; on a non-chief worker of a
        distributed run, only `phase_steps` and `trained_steps`.

    Raises:
        ValueError: On an unknown setting, method, option or strategy, a
            bad task (a missing folder, no usable image, ...), or `steps=0`
            for a method with a search.
        BudgetError: If the method cannot reach the MACs budget.
        FileExistsError: If `output_dir` holds another run's results and
            `overwrite` is False (`claim_output_dir`).
    """
    config = settings(overrides)
    method = methods.get(config["method"], config["method_options"])
    pipeline.check_steps(method, config["steps"])  # before any work
    start = time.perf_counter()
    distribution = distribute.strategy(config["strategy"])
    chief = distribute.is_chief(distribution)
    output_dir = config["output_dir"]
    if chief:
        os.makedirs(output_dir, exist_ok=True)
    seconds = {}
    print("[1/3] loading the task (teacher views are cached)", flush=True)
    task = tasks.from_settings(config)
    seconds["task"] = time.perf_counter() - start
    photos = task.photos
    print(
        f"      {task.description}: {photos['train']} training photos "
        f"({len(task.train[0])} views), {photos['validation']} validation, "
        f"{photos['held_out']} held out, {photos['reference']} reference",
        flush=True,
    )
    budget = budget_for(task, config)
    if chief:
        described = run_settings(method, budget, config, task)
        claim_output_dir(output_dir, described, config["overwrite"])
    inputs, targets = task.held_out
    initial = {}

    def score_untrained(phase, student):
        if phase in ("slim", "refit"):
            outputs = _generate(student.generator, inputs)
            initial["psnr"] = float(np.mean(tgc.metrics.psnr(targets, outputs)))
            print(f"      after {phase}: {initial['psnr']:.2f} dB PSNR on held-out")

    print(f"[2/3] compressing with {method.description}", flush=True)
    if distribution.num_replicas_in_sync > 1:
        print(
            f"      {config['strategy']}: {distribution.num_replicas_in_sync} "
            f"replicas, batch {config['batch_size']} in all"
            + ("" if chief else "; the chief writes checkpoints and results"),
            flush=True,
        )
    with distribution.scope():
        result, d_macs = compress(
            method,
            task,
            config,
            budget,
            os.path.join(
                output_dir, "checkpoints", run_key(method, budget, config, task)
            ),
            after_phase=score_untrained,
            report_dir=output_dir,
        )
    seconds.update(result.seconds)
    if result.trained_steps:
        steps = ", ".join(f"{k} {v}" for k, v in result.trained_steps.items())
        print(f"      trained steps: {steps}", flush=True)
    student_path = os.path.join(output_dir, "student.keras")
    with distribute.chief_path(student_path) as temporary:
        result.student.generator.save(temporary)
    if not chief:
        return {"phase_steps": result.steps, "trained_steps": result.trained_steps}
    if not config["ship"]:
        print(f"      student saved to {student_path} (--noship)", flush=True)
        return {
            "student": student_path,
            "phase_steps": result.steps,
            "trained_steps": result.trained_steps,
        }
    # Shipped from the file: plain variables, whatever the strategy.
    student = keras.models.load_model(student_path)

    print(
        f"[3/3] shipping: fp32 and int8 LiteRT, quality on {len(inputs)} held-out "
        "photos, timing",
        flush=True,
    )
    ship_start = time.perf_counter()
    report = ship.ship(
        student,
        task,
        output_dir,
        runs=config["latency_runs"],
        fold_norms=config["fold_norms"],
    )
    seconds["ship"] = time.perf_counter() - ship_start
    report.update(
        method=config["method"],
        photo_set=config["photo_set"],
        dead_leaves=config["dead_leaves"],
        dead_leaves_fov=config["dead_leaves_fov"],
        dead_leaves_one_hue=config["dead_leaves_one_hue"],
        strategy=config["strategy"],
        replicas=distribution.num_replicas_in_sync,
        description=method.description,
        method_options=method.option_values(),
        budget=budget.describe(),
        macs_budget=budget.macs,
        steps=config["steps"],
        match_steps=config["match_steps"],
        **result.skips,
        batch_size=config["batch_size"],
        phase_steps=result.steps,
        trained_steps=result.trained_steps,
        reconstruction_views=result.refit_images or 0,
        initial_psnr=initial.get("psnr"),
        d_macs=d_macs or None,
        method_state=pipeline.method_state(result.student),
        train_seconds=sum(
            result.seconds.get(phase, 0.0) for phase in ("search", "match", "finetune")
        ),
        phase_seconds=seconds,
        wall_seconds=time.perf_counter() - start,
    )
    ship.write_report(
        output_dir,
        report,
        f"{task.teacher.name} compressed with `{config['method']}`",
        _notes(report),
    )
    return report


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if 0 < FLAGS.steps < FLAGS.steps_per_epoch:
        raise app.UsageError("--steps_per_epoch must not exceed --steps.")
    try:  # fail before any work on a bad method or option
        methods.get(FLAGS.method, FLAGS.method_options)
    except ValueError as error:
        raise app.UsageError(str(error)) from error
    logging.set_verbosity(logging.INFO if FLAGS.verbose else logging.WARNING)
    try:
        run(**{key: FLAGS[key].value for key in DEFAULTS if key in FLAGS})
    except (BudgetError, OSError, ValueError) as error:
        if FLAGS.verbose:
            raise
        raise app.UsageError(str(error)) from error


def cli() -> None:
    """Console-script entry point."""
    define_flags()
    app.run(main)


if __name__ == "__main__":
    cli()
