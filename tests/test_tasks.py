"""Tasks: splits by photo, the teacher's views as targets, loaded once, errors."""

import dataclasses

import keras
import numpy as np
import pytest
from tiny_tasks import VIEWS, write_pairs, write_photos, write_pth_teacher

import tfgancompress as tgc
from training import tasks
from training.tasks import base

STEP = 1 / 127.5  # one uint8 level in [-1, 1]


def _teacher(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return tgc.models.resnet_generator(ngf=8, n_blocks=1, affine=True)


def _disjoint(names: dict) -> bool:
    splits = ("train", "validation", "held_out")
    return sum(len(names[s]) for s in splits) == len(
        {n for s in splits for n in names[s]}
    )


def test_split_photos_is_seeded_by_photo_and_keeps_one_to_train():
    photos = list(range(20))
    train, validation, reference = base.split_photos(photos, 5, 4, seed=0)
    assert len(validation) == 5 and len(train) == 15 and len(reference) == 4
    assert set(train).isdisjoint(validation) and set(reference) <= set(train)
    assert base.split_photos(photos, 5, 4, seed=0) == (train, validation, reference)
    assert base.split_photos(photos, 5, 4, seed=1)[1] != validation
    train, validation, reference = base.split_photos([7, 8], 16, 32, seed=0)
    assert len(train) == 1 and len(validation) == 1 and reference == train


def test_views_reject_bad_settings():
    with pytest.raises(ValueError, match="crop_size=48 must be a multiple of 4 in"):
        tasks.Views(photo_size=40, crop_size=48)
    with pytest.raises(ValueError, match="colour_jitter must be in"):
        tasks.Views(colour_jitter=2.0)
    assert tasks.Views.from_settings({"crop_size": 64, "steps": 3}).crop_size == 64


def test_photo_task_targets_are_the_teachers_views_and_are_cached(tmp_path):
    write_photos(tmp_path / "photos", 10)
    teacher = _teacher()
    cache = tmp_path / "cache"
    task = tasks.photo_task(
        teacher, "tiny", tmp_path / "photos", None, 0.2, VIEWS, seed=0, cache_dir=cache
    )
    assert task.photos == {"train": 6, "validation": 2, "held_out": 2, "reference": 4}
    names = task.photo_names
    assert _disjoint(names) and set(names["reference"]) <= set(names["train"])
    inputs, targets = task.train
    assert inputs.shape == targets.shape == (6, 32, 32, 3) and inputs.dtype == np.uint8
    expected = teacher(base.to_float(inputs), training=False)
    assert np.abs(np.asarray(expected) - base.to_float(targets)).max() <= STEP
    for split in (task.held_out, task.validation, task.reference):
        expected = teacher(split[0], training=False)
        assert np.abs(np.asarray(expected) - split[1]).max() <= STEP
    x, y = next(iter(task.dataset(batch_size=4)))
    assert x.shape == y.shape == (4, 32, 32, 3) and float(np.min(x)) >= -1.0
    assert task.calibration(3).shape == (3, 32, 32, 3)
    assert task.colour_map is task.colour_map  # fitted once
    assert set(task.references()) == {"identity", "colour_map"}
    # A second load reads the views back: another teacher changes nothing.
    again = tasks.photo_task(
        _teacher(1),
        "tiny",
        tmp_path / "photos",
        None,
        0.2,
        VIEWS,
        seed=0,
        cache_dir=cache,
    )
    np.testing.assert_array_equal(again.train[1], targets)
    assert again.key == task.key
    other = tasks.photo_task(
        teacher, "tiny", tmp_path / "photos", None, 0.2, VIEWS, seed=3, cache_dir=cache
    )
    assert other.key != task.key
    assert other.photo_names["validation"] != names["validation"]


def test_photo_task_with_a_held_out_folder(tmp_path):
    write_photos(tmp_path / "train", 5)
    write_photos(tmp_path / "held", 3, seed=9, prefix="other")
    task = tasks.photo_task(
        _teacher(),
        "tiny",
        tmp_path / "train",
        tmp_path / "held",
        views=VIEWS,
        cache_dir=tmp_path / "cache",
    )
    assert task.photos["held_out"] == 3 and task.photos["train"] == 3
    assert all("other" in name for name in task.photo_names["held_out"])
    assert task.held_out[0].shape == (3, 32, 32, 3)


def test_pair_task_trains_on_the_pairs_and_scores_against_the_teacher(tmp_path):
    write_pairs(tmp_path / "pairs", 8)
    teacher = _teacher()
    task = tasks.pair_task(teacher, "tiny", tmp_path / "pairs", None, 0.25, VIEWS)
    assert task.photos == {"train": 4, "validation": 2, "held_out": 2, "reference": 4}
    inputs, targets = task.train
    # B is the negative of A, cut at the same place (resizing rounds).
    combined = inputs.astype(int) + targets.astype(int)
    assert np.abs(combined - 255).max() <= 2
    held_inputs, held_targets = task.held_out
    expected = teacher(held_inputs, training=False)
    assert np.abs(np.asarray(expected) - held_targets).max() <= STEP
    # Every iterator (a training phase, a resumed run) reads the same
    # shuffled stream, however far earlier ones prefetched.
    data = task.dataset(batch_size=2, seed=0)
    first = [x.numpy() for x, _ in data.take(6)]
    for count in (1, 5):
        iterator = iter(data)
        for _ in range(count):
            next(iterator)
        del iterator
    np.testing.assert_array_equal([x.numpy() for x, _ in data.take(6)], first)
    epoch = np.round((np.concatenate(first[:2]) + 1.0) * 127.5).astype(np.uint8)
    assert sorted(v.tobytes() for v in epoch) == sorted(v.tobytes() for v in inputs)


def test_load_picks_the_task_and_rejects_bad_choices(tmp_path, monkeypatch):
    monkeypatch.setenv("TFGANCOMPRESS_CACHE", str(tmp_path / "cache"))
    write_photos(tmp_path / "photos", 4)
    write_pth_teacher(tmp_path / "G.pth")
    model, key = tasks.load_teacher(tmp_path / "G.pth")
    assert key.startswith("teacher-") and model.output_shape[-1] == 3
    model.save(tmp_path / "G.keras")
    _, keras_key = tasks.load_teacher(tmp_path / "G.keras")
    assert keras_key != key
    task = tasks.load(
        teacher=tmp_path / "G.pth", photos=tmp_path / "photos", views=VIEWS
    )
    assert task.name == "photos" and task.photos["held_out"] == 1
    with pytest.raises(ValueError, match="need your teacher"):
        tasks.load(photos=tmp_path / "photos")
    with pytest.raises(ValueError, match="not both"):
        tasks.load(teacher=tmp_path / "G.pth", photos="a", pairs="b")
    with pytest.raises(ValueError, match="goes with your photos"):
        tasks.load(teacher=tmp_path / "G.pth", held_out=tmp_path)
    with pytest.raises(FileNotFoundError, match="missing.pth does not exist"):
        tasks.load_teacher(tmp_path / "missing.pth")
    (tmp_path / "G.onnx").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"expected one of \.pth, \.keras"):
        tasks.load_teacher(tmp_path / "G.onnx")
    write_photos(tmp_path / "one", 1)
    with pytest.raises(ValueError, match="at least 2 photos"):
        tasks.photo_task(model, key, tmp_path / "one", views=VIEWS)


def test_vintage_task_holds_out_by_source_and_splits_validation_by_photo():
    views = tasks.Views(photo_size=64, crop_size=32, crops_per_photo=1, eval_size=64)
    task = tasks.vintage_task(views)
    photos = task.photos
    assert photos["held_out"] == 9 and task.sources["held_out"] == {"scikit-image": 9}
    assert photos["validation"] == 16
    assert photos["reference"] == min(32, photos["train"])
    assert _disjoint(task.photo_names)
    assert sum(task.sources["train"].values()) == photos["train"]
    assert len(task.train[0]) == photos["train"]  # one view per photo
    assert task.validation[0].shape == (16, 64, 64, 3)


def test_the_colour_map_reference_recovers_a_linear_map():
    rng = np.random.default_rng(0)
    inputs = rng.uniform(-1, 1, (2, 16, 16, 3)).astype("float32")
    matrix = np.array([[0.8, 0.1, 0.0], [0.0, 0.9, 0.1], [0.1, 0.0, 0.7]])
    targets = (inputs @ matrix + 0.05).astype("float32")
    task = tasks.TaskData(
        "linear",
        "a linear map",
        None,
        (inputs, targets),
        None,
        (inputs, targets),
        (inputs, targets),
        {},
        {},
        VIEWS,
        "key",
    )
    np.testing.assert_allclose(task.references()["colour_map"], targets, atol=1e-4)
    np.testing.assert_array_equal(task.references()["identity"], inputs)


def test_tone_jitters_off_keep_the_data_key_and_on_change_it(tmp_path):
    # The views' description and data key as they were before the tone
    # jitters existed: every cached view folder and benchmark row keyed on
    # them stays valid while the jitters are off.
    legacy = (
        "Views(photo_size=256, crop_size=128, crops_per_photo=2, "
        "colour_jitter=0.5, eval_size=256, reference_photos=32, "
        "validation_photos=16)"
    )
    assert tasks.VIEWS.description() == legacy
    described = {"teacher": "vintage", "views": legacy, "seed": 0, "train": ["a/b"]}
    assert base.data_key(described) == "9bed7838e6ea"
    toned = dataclasses.replace(tasks.VIEWS, white_balance_jitter=0.5)
    assert toned.description() == legacy[:-1] + ", white_balance_jitter=0.5)"
    with pytest.raises(ValueError, match="gamma_jitter must be in"):
        tasks.Views(gamma_jitter=2.0)
    write_photos(tmp_path / "photos", 6)
    teacher = _teacher()

    def task(views):
        return tasks.photo_task(
            teacher, "tiny", tmp_path / "photos", None, 0.2, views, 0, tmp_path
        )

    plain = task(VIEWS)
    gamma = task(dataclasses.replace(VIEWS, gamma_jitter=1.0, channel_gamma_jitter=1.0))
    assert gamma.key != plain.key
    assert not np.array_equal(gamma.train[0], plain.train[0])
    np.testing.assert_array_equal(gamma.held_out[0], plain.held_out[0])  # train only
    expected = teacher(base.to_float(gamma.train[0]), training=False)
    assert np.abs(np.asarray(expected) - base.to_float(gamma.train[1])).max() <= STEP


def _fake_extra_package(photo_dir, source: str, name: str, seed: int) -> None:
    """One catalogued photo of an extended-set package, as the set-up unpacks it."""
    from PIL import Image

    location = tgc.data.builtin.catalogue.EXTRA_PHOTOS[source][name]
    path = photo_dir / source / tgc.data.builtin.catalogue.EXTRA_FOLDERS[source]
    path = path / location
    path.parent.mkdir(parents=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (48, 56, 3), np.uint8)
    Image.fromarray(pixels).save(path)


def test_photo_set_standard_keeps_the_data_key_and_extended_changes_it(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("TFGANCOMPRESS_PHOTOS", str(tmp_path / "photos"))
    (tmp_path / "photos").mkdir()
    teacher = _teacher()
    assert tasks.DEFAULTS["photo_set"] == "standard"
    with pytest.raises(ValueError, match="none of its extra sources"):
        tasks.builtin_task(teacher, "tiny", VIEWS, photo_set="extended")
    with pytest.raises(ValueError, match="Unknown photo set 'big'"):
        tasks.load(photo_set="big")
    _fake_extra_package(tmp_path / "photos", "mate-backgrounds", "Aqua", 1)
    _fake_extra_package(tmp_path / "photos", "stellarium-data", "m16", 2)

    def task(**photo_set):
        return tasks.builtin_task(
            teacher, "tiny", VIEWS, cache_dir=tmp_path / "cache", **photo_set
        )

    plain, standard, extended = (
        task(),
        task(photo_set="standard"),
        task(photo_set="extended"),
    )
    # The standard set is what builtin_photos() has always given: same
    # photos, same key (cached rows stay valid).
    train, held_out = tgc.data.split_by_source(tgc.data.builtin_photos())
    names = {f"{p.source}/{p.name}" for p in train}
    assert standard.key == plain.key
    assert {n for s in ("train", "validation") for n in plain.photo_names[s]} == names
    expected = {"teacher": "tiny", "views": VIEWS.description(), "seed": 0}
    assert plain.key == base.data_key({**expected, **plain.photo_names})
    # Extended: two more training photos, the same held-out photos, a new key.
    assert extended.key != plain.key
    assert extended.photo_names["held_out"] == plain.photo_names["held_out"]
    assert extended.sources["held_out"] == {"scikit-image": 9}
    extra = {"mate-backgrounds/Aqua", "stellarium-data/m16"}
    trained = set(extended.photo_names["train"]) | set(
        extended.photo_names["validation"]
    )
    assert trained == names | extra
    assert "extended built-in photos" in extended.description
