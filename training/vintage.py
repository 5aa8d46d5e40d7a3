"""The vintage task: default settings, student recipes and the training loop.

Shared by the main job (`training.train`) and the method benchmark
(`training.bench`): a student is built by a recipe (`build_student`), then
trained by `train_student` on pseudo-pairs (photo, pretrained vintage
teacher's output) of the built-in training photos, checkpointing every
epoch so an interrupted run resumes.
"""

from __future__ import annotations

import os

import keras

import tfgancompress as tgc
from training import callbacks
from training.methods import baselines
from training.trainer import AdversarialTrainer

DEFAULTS = {
    "method": "distill",
    "keep_ratio": 0.25,
    "macs_budget": None,
    "steps": 600,
    "steps_per_epoch": 50,
    "batch_size": 4,
    "crop_size": 128,
    "learning_rate": 2e-4,
    "lambda_recon": 100.0,
    "lambda_distill": 1.0,
    "ndf": 32,
    "eval_size": 256,
    "photo_size": 384,
    "latency_runs": 10,
    "seed": 0,
    "jit_compile": True,
    "verbose": 1,
    "output_dir": "outputs/vintage",
}


def build_student(teacher, method: str, keep_ratio: float, macs_budget=None):
    """The untrained student of a recipe, and the keep ratio it used."""
    if macs_budget is not None:
        keep_ratio = baselines.keep_ratio_for_budget(teacher, int(macs_budget * 1e9))
    if method == "distill":
        return baselines.l1_pruned_student(teacher, keep_ratio), keep_ratio
    return baselines.uniform_student(keep_ratio, affine=True), keep_ratio


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
        g_optimizer=keras.optimizers.Adam(config["learning_rate"], beta_1=0.5),
        d_optimizer=keras.optimizers.Adam(config["learning_rate"], beta_1=0.5),
        gan_loss="lsgan",
        lambda_recon=config["lambda_recon"],
        lambda_distill=config["lambda_distill"],
        jit_compile=config["jit_compile"],
    )
    train = tgc.data.vintage_pairs(
        "train",
        size=config["photo_size"],
        crop_size=config["crop_size"],
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
