"""Student-quality levers on the vintage task, one ablation row each.

    python -m benchmarks.quality [--rows=main_job,pixel_128] [--work_dir=...]
    python -m benchmarks.quality --runs=main_job_s0=outputs/vintage,...

Every row compresses the pretrained vintage CycleGAN teacher to the same
MACs budget (`--macs_budget`, default 2.84 G: 20x fewer than the teacher's
56.8 G at 256x256) and scores the student against the teacher on the 9
photos held out by source (256x256 central views): PSNR, SSIM and FD after
the least-squares refit ("untrained") and after the row's training, the
number of held-out photos on which the student beats the identity, and the
wall time of each phase. A row is a recipe: channel selection and width
allocation, calibration views of the refit, optional block-wise
reconstruction, and the fine-tune (the main job's pixel + feature
distillation + GAN step, or the cheap step: the student alone on cached
teacher outputs).

Finished rows are saved one by one under `--work_dir/rows/`; a killed run
resumes at the first unfinished row (refitted students are cached under
`--work_dir/students/`; a row with block-wise reconstruction starts from the
cached refitted student of its selection). Writes `quality.md`, `quality.json`
and `quality.png` to `--output_dir` after every row; the rows of the
`quality.json` found there that this work dir did not run stay in the tables,
marked as from an earlier run.

`--runs=label=run_dir,...` adds finished `python -m training.train` runs
(the main job's levers: photo set, match steps, fine-tune steps, colour
skip, tone jitter, seed) as a second table, "Main-job runs": their
reports' scores and phase seconds, and the photos above their identity
score from their `student.keras` rescored on the held-out photos
(`train_run_row`; no training). Without `--rows`, no harness row runs and
the harness's rows stay as `quality.json` has them; runs in `quality.json`
not given again stay, marked as from an earlier run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import time
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf
from absl import app, flags, logging

import tfgancompress as tgc
from benchmarks import tone
from training import budget as budget_lib
from training import methods, pipeline, tasks, train
from training.methods import base

FLAGS = flags.FLAGS
flags.DEFINE_list(
    "rows", None, "Rows to run (default: all, in table order; none with --runs)."
)
flags.DEFINE_list(
    "runs",
    None,
    "Finished `training.train` runs to score, as label=run_dir,... (no training).",
)
flags.DEFINE_string("output_dir", "benchmarks/results", "Where quality.md/json go.")
flags.DEFINE_string("work_dir", "outputs/quality", "Finished rows and students.")
flags.DEFINE_float("macs_budget", 2.84, "Student G MACs at 256x256.")
flags.DEFINE_integer("seed", 0, "Random seed.")


@dataclasses.dataclass(frozen=True)
class Views:
    """A set of cached training views: (view, teacher output on it).

    Attributes:
        crop: Side of the views.
        per_photo: Views per training photo (zoom crops).
        photo_size: Short side the photos are loaded at.
        jitter: Colour-jitter strength.
        central: The central square of each photo instead (one per photo,
            no jitter): the views the main job computes anyway to fit the
            colour map and calibrate int8.
        exposure: Also darken each view by a random factor (log-uniform
            in [0.1, 1] of its [0, 1] intensities) before the teacher runs
            on it (the harness's own views, cached under `--work_dir`).
    """

    crop: int = 128
    per_photo: int = 2
    photo_size: int = 256
    jitter: float = 0.5
    central: bool = False
    exposure: bool = False

    def key(self) -> str:
        if self.central:
            return f"central{self.crop}"
        key = f"c{self.crop}x{self.per_photo}s{self.photo_size}j{self.jitter:g}"
        return key + ("e" if self.exposure else "")


ZOOM_128 = Views()
CENTRAL_256 = Views(crop=256, photo_size=256, central=True)
ZOOM_256 = Views(crop=256, per_photo=1, photo_size=384)
MAIN_128 = Views(per_photo=12)  # the main job's training views


@dataclasses.dataclass(frozen=True)
class Recipe:
    """One ablation row.

    Attributes:
        note: What the row changes, for the table.
        selection: `"l1"` (filter L1 norm) or `"greedy"` (least-squares
            reconstruction error, `tgc.pruning.greedy_paths`).
        allocation: `"uniform"` (one keep ratio) or `"error_per_mac"`
            (`tgc.pruning.allocate_widths`; greedy selection only).
        calibration: Views the selection and the refit run on.
        calibration_count: How many of them.
        block_steps: Block-wise reconstruction steps per block after the
            refit (`tgc.reconstruction.reconstruct_blocks`; 0: off).
        finetune: `"distill"` (the main job's trainer: pixel + feature
            distillation + GAN, online teacher) or `"pixel"` (the student
            alone on cached teacher outputs).
        train_views: View sets the fine-tune draws from, in turn.
        steps: Fine-tune steps.
        batch_size: Views per step.
        learning_rate: Adam's initial rate (cosine-decayed to 0).
        loss: `"mse"` or `"l1"` (pixel fine-tune).
        eval_every: Held-out PSNR every this many steps (pixel fine-tune).
        fold_norms: Freeze the student's instance norms at the calibration
            views' statistics and fold them into its convolutions
            (`tgc.export.fold_instance_norms`) before the fine-tune.
    """

    note: str
    selection: str = "l1"
    allocation: str = "uniform"
    calibration: Views = ZOOM_128
    calibration_count: int = 64
    block_steps: int = 0
    finetune: str = "pixel"
    train_views: tuple[Views, ...] = (ZOOM_128,)
    steps: int = 600
    batch_size: int = 8
    learning_rate: float = 5e-4
    loss: str = "mse"
    eval_every: int = 100
    fold_norms: bool = False

    def student_key(self) -> str:
        """Names the initialised student (rows sharing it reuse it)."""
        return (
            f"{self.selection}-{self.allocation}-{self.calibration.key()}"
            f"-n{self.calibration_count}-b{self.block_steps}"
        )


ROWS = {
    "long_mse": Recipe(
        "cheap step, the main job's 4692 128-px views, MSE, Adam 1e-3, 1500 steps",
        train_views=(MAIN_128,),
        steps=1500,
        learning_rate=1e-3,
        eval_every=250,
    ),
    "long_fold": Recipe(
        "as long_mse, instance norms frozen and folded before the fine-tune",
        train_views=(MAIN_128,),
        steps=1500,
        learning_rate=1e-3,
        eval_every=250,
        fold_norms=True,
    ),
    "main_job": Recipe(
        "main job's fine-tune: distill + GAN, online teacher, 150 steps at 128",
        finetune="distill",
        steps=150,
        learning_rate=2e-4,
    ),
    "pixel_128": Recipe("cheap step: student alone, MSE on cached 128-px views"),
    "pixel_c256": Recipe(
        "cheap step on the central 256-px views (the reference set)",
        train_views=(CENTRAL_256,),
        steps=150,
    ),
    "greedy": Recipe(
        "greedy least-squares channel selection (tgc.pruning.greedy_paths), "
        "uniform widths; cheap step as pixel_128",
        selection="greedy",
    ),
    "greedy_long": Recipe(
        "greedy selection, uniform widths; cheap step on the 782 128-px views, "
        "Adam 1e-3, 3000 steps",
        selection="greedy",
        steps=3000,
        learning_rate=1e-3,
        eval_every=250,
    ),
    "greedy_alloc": Recipe(
        "greedy selection, widths allocated by error per MAC "
        "(tgc.pruning.allocate_widths); cheap step as pixel_128",
        selection="greedy",
        allocation="error_per_mac",
    ),
    "pixel_dark": Recipe(
        "cheap step on the 128-px views and as many darkened copies "
        "(exposure x0.1-1, teacher run on them)",
        train_views=(ZOOM_128, Views(exposure=True)),
    ),
    "greedy_dark": Recipe(
        "greedy selection, uniform widths; cheap step on the 128-px views and "
        "as many darkened copies, as pixel_dark",
        selection="greedy",
        train_views=(ZOOM_128, Views(exposure=True)),
    ),
    "pixel_jitter1": Recipe(
        "cheap step on 128-px views with full-strength colour jitter",
        train_views=(Views(jitter=1.0),),
    ),
    "blocks": Recipe(
        "block-wise reconstruction after the refit (200 Adam steps per block, "
        "tgc.reconstruction.reconstruct_blocks); cheap step as pixel_128",
        block_steps=200,
    ),
    "calib_192": Recipe(
        "refit on 192 calibration views instead of 64; cheap step as pixel_128",
        calibration_count=192,
    ),
    "calib_256": Recipe(
        "refit on 64 central 256-px views instead of 128-px zoom views; "
        "cheap step as pixel_128",
        calibration=CENTRAL_256,
    ),
    "pixel_mix": Recipe(
        "cheap step, 128-px zoom views and central 256-px views in turn",
        train_views=(ZOOM_128, CENTRAL_256),
        steps=300,
    ),
}


def _darkened(views: Views, teacher, seed: int, work_dir: str):
    """`views` without exposure, darkened at random, with the teacher's outputs."""
    path = os.path.join(work_dir, "views", f"{views.key()}-seed{seed}.npz")
    if os.path.exists(path):
        with np.load(path) as cached:
            return cached["inputs"], cached["targets"]
    inputs, _ = _views(dataclasses.replace(views, exposure=False), None, seed, "")
    rng = np.random.default_rng(seed + 1)
    factors = np.exp(rng.uniform(np.log(0.1), 0.0, (len(inputs), 1, 1, 1)))
    inputs = np.round(inputs * factors).astype(np.uint8)
    forward = tf.function(lambda x: teacher(x, training=False))
    targets = np.concatenate(
        [
            _as_uint8(
                np.clip(np.asarray(forward(_as_float(inputs[i : i + 16]))), -1, 1)
            )
            for i in range(0, len(inputs), 16)
        ]
    )
    os.makedirs(os.path.dirname(path), exist_ok=True)
    np.savez(path + ".partial.npz", inputs=inputs, targets=targets)
    os.replace(path + ".partial.npz", path)
    return inputs, targets


def _views(views: Views, teacher, seed: int, work_dir: str):
    """(inputs, teacher outputs) of a view set (cached on disk), as `uint8`."""
    if views.exposure:
        return _darkened(views, teacher, seed, work_dir)
    if views.central:
        dataset = tgc.data.vintage_pairs(
            "train",
            size=views.photo_size,
            crop_size=views.crop,
            training=False,
            batch_size=64,
        )
    else:
        dataset = tgc.data.vintage_pairs(
            "train",
            size=views.photo_size,
            crop_size=views.crop,
            crops_per_photo=views.per_photo,
            colour_jitter=views.jitter,
            training=True,
            batch_size=64,
            seed=seed,
            drop_remainder=False,
        )
    inputs, targets = (np.concatenate(part) for part in zip(*dataset, strict=True))
    return _as_uint8(inputs), _as_uint8(targets)


class _Comparison:
    """PSNR, SSIM and FD of outputs against fixed teacher outputs."""

    def __init__(self, targets: np.ndarray):
        self.targets = np.asarray(targets, np.float32)
        self.features = tgc.metrics.compute_features(self.targets)

    def score(self, outputs: np.ndarray) -> dict[str, float]:
        outputs = np.asarray(outputs, np.float32)
        frechet = tgc.metrics.FrechetDistance()
        frechet.update_features(
            real=self.features, fake=tgc.metrics.compute_features(outputs)
        )
        return {
            "psnr": float(np.mean(tgc.metrics.psnr(self.targets, outputs))),
            "ssim": float(np.mean(tgc.metrics.ssim(self.targets, outputs))),
            "fd": max(0.0, float(frechet.result())),
        }


class Task:
    """The teacher, held-out and reference views, colour map and budget."""

    def __init__(self, macs_budget: float, seed: int, work_dir: str):
        self.seed = seed
        self.work_dir = work_dir
        self.teacher = tgc.models.pretrained("vintage")
        loaded = tasks.load(seed=seed)
        self.held_out, self.reference = loaded.held_out, loaded.reference
        self.colour_map = tgc.models.fit_colour_map(*self.reference, seed=seed)
        self.comparison = _Comparison(self.held_out[1])
        inputs, targets = self.held_out
        self.identity_psnr = tgc.metrics.psnr(targets, inputs)
        self.macs_budget = int(macs_budget * 1e9)
        self.keep_ratio, _ = budget_lib.keep_ratio_for_budget(
            self.teacher, budget_lib.Budget(self.macs_budget), "l1"
        )
        self._views: dict[Views, tuple[np.ndarray, np.ndarray]] = {}

    def views(self, views: Views) -> tuple[np.ndarray, np.ndarray]:
        if views not in self._views:
            self._views[views] = _views(views, self.teacher, self.seed, self.work_dir)
        return self._views[views]

    def psnr(self, student) -> np.ndarray:
        inputs, targets = self.held_out
        return tgc.metrics.psnr(targets, student.predict(inputs, 2, verbose=0))

    def train_psnr(self, student, count: int = 45) -> float:
        """Mean PSNR on central views of training photos (fit, not quality).

        On `count` of the reference photos, evenly spread (all of them when
        there are fewer: the task now keeps 32).
        """
        inputs, targets = (_spread(images, count) for images in self.reference)
        return float(
            np.mean(tgc.metrics.psnr(targets, student.predict(inputs, 3, verbose=0)))
        )


def _spread(images: np.ndarray, count: int) -> np.ndarray:
    """`count` of `images` evenly spread (all of them when there are fewer)."""
    return images[:: max(1, len(images) // count)][:count]


def _as_uint8(images: np.ndarray) -> np.ndarray:
    """[-1, 1] floats -> `uint8` (exact for the cached PNG views)."""
    return np.round((images + 1.0) * 127.5).astype(np.uint8)


def _as_float(images: np.ndarray) -> np.ndarray:
    return images.astype(np.float32) / 127.5 - 1.0


def _greedy_paths(task: Task, recipe: Recipe, gated, calibration: np.ndarray):
    """`tgc.pruning.greedy_paths` on the calibration views (cached on disk)."""
    path = os.path.join(
        task.work_dir,
        "paths",
        f"{recipe.calibration.key()}-n{recipe.calibration_count}.pkl",
    )
    if os.path.exists(path):
        with open(path, "rb") as file:
            return pickle.load(file)
    start = time.perf_counter()
    paths = tgc.pruning.greedy_paths(gated, task.teacher, calibration, verbose=False)
    logging.info("greedy paths: %.0f s", time.perf_counter() - start)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".partial", "wb") as file:
        pickle.dump(paths, file)
    os.replace(path + ".partial", path)
    return paths


def _select(task: Task, recipe: Recipe, calibration: np.ndarray):
    """The gated teacher keeping the recipe's channels."""
    if recipe.selection == "l1":
        return tgc.pruning.l1_gated(task.teacher, task.keep_ratio)
    gated = tgc.pruning.add_gates(task.teacher, "binary")
    paths = _greedy_paths(task, recipe, gated, calibration)
    if recipe.allocation == "uniform":
        widths = tgc.pruning.uniform_widths(paths, task.keep_ratio)
    else:
        skip = 9 * 256 * 256  # the colour skip's 1x1 convolution
        widths = tgc.pruning.allocate_widths(gated, paths, task.macs_budget - skip)
    tgc.pruning.apply_paths(gated, paths, widths)
    logging.info(
        "greedy widths %s; errors there %s",
        widths,
        {p.name: round(float(p.errors[widths[p.name]]), 3) for p in paths},
    )
    return gated


def build_student(task: Task, recipe: Recipe, work_dir: str):
    """The recipe's student before fine-tuning, and what building it cost."""
    path = os.path.join(work_dir, "students", f"{recipe.student_key()}.keras")
    info_path = path + ".json"
    if os.path.exists(path) and os.path.exists(info_path):
        with open(info_path) as file:
            info = json.load(file)
        return keras.saving.load_model(path), info
    inputs, _ = task.views(recipe.calibration)
    chosen = np.random.default_rng(task.seed).permutation(len(inputs))
    calibration = _as_float(inputs[np.sort(chosen[: recipe.calibration_count])])
    if recipe.block_steps:
        # The refitted student of the same selection (cached, so shared with
        # the row without block-wise reconstruction), then the blocks.
        student, info = build_student(
            task, dataclasses.replace(recipe, block_steps=0), work_dir
        )
        info = {**info, "seconds": dict(info["seconds"])}
        seconds = info["seconds"]
        kept = tgc.surgery.kept_channels(_select(task, recipe, calibration))
        start = time.perf_counter()
        blocks = tgc.reconstruction.reconstruct_blocks(
            student,
            task.teacher,
            calibration,
            kept,
            steps=recipe.block_steps,
            verbose=False,
        )
        seconds["blocks"] = time.perf_counter() - start
        info["block_errors"] = [(b.name, b.error_before, b.error_after) for b in blocks]
    else:
        seconds = {}
        start = time.perf_counter()
        gated = _select(task, recipe, calibration)
        student = tgc.models.with_colour_skip(tgc.slim(gated), task.colour_map)
        kept = tgc.surgery.kept_channels(gated)
        seconds["select"] = time.perf_counter() - start
        start = time.perf_counter()
        fits = tgc.reconstruction.reconstruct(
            student, task.teacher, calibration, kept, verbose=False
        )
        seconds["refit"] = time.perf_counter() - start
        info = {
            "seconds": seconds,
            "layer_errors": {fit.name: fit.relative_error for fit in fits},
            "refit_psnr": float(np.mean(task.psnr(student))),
            "widths": {
                layer.name: layer.filters
                for layer in student.layers
                if isinstance(layer, keras.layers.Conv2D)
            },
        }
    os.makedirs(os.path.dirname(path), exist_ok=True)
    student.save(path)
    with open(info_path, "w") as file:
        json.dump(info, file, indent=1)
    return student, info


def pixel_finetune(task: Task, student, recipe: Recipe) -> list[tuple[int, float]]:
    """The cheap step: Adam on the student alone against cached teacher outputs.

    Batches come from the recipe's view sets in turn (one compiled step per
    view size). Returns the held-out PSNR curve `[(step, psnr)]`.
    """
    sets = [task.views(views) for views in recipe.train_views]
    optimizer = keras.optimizers.Adam(
        keras.optimizers.schedules.CosineDecay(recipe.learning_rate, recipe.steps)
    )
    variables = student.trainable_variables
    optimizer.build(variables)
    distance = tf.square if recipe.loss == "mse" else tf.abs

    @tf.function(jit_compile=True, reduce_retracing=True)
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(distance(student(x, training=True) - y))
        gradients = tape.gradient(loss, variables)
        optimizer.apply_gradients(zip(gradients, variables, strict=True))
        return loss

    rng = np.random.default_rng(task.seed)
    curve = [(0, float(np.mean(task.psnr(student))), task.train_psnr(student))]
    logging.info(
        "step 0: held-out PSNR %.2f dB, training views %.2f dB", *curve[-1][1:]
    )
    start = time.perf_counter()
    for k in range(recipe.steps):
        inputs, targets = sets[k % len(sets)]
        chosen = rng.choice(len(inputs), recipe.batch_size, replace=False)
        step(_as_float(inputs[chosen]), _as_float(targets[chosen]))
        if (k + 1) % recipe.eval_every == 0 or k + 1 == recipe.steps:
            seconds = time.perf_counter() - start
            curve.append(
                (k + 1, float(np.mean(task.psnr(student))), task.train_psnr(student))
            )
            logging.info(
                "step %d: held-out PSNR %.2f dB, training views %.2f dB (%.2f s/step)",
                *curve[-1],
                seconds / recipe.eval_every,
            )
            start = time.perf_counter()
    return curve


def distill_finetune(task: Task, student, recipe: Recipe):
    """The main job's fine-tune: the `distill` method's trainer on its pairs."""
    views = recipe.train_views[0]
    setup = methods.Setup(
        budget_lib.Budget(task.macs_budget),
        learning_rate=recipe.learning_rate,
        ndf=32,
        seed=task.seed,
    )
    pairs = tgc.data.vintage_pairs(
        "train",
        size=views.photo_size,
        crop_size=views.crop,
        crops_per_photo=views.per_photo,
        colour_jitter=views.jitter,
        batch_size=recipe.batch_size,
        seed=task.seed,
        repeat=True,
    )
    pair = methods.Student(student, base.discriminator(setup, 3))
    pipeline.finetune(
        methods.get("distill"),
        pair,
        task.teacher,
        setup,
        pairs,
        recipe.steps,
        verbose=0,
    )
    return [
        (recipe.steps, float(np.mean(task.psnr(student))), task.train_psnr(student))
    ]


def run_row(task: Task, name: str, recipe: Recipe, work_dir: str) -> dict:
    """Builds, refits, fine-tunes and scores one recipe."""
    student, info = build_student(task, recipe, work_dir)
    untrained_per_photo = task.psnr(student)
    untrained = float(np.mean(untrained_per_photo))
    logging.info("row %s: untrained student %.2f dB", name, untrained)
    start = time.perf_counter()
    if recipe.fold_norms:
        inputs, _ = task.views(recipe.calibration)
        student = tgc.export.fold_instance_norms(
            student, _as_float(inputs[: recipe.calibration_count])
        )
        folded = float(np.mean(task.psnr(student)))
        logging.info("row %s: norms folded %.2f dB", name, folded)
    if recipe.finetune == "pixel":
        curve = pixel_finetune(task, student, recipe)
    else:
        curve = distill_finetune(task, student, recipe)
    finetune_seconds = time.perf_counter() - start
    student.save(os.path.join(work_dir, "students", f"{name}-trained.keras"))
    folded_after = None
    if not recipe.fold_norms:
        calibration, _ = task.views(recipe.calibration)
        folded = tgc.export.fold_instance_norms(
            student, _as_float(calibration[: recipe.calibration_count])
        )
        folded_after = float(np.mean(task.psnr(folded)))
        logging.info("row %s: norms folded after training %.2f dB", name, folded_after)
    inputs, _ = task.held_out
    outputs = np.asarray(student.predict(inputs, 2, verbose=0))
    per_photo = tgc.metrics.psnr(task.held_out[1], outputs)
    scores = task.comparison.score(outputs)
    return {
        "name": name,
        "note": recipe.note,
        "recipe": dataclasses.asdict(recipe),
        "macs": tgc.profile(student, (256, 256, 3)).macs,
        "refit_psnr": info["refit_psnr"],
        "untrained_psnr": untrained,
        "folded_after_psnr": folded_after,
        "psnr": scores["psnr"],
        "ssim": scores["ssim"],
        "fd": scores["fd"],
        "per_photo_psnr": [float(p) for p in per_photo],
        "untrained_per_photo": [float(p) for p in untrained_per_photo],
        "above_identity": int(np.sum(per_photo > task.identity_psnr)),
        "curve": curve,
        "seconds": {**info["seconds"], "finetune": finetune_seconds},
        "build": info,
    }


def run_task_settings(report: dict, run: dict) -> dict:
    """The settings (`training.train.settings`) of the task a run trained on.

    Args:
        report: The run's `report.json`: its views, its photo set (or, in
            reports written before it had one, the sources of its training
            photos).
        run: The run's `run.json`: its seed.

    Returns:
        The settings: the report's views, the run's seed and its photo set;
        for an older report, the smallest built-in photo set holding every
        source of its training photos.
    """
    photo_set = report.get("photo_set")
    if photo_set is None:
        sources = set(report["sources"]["train"])
        photo_set = min(
            (
                name
                for name, known in tgc.data.PHOTO_SETS.items()
                if sources <= set(known)
            ),
            key=lambda name: len(tgc.data.PHOTO_SETS[name]),
        )
    leaves = {
        key: report.get(key, train.DEFAULTS[key])
        for key in ("dead_leaves", "dead_leaves_fov", "dead_leaves_one_hue")
    }
    return train.settings(
        {**report["views"], "photo_set": photo_set, "seed": run["seed"], **leaves}
    )


def _read_json(path: str) -> dict:
    with open(path) as file:
        return json.load(file)


def _skips(run: dict) -> str:
    skips = ["colour"] if run["colour_skip"] else []
    if run.get("detail_skip"):
        skips.append(f"detail {run['detail_skip']:g} px")
    return " + ".join(skips) or "none"


def train_run_row(name: str, run_dir: str, task=None) -> dict:
    """One ablation row of a finished `training.train` run (no training).

    The scores, settings and seconds come from the run's `report.json` and
    `run.json`; the per-photo PSNR (and so the photos above their identity
    score) from its `student.keras`, scored against the teacher on the
    task's held-out photos (`benchmarks.tone.score_split`).

    Args:
        name: The row's label.
        run_dir: The run's `--output_dir`.
        task: The task it trained on (a `training.tasks.TaskData`); default:
            rebuilt from the run's settings (`run_task_settings`).

    Returns:
        The row, with the per-photo PSNR of the student and the identity.

    Raises:
        ValueError: If the task's data key is not the run's
            (`benchmarks.tone.check_same_data`).
    """
    report = _read_json(os.path.join(run_dir, "report.json"))
    run = _read_json(os.path.join(run_dir, "run.json"))
    settings = run_task_settings(report, run)
    if task is None:
        task = tasks.from_settings(settings)
    student_path = os.path.join(run_dir, "student.keras")
    tone.check_same_data(student_path, task.key)
    scores = tone.score_split(keras.saving.load_model(student_path), *task.held_out)
    student = report["rows"]["student"]
    return {
        "name": name,
        "run_dir": run_dir,
        "task": report["task_description"],
        "photo_set": settings["photo_set"],
        "dead_leaves": settings["dead_leaves"],
        "dead_leaves_fov": settings["dead_leaves_fov"],
        "dead_leaves_one_hue": settings["dead_leaves_one_hue"],
        "views": report["views"],
        "colour_skip": run["colour_skip"],
        "detail_skip": run.get("detail_skip", 0.0),
        "match_steps": report["match_steps"],
        "steps": report["steps"],
        "seed": report["seed"],
        "macs": student["macs"],
        "refit_psnr": report["initial_psnr"],
        **{key: student[key] for key in ("psnr", "ssim", "fd")},
        # Reports written before detail PSNR existed: the rescored photos'.
        "detail_psnr": student.get(
            "detail_psnr", float(np.mean(scores["detail_psnr"]))
        ),
        "int8_psnr": report["rows"]["student_int8"]["psnr"],
        "photos": [photo.split("/")[-1] for photo in task.photo_names["held_out"]],
        "per_photo_psnr": scores["psnr"],
        "per_photo_detail_psnr": scores["detail_psnr"],
        "identity_per_photo": scores["identity"],
        "above_identity": int(
            np.sum(np.array(scores["psnr"]) > np.array(scores["identity"]))
        ),
        "wall_seconds": report["wall_seconds"],
        "phase_seconds": report["phase_seconds"],
    }


def merge_runs(saved: Sequence[dict], scored: Sequence[dict]) -> list[dict]:
    """The table's runs: `saved` ones, replaced where scored again, then new.

    Args:
        saved: The runs of the existing `quality.json`.
        scored: The runs scored now (`train_run_row`).

    Returns:
        Each saved run in its place (marked `"earlier": True` unless scored
        again, then the new row), then the scored runs not saved before.
    """
    new = {row["name"]: row for row in scored}
    merged = [new.pop(row["name"], {**row, "earlier": True}) for row in saved]
    return merged + list(new.values())


def _optional(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def _label(row: dict) -> str:
    return row["name"] + (" (earlier run)" if row.get("earlier") else "")


def _markdown(rows: list[dict], task_info: dict) -> str:
    lines = [
        "# Student quality at 20x fewer MACs: ablation",
        "",
        f"Vintage teacher {task_info['teacher_macs'] / 1e9:.1f} G MACs; every "
        f"student <= {task_info['macs_budget'] / 1e9:.2f} G at 256x256. Scored "
        f"against the teacher on {task_info['held_out']} photos held out by "
        f"source (256x256; identity {task_info['identity_psnr']:.2f} dB). "
        "`refit`: after the least-squares refit; `init`: after block-wise "
        "reconstruction too (when the row has it); then the row's fine-tune. "
        "`train views`: PSNR on the central views of 45 training photos (32 "
        "since the task keeps 32 reference photos) after the "
        "fine-tune (fit, not quality); `folded`: held-out PSNR once the trained "
        "student's instance norms are frozen and folded "
        "(`tgc.export.fold_instance_norms`). "
        "Seconds are wall time on the shared 2-core machine (noisy: compare "
        "within a run). `(earlier run)`: measured by an earlier run of the "
        "harness (other code and machine state), kept from its table.",
        "",
        "| row | G MACs | refit dB | init dB | PSNR dB | SSIM | FD | > identity "
        "| train views dB | folded dB | select s | refit s | blocks s "
        "| fine-tune s | what |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        seconds = row["seconds"]
        cells = [
            f"{row['macs'] / 1e9:.2f}",
            f"{row['refit_psnr']:.2f}",
            f"{row['untrained_psnr']:.2f}",
            f"**{row['psnr']:.2f}**",
            f"{row['ssim']:.3f}",
            f"{row['fd']:.1f}",
            f"{row['above_identity']}/{task_info['held_out']}",
            _optional(row["curve"][-1][2] if len(row["curve"][-1]) > 2 else None),
            _optional(row.get("folded_after_psnr")),
            *(
                f"{seconds[k]:.0f}" if k in seconds else ""
                for k in ("select", "refit", "blocks", "finetune")
            ),
            row["note"],
        ]
        lines.append(f"| {_label(row)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


PHASES = ("build", "refit", "match", "finetune", "ship")
TONE_JITTERS = ("white_balance_jitter", "gamma_jitter", "channel_gamma_jitter")


def _photo_set(run: dict) -> str:
    """The run's photo set, its dead-leaves images and tone jitters when on."""
    extras = [
        f"{key.replace('_', ' ')} {run['views'][key]:g}"
        for key in TONE_JITTERS
        if run["views"].get(key)
    ]
    if run.get("dead_leaves"):
        shares = [
            f"{run[key]:.0%} {what}"
            for key, what in (
                ("dead_leaves_fov", "framed"),
                ("dead_leaves_one_hue", "one hue"),
            )
            if run.get(key)
        ]
        kinds = f" ({', '.join(shares)})" if shares else ""
        extras.insert(0, f"{run['dead_leaves']} dead leaves{kinds}")
    return ", ".join([run["photo_set"], *extras])


def _runs_markdown(runs: list[dict]) -> str:
    lines = [
        "## Main-job runs (`training.train`)",
        "",
        "Finished `python -m training.train` runs of the vintage task (`distill`, "
        "greedy selection, 1/20 of the teacher's MACs), scored by `python -m "
        "benchmarks.quality --runs=label=run_dir,...` without training: the "
        "scores of their reports against the teacher on the same 9 held-out "
        "photos (`refit`: after the least-squares refit; `int8`: the int8 "
        "file), and `> identity` from their `student.keras` rescored photo by "
        "photo (`per_photo_psnr` in `quality.json`; detail PSNR from a report "
        "written before it existed: the mean of the rescored photos'). "
        "`fine-tune steps`: distill's steps after the match phase. Wall and "
        "phase seconds are as each run measured them, under different machine "
        "loads: some runs were alone on the 2 cores, others beside other runs "
        "(README, issue 11 section, says which), so compare seconds only "
        "between runs that ran alone. `(earlier run)`: scored by an earlier "
        "`--runs`, kept.",
        "",
        "| row | photo set | skips | match steps | fine-tune steps | seed "
        "| G MACs | refit dB | PSNR dB | detail PSNR dB | SSIM | FD | > identity "
        "| int8 PSNR dB | wall s | build s | refit s | match s | fine-tune s "
        "| ship s |",
        "|---|---|---|" + "---:|" * 17,
    ]
    for run in runs:
        seconds = run["phase_seconds"]
        cells = [
            _label(run),
            _photo_set(run),
            _skips(run),
            str(run["match_steps"]),
            str(run["steps"]),
            str(run["seed"]),
            f"{run['macs'] / 1e9:.2f}",
            "-" if run["refit_psnr"] is None else f"{run['refit_psnr']:.2f}",
            f"**{run['psnr']:.2f}**",
            f"{run['detail_psnr']:.2f}",
            f"{run['ssim']:.3f}",
            f"{run['fd']:.1f}",
            f"{run['above_identity']}/{len(run['per_photo_psnr'])}",
            f"{run['int8_psnr']:.2f}",
            f"{run['wall_seconds']:.0f}",
            *(f"{seconds[k]:.0f}" if k in seconds else "" for k in PHASES),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _plot_curves(axes, rows: list[dict], task_info: dict) -> None:
    """Held-out PSNR along each row's fine-tune (and on training views)."""
    for row in rows:
        steps = [point[0] for point in row["curve"]]
        line = axes.plot(
            steps,
            [point[1] for point in row["curve"]],
            "x--" if row.get("earlier") else "o-",
            label=_label(row),
        )[0]
        if len(row["curve"][-1]) > 2:
            axes.plot(
                steps,
                [point[2] for point in row["curve"]],
                ":",
                color=line.get_color(),
            )
    axes.axhline(task_info["identity_psnr"], color="grey", lw=1, label="identity")
    axes.set_xlabel("fine-tune steps")
    axes.set_ylabel("PSNR vs teacher (dB)")
    axes.set_title(
        "1/20 student: held-out photos (solid), training views (dotted)", fontsize=10
    )
    axes.legend(fontsize=8)


def _plot_runs(axes, runs: list[dict]) -> None:
    """Each main-job run's held-out PSNR against its wall time."""
    for run in runs:
        minutes = run["wall_seconds"] / 60
        axes.plot(minutes, run["psnr"], "x" if run.get("earlier") else "o")
        axes.annotate(run["name"], (minutes, run["psnr"]), fontsize=7)
    axes.set_xlabel("wall time (min; machine loads differ)")
    axes.set_ylabel("PSNR vs teacher (dB)")
    axes.set_title("Main-job runs (training.train): held-out photos", fontsize=10)


def _plot(rows: list[dict], task_info: dict, runs: list[dict], path: str) -> None:
    """The harness rows' curves and the runs' PSNR against wall time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = int(bool(rows)) + int(bool(runs))
    figure, axes = plt.subplots(1, panels, figsize=(8 * panels, 5), squeeze=False)
    axes = list(axes[0])
    if rows:
        _plot_curves(axes.pop(0), rows, task_info)
    if runs:
        _plot_runs(axes.pop(0), runs)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _write(
    rows: list[dict], task_info: dict, output_dir: str, runs: Sequence[dict] = ()
) -> None:
    """Writes `quality.{md,json,png}`: the harness rows, then the runs."""
    runs = list(runs)
    sections = [_markdown(rows, task_info)] if rows else []
    sections += [_runs_markdown(runs)] if runs else []
    os.makedirs(output_dir, exist_ok=True)
    _plot(rows, task_info, runs, os.path.join(output_dir, "quality.png"))
    table = {"task": task_info, "rows": rows}
    with open(os.path.join(output_dir, "quality.json"), "w") as file:
        json.dump({**table, "runs": runs} if runs else table, file, indent=1)
    with open(os.path.join(output_dir, "quality.md"), "w") as file:
        file.write("\n".join(sections))


def _saved_table(output_dir: str) -> dict:
    """The `quality.json` in `output_dir` (empty when there is none)."""
    path = os.path.join(output_dir, "quality.json")
    return _read_json(path) if os.path.exists(path) else {}


def write_runs(runs: Sequence[dict], output_dir: str) -> None:
    """Adds scored runs to the tables in `output_dir`, harness rows untouched.

    Args:
        runs: Rows of finished `training.train` runs (`train_run_row`).
        output_dir: Where `quality.{md,json,png}` are (`merge_runs` keeps
            the runs there that are not scored again).
    """
    saved = _saved_table(output_dir)
    _write(
        saved.get("rows", []),
        saved.get("task", {}),
        output_dir,
        merge_runs(saved.get("runs", []), runs),
    )


def _parse_runs(values: Sequence[str]) -> list[tuple[str, str]]:
    """`--runs`'s `label=run_dir` values as (label, run_dir) pairs."""
    pairs = [value.split("=", 1) for value in values]
    bad = [value for value, pair in zip(values, pairs, strict=True) if len(pair) != 2]
    if bad:
        raise app.UsageError(f"--runs takes label=run_dir values, not {bad}.")
    return [(label, run_dir) for label, run_dir in pairs]


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    names = FLAGS.rows or ([] if FLAGS.runs else list(ROWS))
    unknown = sorted(set(names) - set(ROWS))
    if unknown:
        raise app.UsageError(f"Unknown rows {unknown}; known: {list(ROWS)}.")
    logging.set_verbosity(logging.INFO)
    if FLAGS.runs:
        runs = [
            train_run_row(label, run_dir) for label, run_dir in _parse_runs(FLAGS.runs)
        ]
        for run in runs:
            logging.info(
                "run %s: %.2f dB, %d/%d above the identity",
                run["name"],
                run["psnr"],
                run["above_identity"],
                len(run["per_photo_psnr"]),
            )
        write_runs(runs, FLAGS.output_dir)
    if names:
        _run_rows(names)


def _run_rows(names: Sequence[str]) -> None:
    """Runs the harness rows `names` (resuming) and writes the tables."""
    task = Task(FLAGS.macs_budget, FLAGS.seed, FLAGS.work_dir)
    task_info = {
        "teacher_macs": tgc.profile(task.teacher, (256, 256, 3)).macs,
        "macs_budget": task.macs_budget,
        "keep_ratio": task.keep_ratio,
        "held_out": len(task.held_out[0]),
        "identity_psnr": float(np.mean(task.identity_psnr)),
        "identity_per_photo": [float(p) for p in task.identity_psnr],
    }
    rows_dir = os.path.join(FLAGS.work_dir, "rows")
    os.makedirs(rows_dir, exist_ok=True)
    earlier = earlier_rows(os.path.join(FLAGS.output_dir, "quality.json"), rows_dir)
    for name in names:
        path = os.path.join(rows_dir, f"{name}.json")
        if os.path.exists(path):
            logging.info("row %s: done already (%s)", name, path)
            continue
        logging.info("row %s: %s", name, ROWS[name].note)
        row = run_row(task, name, ROWS[name], FLAGS.work_dir)
        with open(path + ".partial", "w") as file:
            json.dump(row, file, indent=1)
        os.replace(path + ".partial", path)
        logging.info(
            "row %s: %.2f dB (untrained %.2f)", name, row["psnr"], row["untrained_psnr"]
        )
        write_tables(rows_dir, task_info, FLAGS.output_dir, earlier)
    write_tables(rows_dir, task_info, FLAGS.output_dir, earlier)


def earlier_rows(table_path: str, rows_dir: str) -> list[dict]:
    """The rows of an existing `quality.json` that this work dir did not run.

    They were measured in an earlier run (another work dir, machine state or
    code) and are kept in the tables, marked `"earlier": true`. A row this
    run makes again is then shown next to its earlier result.

    Args:
        table_path: The `quality.json` a previous run wrote (may not exist).
        rows_dir: This run's finished rows, one `<name>.json` each.

    Returns:
        The earlier rows, each with `"earlier": True`.
    """
    if not os.path.exists(table_path):
        return []
    with open(table_path) as file:
        rows = json.load(file)["rows"]
    return [
        {**row, "earlier": True}
        for row in rows
        if row.get("earlier")
        or not os.path.exists(os.path.join(rows_dir, f"{row['name']}.json"))
    ]


def write_tables(
    rows_dir: str, task_info: dict, output_dir: str, earlier: Sequence[dict] = ()
) -> None:
    """Writes the table, JSON and plot of every finished row, in table order.

    Args:
        rows_dir: This run's finished rows, one `<name>.json` each.
        task_info: The task's budget and identity scores.
        output_dir: Where `quality.{md,json,png}` go.
        earlier: Rows of earlier runs (`earlier_rows`), each listed after
            this run's row of the same name.

    The `training.train` runs of the `quality.json` there stay as they are.
    """
    done = []
    for name in ROWS:
        path = os.path.join(rows_dir, f"{name}.json")
        if os.path.exists(path):
            with open(path) as file:
                done.append(json.load(file))
        done.extend(row for row in earlier if row["name"] == name)
    _write(done, task_info, output_dir, _saved_table(output_dir).get("runs", []))


if __name__ == "__main__":
    app.run(main)
