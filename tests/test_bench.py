"""The method benchmark: one budget, rows cached and resumed, one timing pass."""

import json
import os
import signal
import subprocess
import sys
import time
import types

import keras
import pytest
from tiny_tasks import TRAINING, VIEW_SETTINGS, VIEWS, write_photos, write_pth_teacher

import tfgancompress as tgc
from training import bench, tasks

ROW_KEYS = (
    "method",
    "macs",
    "macs_ratio",
    "params",
    "d_macs",
    "steps",
    "train_seconds",
    "psnr",
    "ssim",
    "fd",
    "kid",
    "latency_ms",
    "speedup",
    "latency_ms_int8",
    "speedup_int8",
    "psnr_int8",
)


def _settings() -> dict:
    return {**TRAINING, "progress": 0}


def _row_json(work_dir, label) -> str:
    (folder,) = [f for f in os.listdir(work_dir / "rows") if f.startswith(label + "-")]
    return str(work_dir / "rows" / folder / "row.json")


def test_methods_trains_only_the_named_rows_and_reuses_the_rest(tmp_path, monkeypatch):
    keras.utils.set_random_seed(0)
    teacher = tgc.models.resnet_generator(ngf=8, n_blocks=1, affine=True)
    write_photos(tmp_path / "photos", 8)
    task = tasks.photo_task(  # one held-out photo: no FD (the command test has)
        teacher, "tiny", tmp_path / "photos", views=VIEWS, cache_dir=tmp_path / "c"
    )
    out, work = tmp_path / "out", tmp_path / "work"
    first = bench.run(["uniform"], str(out), str(work), task=task, **_settings())
    assert list(first["rows"]) == ["teacher", "identity", "colour_map", "uniform"]
    uniform = _row_json(work, "uniform")
    stamp = os.stat(uniform).st_mtime_ns
    second = bench.run(["distill"], str(out), str(work), task=task, **_settings())
    rows = second["rows"]
    assert list(rows) == ["teacher", "identity", "colour_map", "uniform", "distill"]
    assert os.stat(uniform).st_mtime_ns == stamp  # reused, not retrained
    assert rows["uniform"]["psnr"] == first["rows"]["uniform"]["psnr"]
    for key in ROW_KEYS:
        assert key in rows["distill"], key
    assert rows["distill"]["macs_ratio"] >= 20
    # At 32x32 LiteRT's per-call overhead dominates: the ratio is noise, its
    # definition is not (teacher median over the row's, for each file).
    for suffix in ("", "_int8"):
        assert rows["distill"][f"speedup{suffix}"] == pytest.approx(
            rows["teacher"]["latency_ms"] / rows["distill"][f"latency_ms{suffix}"]
        )
    assert rows["teacher"]["speedup"] == 1.0 and rows["teacher"]["psnr"] == float("inf")
    for name in ("identity", "colour_map", "uniform", "distill"):
        assert 0 < rows[name]["psnr"] < 60 and rows[name]["fd"] is None, name
    text = (out / "photos.json").read_text()
    assert "Infinity" not in text and "NaN" not in text
    saved = json.loads(text)
    assert saved["rows"]["teacher"]["psnr"] is None
    table = (out / "photos.md").read_text()
    assert "| distill |" in table and "python -m training.bench" in table
    assert (out / "photos.png").stat().st_size > 0
    assert (out / "photos_latency.png").stat().st_size > 0
    # --retrain: the cached row is dropped and trained again (training
    # itself is tested above, so a stand-in records the call).
    distill = _row_json(work, "distill")
    trained = []

    def stand_in(row, task, config, directory):
        trained.append((row.label, os.path.exists(directory)))
        return {"method": row.label, "psnr": 1.0}

    monkeypatch.setattr(bench, "train_row", stand_in)
    again = bench.run(
        ["distill"], str(out), str(work), task=task, retrain=True, **_settings()
    )
    assert trained == [("distill", False)] and not os.path.exists(distill)
    assert again["rows"]["distill"]["psnr"] == 1.0
    assert again["rows"]["uniform"]["psnr"] == rows["uniform"]["psnr"]
    with pytest.raises(ValueError, match=r"Unknown rows \['nope'\].*distill"):
        bench.run(["nope"], str(out), task=task)


def test_variants_are_rows_of_their_own():
    label, (method, options) = bench.parse_variant("pixel=distill:lambda_distill=0")
    assert (label, method, options) == ("pixel", "distill", "lambda_distill=0")
    row = bench.known_rows({label: (method, options)})["pixel"]
    assert row.make().options.lambda_distill == 0.0
    with pytest.raises(ValueError, match="label=method"):
        bench.parse_variant("distill")
    paper = bench.known_rows()["gan_slimming_paper"].make()  # a registered variant
    assert (paper.name, paper.options.content, paper.options.refit) == (
        "gan_slimming",
        "perceptual",
        False,
    )


def _bench_command(tmp_path) -> list[str]:
    settings = {**TRAINING, **VIEW_SETTINGS}
    del settings["progress"], settings["jit_compile"]
    return [
        sys.executable,
        "-m",
        "training.bench",
        f"--teacher={tmp_path / 'G.pth'}",
        f"--photos={tmp_path / 'photos'}",
        "--methods=uniform,distill",
        "--held_out_fraction=0.25",  # two photos: FD and KID are computed
        f"--output_dir={tmp_path / 'out'}",
        f"--work_dir={tmp_path / 'work'}",
        "--nojit_compile",
        *(f"--{key}={value}" for key, value in settings.items()),
    ]


def test_a_killed_bench_resumes_without_retraining_finished_rows(tmp_path):
    write_pth_teacher(tmp_path / "G.pth")
    write_photos(tmp_path / "photos", 8)
    environment = {**os.environ, "TFGANCOMPRESS_CACHE": str(tmp_path / "cache")}
    command = _bench_command(tmp_path)
    process = subprocess.Popen(
        command,
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    rows = tmp_path / "work" / "rows"
    deadline = time.monotonic() + 600
    while not list(rows.glob("uniform-*/row.json")):
        assert process.poll() is None, "the bench ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.5)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (tmp_path / "out" / "photos.json").exists()
    (finished,) = rows.glob("uniform-*/row.json")
    before = finished.read_text()
    stamp = finished.stat().st_mtime_ns
    result = subprocess.run(
        command, env=environment, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "uniform: cached" in result.stdout
    assert "distill: training" in result.stdout
    assert finished.stat().st_mtime_ns == stamp
    saved = json.loads((tmp_path / "out" / "photos.json").read_text())
    assert saved["rows"]["uniform"]["psnr"] == json.loads(before)["psnr"]
    assert saved["rows"]["distill"]["latency_ms_int8"] > 0
    assert saved["photos"]["held_out"] == 2
    assert saved["rows"]["teacher"]["fd"] == pytest.approx(0.0, abs=1e-3)
    for name in ("identity", "colour_map", "uniform", "distill"):
        assert saved["rows"][name]["fd"] > 1e-2, name


def test_timing_keeps_a_row_named_like_another_rows_int8_file(monkeypatch):
    """`gan_slimming_int8` is a row of its own, not `gan_slimming`'s int8 file."""
    rows = {
        "teacher": {},
        "a": {"files": {"fp32": "a.tflite", "int8": "a8.tflite"}},
        "a_int8": {"files": {"fp32": "b.tflite", "int8": "b8.tflite"}},
    }
    milliseconds = {"t.tflite": 8.0, "a.tflite": 4.0, "a8.tflite": 2.0}
    milliseconds.update({"b.tflite": 5.0, "b8.tflite": 1.0})

    def time_files(files, runs):
        results = {
            name: types.SimpleNamespace(median_ms=milliseconds[path])
            for name, path in files.items()
        }
        speedup = {name: 8.0 / r.median_ms for name, r in results.items()}
        return types.SimpleNamespace(results=results, speedup=speedup)

    monkeypatch.setattr(bench.tgc.ship, "time_files", time_files)
    bench._time_rows(rows, "t.tflite", runs=1)
    assert rows["a"]["latency_ms"] == 4.0 and rows["a"]["latency_ms_int8"] == 2.0
    assert rows["a_int8"]["latency_ms"] == 5.0
    assert rows["a_int8"]["latency_ms_int8"] == 1.0
    assert rows["a_int8"]["speedup_int8"] == 8.0 and rows["teacher"]["speedup"] == 1.0
