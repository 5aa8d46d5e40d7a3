"""The vintage task: default settings, data, and a method run on it.

Shared by the main job (`training.train`) and the method benchmark
(`training.bench`): `task_data` gives the held-out evaluation views and the
training photos' central views (for the colour map and int8 calibration);
`compress` runs a registered method (`training.methods`) through the
pipeline (`training.pipeline`) on exact pseudo-pairs (a view of a built-in
training photo, the pretrained vintage teacher's output on that view; see
`tgc.data.vintage_pairs`), within the MACs budget (`--macs_ratio`,
`--macs_budget`), checkpointing so an interrupted run resumes.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable

import keras
import numpy as np

import tfgancompress as tgc
from training import callbacks, evaluation, methods, pipeline
from training.budget import DEFAULT_MACS_RATIO, Budget

DEFAULTS = {
    "method": "distill",
    "method_options": "",
    "macs_ratio": DEFAULT_MACS_RATIO,
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


def training_data(config: dict):
    """The repeating, batched training pairs `(view, teacher(view))`."""
    return tgc.data.vintage_pairs(
        "train",
        size=config["photo_size"],
        crop_size=config["crop_size"],
        crops_per_photo=config["crops_per_photo"],
        colour_jitter=config["colour_jitter"],
        batch_size=config["batch_size"],
        seed=config["seed"],
        repeat=True,
    )


# What a trained student depends on, besides the method and its budget.
_RUN_KEYS = (
    "colour_skip",
    "reconstruction_views",
    "steps",
    "steps_per_epoch",
    "batch_size",
    "crop_size",
    "crops_per_photo",
    "colour_jitter",
    "learning_rate",
    "ndf",
    "photo_size",
    "seed",
)


def run_key(method: methods.Method, budget: Budget, config: dict) -> str:
    """A short hash naming one run: method, options, budget, steps, data, seed."""
    described = {
        **method.describe(),
        "macs_budget": budget.macs,
        **{key: config[key] for key in _RUN_KEYS},
    }
    text = json.dumps(described, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def compress(
    method: methods.Method,
    teacher: keras.Model,
    config: dict,
    colour_map: tuple[np.ndarray, np.ndarray] | None = None,
    held_out: tuple[np.ndarray, np.ndarray] | None = None,
    after_phase: Callable | None = None,
) -> tuple[pipeline.Compressed, Budget]:
    """Runs `method` through the pipeline on the vintage pseudo-pairs.

    Args:
        method: A registered method (`training.methods.get`).
        teacher: The vintage teacher.
        config: Settings (`DEFAULTS` keys).
        colour_map: `(matrix, bias)` of the student's colour skip, or `None`.
        held_out: `(inputs, teacher_outputs)`: PSNR/L1 to the teacher on
            them is logged every epoch (`val_psnr`, `val_l1`).
        after_phase: Passed to `pipeline.compress`.

    Returns:
        `(result, budget)`. Checkpoints go to
        `<output_dir>/checkpoints/<run_key>`: the same run resumes there.
    """
    budget = Budget.resolve(teacher, config["macs_ratio"], config["macs_budget"])
    setup = methods.Setup(
        budget,
        mode="paired",
        learning_rate=config["learning_rate"],
        ndf=config["ndf"],
        seed=config["seed"],
        jit_compile=config["jit_compile"],
    )
    views = config["reconstruction_views"]
    result = pipeline.compress(
        method,
        teacher,
        training_data(config),
        setup,
        steps=config["steps"],
        steps_per_epoch=config["steps_per_epoch"],
        calibration=(lambda: training_views(config, views)) if views else None,
        colour_map=colour_map,
        callbacks=[callbacks.Evaluate(*held_out)] if held_out else [],
        checkpoint_dir=os.path.join(
            config["output_dir"], "checkpoints", run_key(method, budget, config)
        ),
        after_phase=after_phase,
        verbose=config["verbose"],
    )
    return result, budget
