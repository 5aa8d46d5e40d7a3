"""Synthetic training photos: dead-leaves images, and tasks that train on them."""

import numpy as np
import pytest
from PIL import Image
from tiny_tasks import VIEWS, write_photos

import tfgancompress as tgc
from tfgancompress.data import synthetic
from training import tasks


def test_dead_leaves_images_follow_their_seed_and_hold_large_flat_areas():
    image = tgc.data.dead_leaves_image(64, seed=3)
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(image, tgc.data.dead_leaves_image(64, seed=3))
    assert not np.array_equal(image, tgc.data.dead_leaves_image(64, seed=4))
    # Discs, not noise: most neighbouring pixels differ by a few levels only
    # (blur and noise), a few (the edges) by much more.
    steps = np.abs(np.diff(image.astype(int), axis=1)).max(axis=-1)
    assert np.mean(steps <= 12) > 0.6 and steps.max() > 60
    with pytest.raises(ValueError, match="size >= 16, got 8"):
        tgc.data.dead_leaves_image(8, seed=0)


def test_disc_radii_follow_the_power_law():
    radii = synthetic._power_law_radii(np.random.default_rng(0), 200_000, 100.0)
    assert radii.min() >= synthetic.MIN_RADIUS and radii.max() <= 100.0
    # p(r) ~ r^-3: P(r > 2 r_min) = (1/4 - (r_min/r_max)^2 ... ) ~ 1/4.
    low, high = synthetic.MIN_RADIUS**-2, 100.0**-2
    expected = ((2 * synthetic.MIN_RADIUS) ** -2 - high) / (low - high)
    assert np.mean(radii > 2 * synthetic.MIN_RADIUS) == pytest.approx(
        expected, abs=0.01
    )


def test_a_field_of_view_is_black_around_a_lit_disc():
    framed = tgc.data.dead_leaves_image(96, seed=5, field_of_view=True)
    plain = tgc.data.dead_leaves_image(96, seed=5)
    corners = np.concatenate([framed[:6, :6], framed[-6:, -6:]]).astype(int)
    assert corners.max() <= 10  # black, but for the noise
    centre = framed[40:56, 40:56].astype(float)
    assert centre.mean() > 0.3 * plain[40:56, 40:56].mean()


def test_dead_leaves_photos_are_written_once_and_keep_their_prefix(tmp_path):
    photos = tgc.data.dead_leaves_photos(3, size=32, seed=1, folder=tmp_path / "a")
    assert [p.name for p in photos] == ["0000", "0001", "0002"]
    assert {p.source for p in photos} == {"dead-leaves"}
    stamps = [p.path.stat().st_mtime_ns for p in photos]
    again = tgc.data.dead_leaves_photos(3, size=32, seed=1, folder=tmp_path / "a")
    assert [p.path.stat().st_mtime_ns for p in again] == stamps  # reused
    more = tgc.data.dead_leaves_photos(5, size=32, seed=1, folder=tmp_path / "b")
    assert [p.read_bytes() for p in more[:3]] == [p.read_bytes() for p in photos]
    assert np.asarray(Image.open(more[4].path)).shape == (32, 32, 3)
    framed = tgc.data.dead_leaves_photos(
        40, size=32, seed=1, field_of_view=0.5, folder=tmp_path / "c"
    )
    dark = [np.asarray(Image.open(p.path))[:3, :3].max() <= 10 for p in framed]
    assert 10 <= sum(dark) <= 30
    assert dark == [p.name.endswith("-framed") for p in framed]
    assert tgc.data.count_by_source([*photos, *more]) == {"dead-leaves": 8}
    # One hue: drawn from a stream of its own, so the other images stay.
    hued = tgc.data.dead_leaves_photos(
        5, size=32, seed=1, one_hue=0.5, folder=tmp_path / "e"
    )
    same = [a.read_bytes() == b.read_bytes() for a, b in zip(hued, more, strict=True)]
    assert 0 < sum(same) < 5
    assert tgc.data.dead_leaves_photos(0, folder=tmp_path / "d") == []
    # Without a folder: under the cache root, named for the settings.
    cached = tgc.data.dead_leaves_photos(
        3, size=32, seed=1, field_of_view=0.5, cache_dir=tmp_path / "root"
    )
    folder = tmp_path / "root" / "synthetic" / "dead-leaves-32px-seed1-fov0.5"
    assert [p.path for p in cached] == [folder / f"{p.name}.png" for p in cached]
    assert [p.read_bytes() for p in cached] == [p.read_bytes() for p in framed[:3]]
    with pytest.raises(ValueError, match="count must be >= 0, got -1"):
        tgc.data.dead_leaves_photos(-1)
    with pytest.raises(ValueError, match=r"field_of_view must be in \[0, 1\], got 2"):
        tgc.data.dead_leaves_photos(1, field_of_view=2.0)


def test_a_task_trains_on_dead_leaves_but_never_scores_on_them(tmp_path, monkeypatch):
    monkeypatch.setenv("TFGANCOMPRESS_CACHE", str(tmp_path / "default"))
    write_photos(tmp_path / "photos", 8)
    teacher = tgc.models.resnet_generator(ngf=8, n_blocks=1, affine=True)
    teacher_file = tmp_path / "teacher.keras"
    teacher.save(teacher_file)

    def load(**leaves):
        return tasks.load(
            teacher=teacher_file,
            photos=tmp_path / "photos",
            held_out_fraction=0.25,
            views=VIEWS,
            cache_dir=tmp_path / "cache",
            **leaves,
        )

    plain, leaves = load(), load(dead_leaves=3)
    # The images go under the task's cache root, with its teacher views.
    assert len(list((tmp_path / "cache" / "synthetic").glob("*/*.png"))) == 3
    assert not (tmp_path / "default").exists()
    assert leaves.key != plain.key and load(dead_leaves=0).key == plain.key
    # Framed images are other images: another key (runs and rows follow it).
    assert load(dead_leaves=3, dead_leaves_fov=1.0).key != leaves.key
    for split in ("validation", "held_out", "reference"):
        assert leaves.photo_names[split] == plain.photo_names[split]
    added = [f"dead-leaves/{i:04d}" for i in range(3)]
    assert leaves.photo_names["train"] == plain.photo_names["train"] + added
    assert leaves.photos["train"] == plain.photos["train"] + 3
    np.testing.assert_array_equal(leaves.held_out[1], plain.held_out[1])
    inputs, targets = leaves.train
    assert len(inputs) == len(plain.train[0]) + 3
    expected = teacher(inputs[-3:].astype(np.float32) / 127.5 - 1.0, training=False)
    assert (
        np.abs(np.asarray(expected) - (targets[-3:] / 127.5 - 1.0)).max() <= 1 / 127.5
    )
    with pytest.raises(ValueError, match="dead_leaves=2 needs a teacher"):
        tasks.load(teacher=teacher_file, pairs=tmp_path / "photos", dead_leaves=2)


def test_a_one_hue_image_keeps_its_colours_near_one_hue():
    image = tgc.data.dead_leaves_image(96, seed=2, hue_band=(0.6, 0.08))
    hsv = np.asarray(Image.fromarray(image).convert("HSV"), float) / 255.0
    coloured = (hsv[..., 1] > 0.3) & (hsv[..., 2] > 0.3)  # hue is defined there
    distance = np.abs((hsv[..., 0][coloured] - 0.6 + 0.5) % 1.0 - 0.5)
    assert coloured.mean() > 0.2 and np.quantile(distance, 0.95) < 0.06
    free = np.asarray(Image.fromarray(tgc.data.dead_leaves_image(96, seed=2)))
    free = np.asarray(Image.fromarray(free).convert("HSV"), float)[..., 0] / 255.0
    assert np.quantile(np.abs((free - 0.6 + 0.5) % 1.0 - 0.5), 0.95) > 0.2
