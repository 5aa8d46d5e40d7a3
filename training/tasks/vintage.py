"""The built-in task: the pretrained vintage CycleGAN teacher on the built-in photos.

The default of `training.train` and `training.bench`. Training views:
`crops_per_photo` 128-pixel zoom crops of each training photo (loaded at
short side 256), colour-jittered, the teacher's output on each computed
once and cached (key `"vintage"`, the cache `tgc.data.vintage_pairs`
shares). The 9 scikit-image photos are held out by source; 16 training
photos are split off for validation and 32 others give the reference
views (colour map, int8 calibration), central 256-pixel views all.

Teacher cost from an empty cache (2 idle cores; ~0.2 s per 128-pixel
view, ~0.8 s per 256-pixel view, more than twice that on a busy machine):
with the 391 built-in training photos, 375 train x 2 views ~ 150 s, plus
57 central views ~ 45 s. `VIEWS` is the one place to change view counts
and sizes.
"""

from __future__ import annotations

from collections.abc import Sequence

import tfgancompress as tgc
from training.tasks.base import TaskData, Views
from training.tasks.photos import builtin_task

VIEWS = Views(
    photo_size=256,
    crop_size=128,
    crops_per_photo=2,
    colour_jitter=0.5,
    eval_size=256,
    reference_photos=32,
    validation_photos=16,
    white_balance_jitter=0.0,
    gamma_jitter=0.0,
    channel_gamma_jitter=0.0,
)


def vintage_task(
    views: Views = VIEWS,
    seed: int = 0,
    cache_dir=None,
    photo_set: str = tgc.data.DEFAULT_PHOTO_SET,
    extra_train: Sequence = (),
) -> TaskData:
    """The vintage teacher on the built-in photos (see the module docstring).

    Args:
        views: How to cut the views.
        seed: Seed of the validation and reference draws.
        cache_dir: View cache root (default `tgc.data.default_cache_dir()`).
        photo_set: Which built-in photos (`tgc.data.PHOTO_SETS`).
        extra_train: Photos added to the training split only.
    """
    return builtin_task(
        tgc.models.pretrained("vintage"),
        "vintage",
        views,
        seed,
        cache_dir=cache_dir,
        name="vintage",
        photo_set=photo_set,
        extra_train=extra_train,
    )
