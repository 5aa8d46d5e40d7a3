"""The README's main job: profile -> prune -> slim -> export on the real teacher."""

import json

import numpy as np
from PIL import Image

from tfgancompress import demo


def test_demo_writes_all_outputs(tmp_path):
    report = demo.run(str(tmp_path), keep_ratio=0.25, size=64, runs=2, threads=2)
    for name in ("student.keras", "teacher.tflite", "student.tflite", "report.md"):
        assert (tmp_path / name).stat().st_size > 0
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["teacher"]["macs"] == report["teacher"]["macs"]
    # A quarter of the filters leaves about 1/16 of the MACs.
    assert 12.0 < report["macs_ratio"] < 18.0
    assert report["student"]["params"] < report["teacher"]["params"] / 10
    assert report["slim_max_abs_diff"] <= 1e-4
    assert report["litert_max_abs_diff"] <= 1e-3
    grid = np.asarray(Image.open(tmp_path / "samples.png"))
    assert grid.shape == (64 * demo.SAMPLE_PHOTOS, 64 * 4, 3)  # ... | |diff| x4
    assert 0 < report["student"]["psnr"] < 60 and saved["teacher"]["psnr"] is None
