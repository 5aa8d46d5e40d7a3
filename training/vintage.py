"""The vintage task: default settings, student recipes and the training loop.

Shared by the main job (`training.train`) and the method benchmark
(`training.bench`): `task_data` gives the held-out evaluation views and the
training photos' central views (for the colour map and int8 calibration); a
student is built by a recipe (`build_student`), then trained by
`train_student` on exact pseudo-pairs (a view of a built-in training photo,
the pretrained vintage teacher's output on that view; see
`tgc.data.vintage_pairs`), checkpointing every epoch so an interrupted run
resumes.
"""

from __future__ import annotations

import os

import keras
import numpy as np

import tfgancompress as tgc
from training import callbacks, evaluation
from training.methods import baselines
from training.trainer import AdversarialTrainer

DEFAULTS = {
    "method": "distill",
    "keep_ratio": 0.25,
    "macs_budget": None,
    "colour_skip": True,
    "reconstruction_views": 64,
    "steps": 150,
    "steps_per_epoch": 50,
    "batch_size": 8,
    "crop_size": 128,
    "crops_per_photo": 12,
    "colour_jitter": 0.5,
    "learning_rate": 2e-4,
    "lambda_recon": 100.0,
    "lambda_distill": 1.0,
    "ndf": 32,
    "eval_size": 256,
    "photo_size": 256,
    "latency_runs": 10,
    "seed": 0,
    "jit_compile": True,
    "verbose": 1,
    "output_dir": "outputs/vintage",
}


def task_data(config: dict) -> tuple[tuple, tuple]:
    """The evaluation and reference views of the vintage task.

    Args:
        config: Settings (`photo_size`, `eval_size`).

    Returns:
        `(held_out, reference)`: each `(inputs, teacher_outputs)` arrays of
        the central `eval_size` views; `held_out` of the photos held out by
        source, `reference` of the training photos (to fit the colour map
        and calibrate int8).
    """
    views = {"size": config["photo_size"], "crop_size": config["eval_size"]}
    held_out = evaluation.as_arrays(tgc.data.vintage_pairs("eval", **views))
    reference = evaluation.as_arrays(
        tgc.data.vintage_pairs("train", training=False, batch_size=8, **views)
    )
    return held_out, reference


def training_views(config: dict, count: int) -> np.ndarray:
    """`count` of the training views (`crop_size`), chosen by `seed`.

    The views the student trains on, e.g. to calibrate the least-squares
    reconstruction of a pruned student; all of them if there are fewer.
    """
    inputs, _ = evaluation.as_arrays(
        tgc.data.vintage_pairs(
            "train",
            size=config["photo_size"],
            crop_size=config["crop_size"],
            crops_per_photo=config["crops_per_photo"],
            colour_jitter=config["colour_jitter"],
            training=True,
            batch_size=64,
            seed=config["seed"],
            drop_remainder=False,
        )
    )
    chosen = np.random.default_rng(config["seed"]).permutation(len(inputs))[:count]
    return inputs[np.sort(chosen)]


def calibration_views(config: dict) -> np.ndarray | None:
    """The views a `"distill"` student is reconstructed on, or `None`.

    `None` when the method does not prune the teacher or
    `reconstruction_views` is 0 (reconstruction off).
    """
    count = config["reconstruction_views"]
    if config["method"] != "distill" or count <= 0:
        return None
    return training_views(config, count)


def build_student(
    teacher,
    method: str,
    keep_ratio: float,
    macs_budget=None,
    colour_map: tuple[np.ndarray, np.ndarray] | None = None,
    calibration: np.ndarray | None = None,
):
    """The untrained student of a recipe, and the keep ratio it used.

    Args:
        teacher: The vintage teacher.
        method: `"distill"` (L1-pruned teacher) or `"uniform"` (from scratch).
        keep_ratio: Fraction of the filters kept.
        macs_budget: G MACs at 256x256; overrides `keep_ratio`.
        colour_map: `(matrix, bias)`: wrap the student in a global colour
            skip starting at this map (`tgc.models.with_colour_skip`);
            `None`: the plain generator.
        calibration: Views on which a `"distill"` student's convolutions
            are refitted to the teacher by least squares
            (`tgc.reconstruction`); `None`: the teacher's weights, sliced.
    """
    if macs_budget is not None:
        keep_ratio = baselines.keep_ratio_for_budget(teacher, int(macs_budget * 1e9))
    if method == "distill":
        student = baselines.l1_pruned_student(
            teacher, keep_ratio, colour_map, calibration
        )
    else:
        student = baselines.uniform_student(keep_ratio, affine=True)
        if colour_map is not None:
            student = tgc.models.with_colour_skip(student, colour_map)
    return student, keep_ratio


def _decaying(config: dict) -> keras.optimizers.schedules.LearningRateSchedule:
    """`learning_rate`, cosine-decayed to 0 over the run's `steps`.

    A fine-tuned student ends on small steps instead of wherever the last
    noisy full-size step left it; the schedule follows the optimizer's step
    count, which `BackupAndRestore` restores on resume.
    """
    return keras.optimizers.schedules.CosineDecay(
        config["learning_rate"], config["steps"]
    )


def train_student(student, teacher, config: dict, held_out=None):
    """Trains `student` on vintage pseudo-pairs; returns the trainer.

    With `held_out = (inputs, teacher_outputs)`, PSNR/L1 to the teacher on
    them is logged every epoch (`val_psnr`, `val_l1`).
    """
    keras.utils.set_random_seed(config["seed"])
    distill = config["method"] == "distill"
    trainer = AdversarialTrainer(
        student,
        tgc.models.patchgan_discriminator(ndf=config["ndf"], conditional=True),
        teacher=teacher if distill else None,
        mode="paired",
        taps="auto" if distill else None,
    )
    trainer.compile(
        g_optimizer=keras.optimizers.Adam(_decaying(config), beta_1=0.5),
        d_optimizer=keras.optimizers.Adam(_decaying(config), beta_1=0.5),
        gan_loss="lsgan",
        lambda_recon=config["lambda_recon"],
        lambda_distill=config["lambda_distill"],
        jit_compile=config["jit_compile"],
    )
    train = tgc.data.vintage_pairs(
        "train",
        size=config["photo_size"],
        crop_size=config["crop_size"],
        crops_per_photo=config["crops_per_photo"],
        colour_jitter=config["colour_jitter"],
        batch_size=config["batch_size"],
        seed=config["seed"],
        repeat=True,
    )
    output_dir = config["output_dir"]
    epochs = max(1, config["steps"] // config["steps_per_epoch"])
    trainer.fit(
        train,
        epochs=epochs,
        steps_per_epoch=config["steps_per_epoch"],
        callbacks=[
            callbacks.StopOnNaN(),
            keras.callbacks.BackupAndRestore(os.path.join(output_dir, "backup")),
            *([callbacks.Evaluate(*held_out)] if held_out else []),
        ],
        verbose=config["verbose"],
    )
    return trainer
