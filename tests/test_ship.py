"""Evaluate and ship: files, scores against the teacher, interleaved timing, reports."""

import json
import os

import keras
import numpy as np
import pytest
from PIL import Image

import tfgancompress as tgc
from tfgancompress import reports


def _teacher_and_student():
    keras.utils.set_random_seed(0)
    teacher = tgc.models.resnet_generator(ngf=8, n_blocks=1, affine=True)
    gated = tgc.pruning.add_gates(teacher, "binary")
    tgc.pruning.prune_gates_by_l1(gated, 0.5)
    return teacher, tgc.slim(gated)


def _images(count: int, size: int = 32) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.uniform(-1, 1, (count, size, size, 3)).astype("float32")


def test_ship_exports_scores_and_times_every_file(tmp_path):
    teacher, student = _teacher_and_student()
    inputs = _images(4)
    shipment = tgc.ship.ship(
        {"teacher": teacher, "student": student},
        str(tmp_path),
        inputs=inputs,
        int8=["student"],
        calibration=_images(16),
        references={"identity": inputs},
        runs=2,
        distributions=False,
    )
    rows = shipment.rows
    assert list(rows) == ["teacher", "student", "student_int8", "identity"]
    for name in ("teacher", "student", "student_int8"):
        assert os.path.getsize(rows[name]["file"]) > 0 and rows[name]["latency_ms"] > 0
    assert rows["teacher"]["speedup"] == 1.0 and rows["teacher"]["psnr"] == np.inf
    assert rows["student"]["macs"] == tgc.profile(student, (32, 32, 3)).macs
    assert rows["student_int8"]["macs"] == rows["student"]["macs"]
    expected = np.mean(tgc.metrics.psnr(shipment.outputs["teacher"], inputs))
    assert rows["identity"]["psnr"] == pytest.approx(float(expected), rel=1e-5)
    # The int8 file runs the student: closer to it than to the input.
    int8 = shipment.outputs["student_int8"]
    assert np.abs(int8 - shipment.outputs["student"]).mean() < 0.1
    assert rows["student"]["fd"] is None  # distributions off
    assert set(shipment.seconds) == {"export", "score", "time"}
    assert shipment.timing.baseline == "teacher"


def _colour_statistics(images) -> np.ndarray:
    """A cheap stand-in feature network: per-image channel means and stds."""
    images = np.asarray(images)
    return np.concatenate([images.mean(axis=(1, 2)), images.std(axis=(1, 2))], 1)


def test_ship_without_timing_exports_no_teacher(tmp_path):
    teacher, student = _teacher_and_student()
    shipment = tgc.ship.ship(
        {"teacher": teacher, "student": student},
        str(tmp_path),
        inputs=_images(3),
        timing=False,
        feature_fn=_colour_statistics,
    )
    assert sorted(os.listdir(tmp_path)) == ["student.json", "student.tflite"]
    assert shipment.timing is None and "latency_ms" not in shipment.rows["student"]
    assert shipment.rows["student"]["fd"] > 0  # two images: FD and KID computed
    one = tgc.ship.Scorer(_images(1), feature_fn=_colour_statistics)
    assert one.score(_images(1))["kid"] is None


def test_comparison_grid_has_an_amplified_difference_column(tmp_path):
    inputs = np.zeros((2, 8, 8, 3), "float32")
    teacher = np.full((2, 8, 8, 3), 0.5, "float32")
    student = teacher.copy()
    student[1] -= 0.25  # |difference| x4 = 1.0: half of the white level 2
    path = tmp_path / "grid.png"
    reports.save_comparison_grid(str(path), inputs, teacher, student)
    grid = np.asarray(Image.open(path)).astype(int)
    assert grid.shape == (16, 32, 3)
    assert grid[:8, 24:].max() == 0  # equal: black
    assert np.all(np.abs(grid[8:, 24:] - 128) <= 1)  # mid-grey


def test_reports_write_strict_json(tmp_path):
    report = {"psnr": float("inf"), "nan": float("nan"), "n": np.float32(2.5)}
    reports.write_report(str(tmp_path), "r", report, "# r\n")
    text = (tmp_path / "r.json").read_text()
    assert "Infinity" not in text and "NaN" not in text
    assert json.loads(text) == {"psnr": None, "nan": None, "n": 2.5}


def test_scorer_matches_its_definitions():
    rng = np.random.default_rng(1)
    targets = rng.uniform(-1, 1, (4, 32, 32, 3)).astype("float32")
    scorer = tgc.ship.Scorer(targets, feature_fn=_colour_statistics)
    scores = scorer.score(targets * 0.5)
    expected = 10 * np.log10(4 / np.mean((targets * 0.5) ** 2, axis=(1, 2, 3)))
    assert scores["psnr"] == pytest.approx(np.mean(expected), rel=1e-4)
    residual = targets * 0.5 - (targets * 0.5).mean(axis=(1, 2), keepdims=True)
    detail = 10 * np.log10(4 / np.mean(residual**2, axis=(1, 2, 3)))
    assert scores["detail_psnr"] == pytest.approx(np.mean(detail), rel=1e-4)
    assert scores["detail_psnr"] > scores["psnr"]
    assert scores["l1"] == pytest.approx(np.mean(np.abs(targets * 0.5)), rel=1e-4)
    assert scores["fd"] > 0
    assert scorer.score(targets)["fd"] == pytest.approx(0.0, abs=1e-6)
