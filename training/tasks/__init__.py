"""Tasks: a teacher and the data to compress it on (methods know nothing of them).

    from training import tasks

    task = tasks.load()                                       # the vintage task
    task = tasks.load(teacher="G.pth", photos="my_photos/")   # yours
    task = tasks.load(teacher="G.keras", pairs="facades/train",
                      held_out="facades/val")
    task.dataset(batch_size=8)   # repeating (view, target) batches
    task.held_out                # (inputs, teacher outputs) for the final score

A task is a function returning a `TaskData` (`base`): `vintage_task`
(the default), `photo_task` and `builtin_task` (`photos`), `pair_task`
(`pairs`). The command-line tools take the same choices as flags
(`define_flags`, `from_flags`).
"""

from __future__ import annotations

import dataclasses
import os

import tfgancompress as tgc
from training.tasks.base import TaskData, Views, split_photos
from training.tasks.pairs import pair_task
from training.tasks.photos import (
    DEFAULT_HELD_OUT_FRACTION,
    builtin_task,
    load_teacher,
    photo_task,
)
from training.tasks.vintage import VIEWS, vintage_task

# The seed of the dead-leaves images a task adds (`load`'s `dead_leaves`).
DEAD_LEAVES_SEED = 17
# The command-line choices of a task and their defaults (`load`'s arguments).
DEFAULTS = {
    "teacher": None,
    "photos": None,
    "pairs": None,
    "held_out": None,
    "held_out_fraction": DEFAULT_HELD_OUT_FRACTION,
    "photo_set": tgc.data.DEFAULT_PHOTO_SET,
    "dead_leaves": 0,
    "dead_leaves_fov": 0.0,
    "dead_leaves_one_hue": 0.0,
    **dataclasses.asdict(VIEWS),
}


def load(
    teacher: str | os.PathLike | None = None,
    photos: str | os.PathLike | None = None,
    pairs: str | os.PathLike | None = None,
    held_out: str | os.PathLike | None = None,
    held_out_fraction: float = DEFAULT_HELD_OUT_FRACTION,
    views: Views = VIEWS,
    seed: int = 0,
    cache_dir=None,
    photo_set: str = tgc.data.DEFAULT_PHOTO_SET,
    dead_leaves: int = 0,
    dead_leaves_fov: float = 0.0,
    dead_leaves_one_hue: float = 0.0,
) -> TaskData:
    """The task of these choices, loaded once.

    Args:
        teacher: A `.pth` or `.keras` generator file (`load_teacher`);
            `None`: the pretrained vintage teacher.
        photos: A folder of your photos: the teacher's outputs on views of
            them are the targets.
        pairs: A folder of AB images (input left, target right).
        held_out: A folder held out for the final score; `None` holds out
            `held_out_fraction` of the `photos`/`pairs` files.
        held_out_fraction: See `held_out`.
        views: How to cut views.
        seed: Seed of the splits.
        cache_dir: View cache root (the dead-leaves PNGs go there too).
        photo_set: Which built-in photos the vintage or teacher-only task
            trains on (`tgc.data.PHOTO_SETS`; the held-out photos are the
            same in every set).
        dead_leaves: Synthetic dead-leaves images added to the training
            photos (`tgc.data.dead_leaves_photos`, seed 17, 256 px): the
            teacher labels their views too. Never validation, reference
            or held-out photos; 0 (off) leaves the task's data key as it
            was.
        dead_leaves_fov: Fraction of them framed in a circular field of
            view on black.
        dead_leaves_one_hue: Fraction of them drawn in one hue.

    Returns:
        With no `teacher`, `photos` or `pairs`: the vintage task. With a
        teacher only: that teacher on the built-in photos.

    Raises:
        ValueError: On `photos` and `pairs` together, data without a
            teacher, `held_out` without data, or `dead_leaves` with
            `pairs` (pairs bring their targets; nothing labels new inputs).
    """
    if photos is not None and pairs is not None:
        raise ValueError("Give photos or pairs, not both.")
    data = photos if photos is not None else pairs
    if data is not None and teacher is None:
        raise ValueError(
            "Your photos or pairs need your teacher: give a .pth or .keras "
            "generator file too (--teacher)."
        )
    if held_out is not None and data is None:
        raise ValueError(
            "A held-out folder goes with your photos or pairs (--photos or --pairs)."
        )
    if dead_leaves and pairs is not None:
        raise ValueError(
            f"dead_leaves={dead_leaves} needs a teacher to label the images; a "
            "pairs task has no teacher runs. Leave --dead_leaves at 0 with --pairs."
        )
    tgc.data.photo_set(photo_set)  # an unknown name fails before any loading
    extra = tgc.data.dead_leaves_photos(
        dead_leaves,
        seed=DEAD_LEAVES_SEED,
        field_of_view=dead_leaves_fov,
        one_hue=dead_leaves_one_hue,
        cache_dir=cache_dir,
    )
    if teacher is None:
        return vintage_task(views, seed, cache_dir, photo_set, extra_train=extra)
    model, key = load_teacher(teacher)
    if photos is not None:
        return photo_task(
            model,
            key,
            photos,
            held_out,
            held_out_fraction,
            views,
            seed,
            cache_dir,
            extra_train=extra,
        )
    if pairs is not None:
        return pair_task(model, key, pairs, held_out, held_out_fraction, views, seed)
    return builtin_task(
        model,
        key,
        views,
        seed,
        cache_dir=cache_dir,
        photo_set=photo_set,
        extra_train=extra,
    )


def from_settings(settings: dict) -> TaskData:
    """`load` with the `DEFAULTS` keys of a settings dict (and its `seed`)."""
    return load(
        **{k: settings[k] for k in ("teacher", "photos", "pairs", "held_out")},
        held_out_fraction=settings["held_out_fraction"],
        views=Views.from_settings(settings),
        seed=settings["seed"],
        photo_set=settings.get("photo_set", tgc.data.DEFAULT_PHOTO_SET),
        dead_leaves=settings.get("dead_leaves", 0),
        dead_leaves_fov=settings.get("dead_leaves_fov", 0.0),
        dead_leaves_one_hue=settings.get("dead_leaves_one_hue", 0.0),
    )


def flag_settings() -> dict:
    """The task settings (`DEFAULTS` keys) given by the `define_flags` flags."""
    from absl import flags

    return {key: flags.FLAGS[key].value for key in DEFAULTS if key in flags.FLAGS}


def define_flags() -> None:
    """The task flags of `training.train` and `training.bench`."""
    from absl import flags

    flags.DEFINE_string(
        "teacher",
        None,
        "Your generator: a .pth (PyTorch pix2pix/CycleGAN ResNet, mobile ResNet "
        "or U-Net; read without torch) or .keras file. Default: the pretrained "
        "vintage teacher.",
    )
    flags.DEFINE_string(
        "photos", None, "A folder of your photos (targets: the teacher's outputs)."
    )
    flags.DEFINE_string(
        "pairs", None, "A folder of your AB pairs (input left half, target right)."
    )
    flags.DEFINE_string(
        "held_out",
        None,
        "A folder held out for the final score (default: --held_out_fraction "
        "of --photos/--pairs, by file).",
    )
    flags.DEFINE_float(
        "held_out_fraction",
        DEFAULTS["held_out_fraction"],
        "Fraction of your files held out (seeded) when --held_out is not given.",
        lower_bound=0.0,
        upper_bound=1.0,
    )
    flags.DEFINE_enum(
        "photo_set",
        DEFAULTS["photo_set"],
        list(tgc.data.PHOTO_SETS),
        "Built-in photos to train on: 'standard' (391 training photos) or "
        "'extended' (588: adds Stellarium's deep-sky photos, Kalzium's "
        "laboratory photos, JPEG XL's test photos and two wallpaper packages, "
        "unpacked by `make photos-extended`). Held out: the same 9 "
        "scikit-image photos.",
    )
    flags.DEFINE_integer(
        "dead_leaves",
        DEFAULTS["dead_leaves"],
        "Synthetic dead-leaves images (256 px, seeded; written once under the "
        "view cache) added to the training photos, labelled by the teacher; "
        "never validation, reference or held-out photos. 0: off.",
        lower_bound=0,
    )
    flags.DEFINE_float(
        "dead_leaves_fov",
        DEFAULTS["dead_leaves_fov"],
        "Fraction of the --dead_leaves images framed in a circular field of "
        "view on black (as a microscope or fundus camera frames a picture).",
        lower_bound=0.0,
        upper_bound=1.0,
    )
    flags.DEFINE_float(
        "dead_leaves_one_hue",
        DEFAULTS["dead_leaves_one_hue"],
        "Fraction of the --dead_leaves images drawn in one hue (every colour "
        "within 0.04 of one random hue, as in a sunset or a stained slide).",
        lower_bound=0.0,
        upper_bound=1.0,
    )
    flags.DEFINE_integer(
        "photo_size",
        VIEWS.photo_size,
        "Short side the photos are loaded at before views are cut (multiple of 4).",
    )
    flags.DEFINE_integer("crop_size", VIEWS.crop_size, "Side of the training views.")
    flags.DEFINE_integer(
        "crops_per_photo",
        VIEWS.crops_per_photo,
        "Training views per photo (the teacher runs once on each; cached).",
        lower_bound=1,
    )
    flags.DEFINE_float(
        "colour_jitter",
        VIEWS.colour_jitter,
        "Colour-jitter strength of the training views.",
        lower_bound=0.0,
        upper_bound=1.0,
    )
    flags.DEFINE_float(
        "white_balance_jitter",
        VIEWS.white_balance_jitter,
        "Strength of the training views' random per-channel gains (white "
        "balance; log2 gains uniform in [-s, s], centred), applied before the "
        "teacher runs; 0: off.",
        lower_bound=0.0,
        upper_bound=1.0,
    )
    flags.DEFINE_float(
        "gamma_jitter",
        VIEWS.gamma_jitter,
        "Strength of the training views' random gamma (one per view, log2 "
        "uniform in [-s, s]), applied before the teacher runs; 0: off.",
        lower_bound=0.0,
        upper_bound=1.0,
    )
    flags.DEFINE_float(
        "channel_gamma_jitter",
        VIEWS.channel_gamma_jitter,
        "Strength of the training views' random per-channel gamma on top of "
        "--gamma_jitter's (log2 uniform in [-s, s]); 0: off.",
        lower_bound=0.0,
        upper_bound=1.0,
    )
    flags.DEFINE_integer(
        "eval_size",
        VIEWS.eval_size,
        "Side of the central held-out, validation and reference views.",
    )
    flags.DEFINE_integer(
        "reference_photos",
        VIEWS.reference_photos,
        "Training photos whose central views fit the colour map and calibrate "
        "int8 (a seeded subset).",
        lower_bound=1,
    )
    flags.DEFINE_integer(
        "validation_photos",
        VIEWS.validation_photos,
        "Training photos split off (seeded) for validation and searches.",
        lower_bound=0,
    )


__all__ = [
    "DEFAULTS",
    "VIEWS",
    "TaskData",
    "Views",
    "builtin_task",
    "define_flags",
    "from_settings",
    "load",
    "load_teacher",
    "pair_task",
    "photo_task",
    "split_photos",
    "vintage_task",
]
