"""The ablation harness `benchmarks.quality`: shared refits, kept tables."""

import json
import types

import numpy as np

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
