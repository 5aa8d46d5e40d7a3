"""The main job end to end at toy sizes, and its references."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from tiny_tasks import TRAINING, VIEW_SETTINGS, write_photos, write_pth_teacher

from tfgancompress import console
from training import train
from training.budget import BudgetError

SMALL = {
    "steps": 2,
    "match_steps": 2,
    "steps_per_epoch": 1,
    "batch_size": 2,
    "crop_size": 32,
    "photo_size": 64,
    "crops_per_photo": 1,
    "eval_size": 64,
    "ndf": 8,
    "latency_runs": 2,
    "jit_compile": False,
    "progress": 0,
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
    assert saved["photo_set"] == "standard"
    assert saved["method_options"]["lambda_distill"] == 2.0
    assert saved["phase_steps"] == {"search": 0, "finetune": 2}
    rows = report["rows"]
    assert report["macs_ratio"] >= 20
    assert rows["student"]["macs"] <= report["macs_budget"]
    assert rows["teacher"]["psnr"] == float("inf")
    assert saved["rows"]["teacher"]["psnr"] is None  # strict JSON
    assert np.isfinite(rows["identity"]["psnr"])
    assert rows["student"]["latency_ms"] > 0 and rows["student_int8"]["speedup"] > 0
    assert report["reconstruction_views"] == 8
    assert np.isfinite(report["initial_psnr"])
    assert "refitted by least squares on 8" in (tmp_path / "report.md").read_text()
    assert saved["photos"]["held_out"] == 9 and saved["photos"]["validation"] == 16
    assert set(saved["phase_seconds"]) >= {"task", "build", "refit", "finetune", "ship"}
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
    with pytest.raises(ValueError, match="steps=0 leaves method 'dmad' no steps"):
        train.run(method="dmad", steps=0, output_dir=str(tmp_path / "dmad"))
    assert not (tmp_path / "dmad").exists()  # refused before any work


def _console_lines(output: str) -> list[str]:
    """The lines a person reads besides progress bars and the final report."""
    lines = output.replace("\r", "\n").splitlines()
    report = next(i for i, line in enumerate(lines) if line.startswith("# "))
    return [
        line
        for line in lines[:report]
        if line.strip() and "\u2501" not in line and not line.startswith("Epoch ")
    ]


def test_your_teacher_and_photos_end_to_end(tmp_path):
    """`--teacher=G.pth --photos=DIR`, run as a command: files, report, console."""
    write_pth_teacher(tmp_path / "G.pth")
    write_photos(tmp_path / "photos", 8)
    write_photos(tmp_path / "held_out", 2, seed=5)
    settings = {**TRAINING, **VIEW_SETTINGS}
    del settings["progress"], settings["jit_compile"]
    command = [
        sys.executable,
        "-m",
        "training.train",
        f"--teacher={tmp_path / 'G.pth'}",
        f"--photos={tmp_path / 'photos'}",
        f"--held_out={tmp_path / 'held_out'}",
        f"--output_dir={tmp_path / 'out'}",
        "--nojit_compile",
        *(f"--{key}={value}" for key, value in settings.items()),
    ]
    environment = {**os.environ, "TFGANCOMPRESS_CACHE": str(tmp_path / "cache")}
    result = subprocess.run(
        command, capture_output=True, text=True, env=environment, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "out"
    for name in ("student.keras", "student.tflite", "student_int8.tflite"):
        assert (out / name).stat().st_size > 0
    report = json.loads((out / "report.json").read_text())
    assert report["task"] == "photos" and report["photos"]["held_out"] == 2
    assert report["photos"]["train"] + report["photos"]["validation"] == 8
    assert report["macs_ratio"] >= 20 and report["rows"]["student"]["psnr"] > 0
    lines = _console_lines(result.stdout + result.stderr)
    assert len(lines) < 30, "\n".join(lines)
    assert not [line for line in lines if console.is_noise(line)]
