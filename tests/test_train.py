"""The main job end to end at toy sizes, and its references."""

import json

import numpy as np
import pytest
from PIL import Image

from training import evaluation, train
from training.budget import BudgetError


def test_colour_map_reference_recovers_a_linear_map():
    rng = np.random.default_rng(0)
    inputs = rng.uniform(-1, 1, (2, 16, 16, 3)).astype("float32")
    matrix = np.array([[0.8, 0.1, 0.0], [0.0, 0.9, 0.1], [0.1, 0.0, 0.7]])
    targets = (inputs @ matrix + 0.05).astype("float32")
    mapped = evaluation.colour_map_reference((inputs, targets))(inputs)
    np.testing.assert_allclose(mapped, targets, atol=1e-4)


def test_teacher_comparison_scores():
    rng = np.random.default_rng(1)
    targets = rng.uniform(-1, 1, (4, 32, 32, 3)).astype("float32")
    scores = evaluation.TeacherComparison(targets).score(targets * 0.5)
    expected = 10 * np.log10(4 / np.mean((targets * 0.5) ** 2, axis=(1, 2, 3)))
    assert scores["psnr"] == pytest.approx(np.mean(expected), rel=1e-4)
    assert scores["l1"] == pytest.approx(np.mean(np.abs(targets * 0.5)), rel=1e-4)
    assert scores["fd"] > 0
    same = evaluation.TeacherComparison(targets).score(targets)
    assert same["fd"] == pytest.approx(0.0, abs=1e-3)


SMALL = {
    "steps": 2,
    "steps_per_epoch": 1,
    "batch_size": 2,
    "crop_size": 32,
    "photo_size": 64,
    "crops_per_photo": 1,
    "eval_size": 64,
    "ndf": 8,
    "latency_runs": 2,
    "jit_compile": False,
    "verbose": 0,
}


def test_main_job_writes_everything(tmp_path):
    report = train.run(
        **SMALL,
        method_options="lambda_distill=2",
        reconstruction_views=8,
        output_dir=str(tmp_path),
    )
    for name in ("student.keras", "student.tflite", "student_int8.tflite"):
        assert (tmp_path / name).stat().st_size > 0
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["steps"] == 2 and saved["method"] == "distill"
    assert saved["method_options"]["lambda_distill"] == 2.0
    assert saved["phase_steps"] == {"search": 0, "finetune": 2}
    rows = report["rows"]
    assert report["macs_ratio"] >= 20
    assert rows["student"]["macs"] <= report["macs_budget"]
    assert rows["teacher"]["psnr"] == float("inf")
    assert np.isfinite(rows["identity"]["psnr"])
    assert rows["student"]["latency_ms"] > 0
    assert report["reconstruction_views"] == 8
    assert np.isfinite(report["initial_psnr"])
    assert "refitted by least squares on 8" in (tmp_path / "report.md").read_text()
    grid = np.asarray(Image.open(tmp_path / "samples.png"))
    assert grid.shape == (64 * report["eval_images"], 64 * 4, 3)
    with pytest.raises(ValueError, match="Unknown settings"):
        train.run(stepz=3)


def test_main_job_rejects_unknown_methods_options_and_budgets(tmp_path):
    with pytest.raises(ValueError, match="Unknown method 'nope'; available: distill"):
        train.run(method="nope")
    with pytest.raises(ValueError, match=r"\['lambda'\].*known: lambda_gan"):
        train.run(method="uniform", method_options="lambda=1")
    with pytest.raises(BudgetError, match="out of reach for method 'uniform'"):
        train.run(**SMALL, method="uniform", macs_ratio=1e6, output_dir=str(tmp_path))
