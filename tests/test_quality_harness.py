"""The ablation harness `benchmarks.quality`: shared refits, kept tables."""

import json
import types

import keras
import numpy as np
import pytest

import tfgancompress as tgc
from benchmarks import quality
from tfgancompress import models


def _row(name, psnr):
    return {
        "name": name,
        "note": f"{name} note",
        "macs": 2.8e9,
        "refit_psnr": 22.0,
        "untrained_psnr": 22.0,
        "psnr": psnr,
        "ssim": 0.7,
        "fd": 70.0,
        "above_identity": 4,
        "curve": [[0, 22.0, 23.0], [600, psnr, 24.0]],
        "seconds": {"refit": 1.0, "finetune": 2.0},
    }


def test_a_new_run_keeps_the_earlier_table_rows_and_marks_them(tmp_path):
    task_info = {
        "teacher_macs": 56.8e9,
        "macs_budget": 2.84e9,
        "held_out": 9,
        "identity_psnr": 22.81,
    }
    output_dir, rows_dir = tmp_path / "results", tmp_path / "work" / "rows"
    output_dir.mkdir()
    rows_dir.mkdir(parents=True)
    committed = [_row("long_mse", 23.67), _row("pixel_128", 23.58)]
    table = output_dir / "quality.json"
    table.write_text(json.dumps({"task": task_info, "rows": committed}))

    earlier = quality.earlier_rows(str(table), str(rows_dir))
    (rows_dir / "pixel_128.json").write_text(json.dumps(_row("pixel_128", 23.40)))
    (rows_dir / "blocks.json").write_text(json.dumps(_row("blocks", 23.90)))
    quality.write_tables(str(rows_dir), task_info, str(output_dir), earlier)

    rows = json.loads(table.read_text())["rows"]
    assert [(r["name"], r["psnr"], r.get("earlier", False)) for r in rows] == [
        ("long_mse", 23.67, True),
        ("pixel_128", 23.40, False),
        ("pixel_128", 23.58, True),
        ("blocks", 23.90, False),
    ]
    markdown = (output_dir / "quality.md").read_text()
    assert "| pixel_128 (earlier run) |" in markdown
    assert "| pixel_128 |" in markdown and "| blocks |" in markdown
    # Resuming: the table now holds this run's rows, which are not "earlier".
    again = quality.earlier_rows(str(table), str(rows_dir))
    assert [(r["name"], r["psnr"]) for r in again] == [
        ("long_mse", 23.67),
        ("pixel_128", 23.58),
    ]


def test_block_reconstruction_starts_from_the_cached_refit(tmp_path, monkeypatch):
    teacher = models.resnet_generator(ngf=8, n_blocks=1)
    rng = np.random.default_rng(0)
    inputs = rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    held_out = quality._as_float(inputs[:2])
    wanted = teacher.predict(held_out, verbose=0)
    task = types.SimpleNamespace(
        teacher=teacher,
        seed=0,
        keep_ratio=0.5,
        colour_map=None,
        views=lambda views: (inputs, inputs),
        psnr=lambda student: tgc.metrics.psnr(
            wanted, student.predict(held_out, verbose=0)
        ),
    )
    refits = []
    reconstruct = tgc.reconstruction.reconstruct
    monkeypatch.setattr(
        tgc.reconstruction,
        "reconstruct",
        lambda *args, **kwargs: refits.append(1) or reconstruct(*args, **kwargs),
    )
    recipe = quality.Recipe("refit", calibration_count=8)
    refitted, refit_info = quality.build_student(task, recipe, str(tmp_path))
    blocks = quality.dataclasses.replace(recipe, block_steps=3)
    student, info = quality.build_student(task, blocks, str(tmp_path))

    assert len(refits) == 1  # the blocks row reused the cached refit
    assert info["refit_psnr"] == refit_info["refit_psnr"]
    assert info["seconds"]["refit"] == refit_info["seconds"]["refit"]
    assert [name for name, *_ in info["block_errors"]][-1] is None
    assert (tmp_path / "students" / f"{blocks.student_key()}.keras").exists()
    moved = [
        not np.allclose(a, b)
        for a, b in zip(refitted.get_weights(), student.get_weights(), strict=True)
    ]
    assert any(moved)


def test_training_views_are_spread_over_fewer_reference_photos_than_asked():
    images = np.arange(100)
    assert list(quality._spread(images, 45)) == list(range(0, 90, 2))
    assert list(quality._spread(images[:32], 45)) == list(range(32))


def _report(sources: dict, white_balance: float = 0.0) -> dict:
    views = {"photo_size": 64, "crop_size": 32, "white_balance_jitter": white_balance}
    return {
        "task_description": "a small task",
        "sources": {"train": sources},
        "views": views,
        "rows": {
            "student": {
                "psnr": 25.5,
                "detail_psnr": 27.5,
                "ssim": 0.8,
                "fd": 60.0,
                "macs": 2.75e9,
            },
            "student_int8": {"psnr": 25.1},
            "identity": {"psnr": 22.8},
        },
        "initial_psnr": 21.7,
        "match_steps": 1600,
        "steps": 0,
        "seed": 1,
        "phase_seconds": {"build": 80.0, "refit": 50.0, "match": 480.0, "ship": 120.0},
        "wall_seconds": 736.0,
    }


def _run_dir(path, report: dict, student) -> str:
    path.mkdir()
    student.save(path / "student.keras")
    (path / "report.json").write_text(json.dumps(report))
    run = {"data": "the-data", "colour_skip": False, "seed": report["seed"]}
    run["detail_skip"] = 2.0
    (path / "run.json").write_text(json.dumps(run))
    return str(path)


def test_a_finished_train_run_becomes_a_row_with_its_per_photo_scores(tmp_path):
    student = keras.Sequential([keras.Input((None, None, 3)), keras.layers.Dense(3)])
    rng = np.random.default_rng(0)
    inputs = rng.uniform(-0.9, 0.9, (4, 64, 64, 3)).astype("float32")
    outputs = np.clip(student.predict(inputs, verbose=0), -1, 1)
    noise = rng.normal(0.0, 0.02, inputs.shape).astype("float32")
    # The student is near the teacher on three photos, the identity on one.
    targets = np.concatenate([outputs[:3], inputs[3:]]) + noise
    task = types.SimpleNamespace(
        key="the-data",
        held_out=(inputs, targets),
        photo_names={"held_out": [f"source/photo{i}" for i in range(4)]},
    )
    run_dir = _run_dir(tmp_path / "run", _report({"opencv-doc": 3}), student)

    row = quality.train_run_row("main_job_s1", run_dir, task)

    per_photo = np.asarray(tgc.metrics.psnr(targets, outputs))
    assert row["per_photo_psnr"] == pytest.approx(per_photo.tolist(), abs=1e-3)
    identity = np.asarray(tgc.metrics.psnr(targets, inputs))
    assert row["identity_per_photo"] == pytest.approx(identity.tolist(), abs=1e-3)
    assert row["above_identity"] == 3
    assert row["photos"] == ["photo0", "photo1", "photo2", "photo3"]
    assert (row["psnr"], row["detail_psnr"], row["int8_psnr"]) == (25.5, 27.5, 25.1)
    assert (row["refit_psnr"], row["wall_seconds"]) == (21.7, 736.0)
    assert (row["photo_set"], row["colour_skip"], row["seed"]) == ("standard", False, 1)
    assert row["detail_skip"] == 2.0
    assert (row["match_steps"], row["steps"], row["macs"]) == (1600, 0, 2.75e9)
    other = types.SimpleNamespace(**{**vars(task), "key": "other-data"})
    with pytest.raises(ValueError, match="trained on data the-data"):
        quality.train_run_row("main_job_s1", run_dir, other)


def test_a_run_task_is_its_reports_photo_set_or_the_smallest_with_its_sources():
    run = {"seed": 2}
    standard = quality.run_task_settings(_report({"opencv-doc": 3}), run)
    extended = quality.run_task_settings(
        _report({"opencv-doc": 3, "stellarium-data": 5}, white_balance=0.5), run
    )
    assert (standard["photo_set"], extended["photo_set"]) == ("standard", "extended")
    assert (extended["white_balance_jitter"], extended["photo_size"]) == (0.5, 64)
    assert (standard["seed"], standard["crops_per_photo"]) == (2, 2)
    named = {**_report({"opencv-doc": 3}), "photo_set": "extended"}
    assert quality.run_task_settings(named, run)["photo_set"] == "extended"
    # Dead-leaves images: from the report, off in reports written before them.
    assert (standard["dead_leaves"], standard["dead_leaves_fov"]) == (0, 0.0)
    leaves = {**named, "dead_leaves": 200, "dead_leaves_fov": 0.5}
    settings = quality.run_task_settings(leaves, run)
    assert (settings["dead_leaves"], settings["dead_leaves_fov"]) == (200, 0.5)


def _run(name: str, psnr: float) -> dict:
    return {
        "name": name,
        "photo_set": "extended",
        "views": {"white_balance_jitter": 0.5},
        "colour_skip": False,
        "match_steps": 1600,
        "steps": 0,
        "seed": 1,
        "macs": 2.75e9,
        "refit_psnr": 21.77,
        "psnr": psnr,
        "detail_psnr": 28.0,
        "ssim": 0.778,
        "fd": 75.6,
        "int8_psnr": 26.2,
        "per_photo_psnr": [25.0] * 9,
        "above_identity": 5,
        "wall_seconds": 736.0,
        "phase_seconds": {"build": 79.0, "refit": 49.0, "match": 481.0, "ship": 120.0},
    }


def test_runs_get_their_own_table_and_earlier_runs_stay(tmp_path):
    task_info = {
        "teacher_macs": 56.8e9,
        "macs_budget": 2.84e9,
        "held_out": 9,
        "identity_psnr": 22.81,
    }
    output_dir, rows_dir = tmp_path / "results", tmp_path / "rows"
    rows_dir.mkdir()
    (rows_dir / "greedy.json").write_text(json.dumps(_row("greedy", 24.16)))
    quality.write_tables(str(rows_dir), task_info, str(output_dir))
    harness = (output_dir / "quality.md").read_text()
    table = output_dir / "quality.json"
    saved = json.loads(table.read_text())

    quality.write_runs([_run("a", 26.42), _run("b", 26.58)], str(output_dir))
    detail = {**_run("c", 27.61), "colour_skip": True, "detail_skip": 2.0}
    # A resumed run whose report has no refit score, trained with dead leaves.
    resumed = {**_run("d", 26.5), "refit_psnr": None, "dead_leaves": 200}
    resumed["dead_leaves_fov"] = 0.5
    quality.write_runs([_run("b", 26.60), detail, resumed], str(output_dir))

    markdown = (output_dir / "quality.md").read_text()
    assert markdown.startswith(harness + "\n## Main-job runs (`training.train`)")
    assert (
        "| a (earlier run) | extended, white balance jitter 0.5 | none | 1600 | 0 | 1 "
        "| 2.75 | 21.77 | **26.42** | 28.00 | 0.778 | 75.6 | 5/9 | 26.20 | 736 "
        "| 79 | 49 | 481 |  | 120 |"
    ) in markdown
    assert "| b | " in markdown
    assert (
        "| c | extended, white balance jitter 0.5 | colour + detail 2 px |" in markdown
    )
    assert "b (earlier run)" not in markdown
    assert (
        "| d | extended, 200 dead leaves (50% framed), white balance jitter 0.5 "
        "| none | 1600 | 0 | 1 | 2.75 | - | **26.50** |"
    ) in markdown
    written = json.loads(table.read_text())
    assert (written["task"], written["rows"]) == (saved["task"], saved["rows"])
    assert [
        (r["name"], r["psnr"], r.get("earlier", False)) for r in written["runs"]
    ] == [
        ("a", 26.42, True),
        ("b", 26.60, False),
        ("c", 27.61, False),
        ("d", 26.5, False),
    ]
    # A harness run afterwards keeps the runs.
    quality.write_tables(str(rows_dir), task_info, str(output_dir))
    assert json.loads(table.read_text())["runs"] == written["runs"]
    assert (output_dir / "quality.md").read_text() == markdown
