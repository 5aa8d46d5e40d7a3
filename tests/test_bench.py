"""The method benchmark writes one table with quality and speed per row."""

import json

import pytest

from training import bench


def test_bench_rows_and_files(tmp_path):
    results = bench.run(
        ["teacher", "identity", "colour_map", "uniform"],
        str(tmp_path),
        steps=1,
        steps_per_epoch=1,
        batch_size=2,
        crop_size=32,
        photo_size=64,
        crops_per_photo=1,
        eval_size=64,
        ndf=8,
        latency_runs=2,
        jit_compile=False,
        verbose=0,
    )
    rows = results["rows"]
    assert list(rows) == ["teacher", "identity", "colour_map", "uniform"]
    assert rows["teacher"]["speedup"] == 1.0
    assert rows["uniform"]["speedup"] > 1.0
    assert rows["uniform"]["latency_ms_int8"] > 0
    assert rows["uniform"]["macs_ratio"] >= 20
    assert rows["teacher"]["psnr"] == float("inf")
    assert rows["teacher"]["fd"] == pytest.approx(0.0, abs=1e-3)
    for name in ("identity", "colour_map", "uniform"):
        # Not the teacher's distribution: FD clearly above zero.
        assert 0 < rows[name]["psnr"] < 60 and rows[name]["fd"] > 1.0
    saved = json.loads((tmp_path / "vintage.json").read_text())
    assert saved["rows"]["uniform"]["psnr"] == pytest.approx(rows["uniform"]["psnr"])
    table = (tmp_path / "vintage.md").read_text()
    assert "| uniform |" in table and "python -m training.bench" in table
    assert (tmp_path / "vintage.png").stat().st_size > 0
    with pytest.raises(ValueError, match=r"Unknown methods \['nope'\].*distill"):
        bench.run(["nope"], str(tmp_path))
