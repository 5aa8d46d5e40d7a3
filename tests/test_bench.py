"""The method benchmark: one budget, rows cached and resumed, one timing pass."""

import json
import os
import signal
import subprocess
import sys
import time
import types

import keras
import numpy as np
import pytest
from tiny_tasks import TRAINING, VIEW_SETTINGS, VIEWS, write_photos, write_pth_teacher

import tfgancompress as tgc
from tfgancompress import reports
from training import bench, pipeline, ship, tasks, train

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


def _tiny_task(tmp_path) -> tasks.TaskData:
    """A task of 8 tiny photos (one held out) and a random ngf-8 teacher."""
    keras.utils.set_random_seed(0)
    teacher = tgc.models.resnet_generator(ngf=8, n_blocks=1, affine=True)
    write_photos(tmp_path / "photos", 8)
    return tasks.photo_task(
        teacher, "tiny", tmp_path / "photos", views=VIEWS, cache_dir=tmp_path / "c"
    )


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
    keep_ratio = rows["distill"]["method_state"]["keep_ratio"]
    assert 0 < keep_ratio < 1
    assert f"- distill: keep_ratio={keep_ratio}" in table
    assert first["rows"]["uniform"]["method_state"] == {}  # nothing chosen
    assert "- uniform:" not in table
    assert (out / "photos.png").stat().st_size > 0
    assert (out / "photos_latency.png").stat().st_size > 0
    for name in ("uniform", "distill"):
        assert (out / "curves" / f"{name}.png").stat().st_size > 0
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


def test_a_dmad_row_keeps_its_mask_trajectory(tmp_path, monkeypatch):
    task = _tiny_task(tmp_path)
    # Training is what writes the trajectory; export is tested above.
    monkeypatch.setattr(bench, "ship_row", lambda student, *_: {"macs": 1, "params": 1})
    config = train.settings({**_settings(), "macs_ratio": 8})
    row = tmp_path / "row"
    bench.train_row(bench.known_rows()["dmad"], task, config, str(row))
    assert not (row / "checkpoints").exists()
    trajectory = json.loads((row / "mask_trajectory.json").read_text())
    assert [r["event"] for r in trajectory["history"]] == ["check", "frozen"]
    assert trajectory["history"][-1]["open_macs"] <= trajectory["budget_macs"]
    assert (row / "mask_trajectory.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_trained_row_keeps_its_training_curves(tmp_path, monkeypatch):
    task = _tiny_task(tmp_path)
    monkeypatch.setattr(bench, "ship_row", lambda student, *_: {"macs": 1, "params": 1})
    settings = {"steps": 5, "match_steps": 3, "steps_per_epoch": 2}
    config = train.settings({**_settings(), **settings})
    directory = tmp_path / "row"
    bench.train_row(bench.known_rows()["distill"], task, config, str(directory))
    phases = bench.load_curves(str(directory))["phases"]
    assert [(p["phase"], p["start"], p["steps"]) for p in phases] == [
        ("match", 0, 3),
        ("finetune", 3, 5),
    ]
    match, finetune = (p["epochs"] for p in phases)
    assert [e["phase_step"] for e in match] == [2, 3]  # one per logged epoch
    assert [e["phase_step"] for e in finetune] == [2, 4, 5]
    assert [e["step"] for e in match + finetune] == [2, 3, 5, 7, 8]
    for epoch in match + finetune:
        assert 0 < epoch["val_psnr"] < 60 and epoch["val_l1"] > 0, epoch
    assert "loss" in match[0] and "g_loss" in finetune[0]
    bench._plot_curves("distill", str(directory), str(tmp_path / "out"))
    png = (tmp_path / "out" / "curves" / "distill.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_curves_count_steps_across_phases_and_stages():
    """A search phase first; fine-tuning stages' counters each start at 0."""
    history = {}
    for offset, stage in ((0, {"g_loss": [3.0, 2.0], "step": [2, 3]}), (3, {})):
        pipeline._extend_history(history, {**stage, "trained_steps": 3}, offset)
    pipeline._extend_history(
        history, {"g_loss": [1.0], "qat": [0.5], "step": [1], "trained_steps": 1}, 3
    )
    assert history == {
        "g_loss": [3.0, 2.0, 1.0],
        "step": [2, 3, 4],
        "trained_steps": 7,
        "qat": [None, None, 0.5],
    }
    del history["trained_steps"]
    result = pipeline.Compressed(
        student=None,
        macs=1,
        steps={"search": 4, "finetune": 4},
        seconds={},
        histories={
            "search": {"d_loss": [1.0, 0.5], "step": [2, 4]},
            "finetune": history,
        },
    )
    curves = bench.training_curves(result, {"match_steps": 0})["phases"]
    assert [(p["phase"], p["start"]) for p in curves] == [
        ("search", 0),
        ("finetune", 4),
    ]
    assert curves[0]["epochs"][1] == {"d_loss": 0.5, "phase_step": 4, "step": 4}
    assert [e["step"] for e in curves[1]["epochs"]] == [6, 7, 8]
    assert curves[1]["epochs"][0]["qat"] is None


def test_known_rows_without_a_cache_are_named_not_dropped(tmp_path, capsys):
    task = _tiny_task(tmp_path)
    out, work = tmp_path / "out", tmp_path / "work"
    # distill cached under another key (e.g. before its options changed).
    stale = bench.row_dir(str(work), "distill", "000000000000")
    os.makedirs(stale)
    reports.write_json(os.path.join(stale, "row.json"), {"method": "distill"})
    variants = {"pixel": ("distill", "lambda_distill=0")}
    results = bench.run([], str(out), str(work), task=task, variants=variants)
    assert list(results["rows"]) == ["teacher", "identity", "colour_map"]
    config = train.settings({"output_dir": str(out)})
    budget = train.budget_for(task, config)
    warnings = {
        line.split()[2]: line
        for line in capsys.readouterr().out.splitlines()
        if line.startswith("WARNING: row ")
    }
    assert set(warnings) == set(bench.known_rows(variants))
    for label, row in bench.known_rows(variants).items():
        key = train.run_key(row.make(), budget, config, task)
        assert f"(key {key})" in warnings[label]
        assert bench.row_dir(str(work), label, key) in warnings[label]
    assert "other keys: distill-000000000000." in warnings["distill"]
    assert "other keys" not in warnings["pixel"]


def test_rows_not_cached_here_are_kept_from_the_earlier_report(tmp_path, capsys):
    task = _tiny_task(tmp_path)
    out = tmp_path / "out"
    first = bench.run(
        ["uniform"], str(out), str(tmp_path / "a"), task=task, **_settings()
    )
    report = out / "photos.json"
    earlier = json.loads(report.read_text())
    del earlier["rows"]["uniform"]["key"]  # as rows recorded before the key was
    reports.write_json(str(report), earlier)
    # A new machine: nothing cached, the report of the earlier run in place.
    second = bench.run(
        ["distill"], str(out), str(tmp_path / "b"), task=task, **_settings()
    )
    rows = second["rows"]
    assert list(rows) == ["teacher", "identity", "colour_map", "uniform", "distill"]
    assert rows["uniform"]["from_report"] is True
    assert "from_report" not in rows["distill"]
    for key in ("psnr", "fd", "psnr_int8", "latency_ms", "speedup", "speedup_int8"):
        assert rows["uniform"][key] == first["rows"]["uniform"][key], key
    assert rows["distill"]["key"] in rows["distill"]["files"]["fp32"]
    assert "| uniform (earlier run) |" in (out / "photos.md").read_text()
    assert f"uniform: not cached here; kept from {report}" in capsys.readouterr().out
    # Under another run key (here another seed) the earlier rows are not kept.
    other = bench.run(
        [], str(out), str(tmp_path / "c"), task=task, **_settings(), seed=1
    )
    assert list(other["rows"]) == ["teacher", "identity", "colour_map"]
    report.write_text("{")
    with pytest.raises(ValueError, match="photos.json is not a readable benchmark"):
        bench.run([], str(out), str(tmp_path / "c"), task=task, **_settings())


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
    noskip = bench.known_rows()["distill_noskip"].make()
    assert noskip.name == "distill" and not noskip.colour_skip


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


def test_other_export_settings_reship_cached_rows_without_training(
    tmp_path, monkeypatch
):
    """A row cached before `--fold_norms` existed is re-exported, not retrained."""
    task = _tiny_task(tmp_path)
    out, work = tmp_path / "out", tmp_path / "work"
    settings = {**_settings(), "fold_norms": True}
    # The uniform row as an earlier bench left it: its student and a
    # row.json without an `export` record (norms computed per image).
    config = train.settings({**settings, "output_dir": str(out)})
    row = bench.known_rows()["uniform"]
    key = train.run_key(row.make(), train.budget_for(task, config), config, task)
    directory = bench.row_dir(str(work), "uniform", key)
    os.makedirs(directory)
    student = tgc.models.resnet_generator(ngf=4, n_blocks=1, affine=True)
    student.save(os.path.join(directory, "student.keras"))
    norms = ship.instance_norms(student)
    legacy = {"method": "uniform", "train_seconds": 12.5, "psnr": 1.0, "psnr_int8": 1.0}
    legacy["files"] = {"fp32": "gone.tflite", "int8": "gone_int8.tflite"}
    reports.write_json(os.path.join(directory, "row.json"), legacy)
    assert bench.needs_reship(legacy, config)
    unfolded = {**config, "fold_norms": False}
    assert bench.needs_reship(legacy, unfolded)  # two-pass norm statistics
    current = {
        "export": {
            "fold_norms": False,
            "norm_statistics": "one_pass",
            "int8_target_psnr": tgc.quantization.DEFAULT_TARGET_PSNR,
            "int8_plan": ship.INT8_PLAN,
        }
    }
    assert not bench.needs_reship(current, unfolded)
    assert bench.needs_reship({"export": {"fold_norms": False}}, unfolded)
    # Files made before the int8 plan's whole-output target: made again.
    before_target = {k: v for k, v in current["export"].items() if "int8" not in k}
    assert bench.needs_reship({"export": before_target}, unfolded)
    # ... and before the plan's residual stream candidate and 32 views.
    before_stream = {k: v for k, v in current["export"].items() if k != "int8_plan"}
    assert bench.needs_reship({"export": before_stream}, unfolded)

    def no_training(*args):
        raise AssertionError("a cached row was trained again")

    monkeypatch.setattr(bench, "train_row", no_training)
    first = bench.run(["uniform"], str(out), str(work), task=task, **settings)
    shipped = first["rows"]["uniform"]
    assert shipped["export"]["fold_norms"] is True
    assert shipped["export"]["folded_norms"] == norms > 0
    assert shipped["export"]["instance_norms"] == 0
    assert shipped["train_seconds"] == 12.5 and shipped["method"] == "uniform"
    assert not (out / "curves").exists()  # trained before curves were kept
    # The row's quality is the folded files'; the unfolded, the student's.
    inputs, targets = task.held_out
    own = np.mean(tgc.metrics.psnr(targets, student.predict(inputs, verbose=0)))
    assert shipped["psnr_unfolded"] == pytest.approx(own, abs=1e-3)
    assert shipped["psnr"] != pytest.approx(own, abs=1e-3)
    validation = shipped["export"]["validation_psnr"]
    assert shipped["psnr_validation"] == validation["folded"]
    assert shipped["psnr_validation_unfolded"] == validation["unfolded"]
    files = shipped["files"]
    assert os.path.dirname(files["fp32"]) == directory
    for path in files.values():
        ops = set(tgc.export.litert_ops(path))
        assert "MEAN" not in ops and "RSQRT" not in ops, ops
    assert shipped["latency_ms_int8"] > 0
    row_json = os.path.join(directory, "row.json")
    with open(row_json) as file:
        assert json.load(file)["export"]["fold_norms"] is True
    assert "| uniform | folded |" in (out / "photos.md").read_text()
    # Same settings again: read back as it is.
    stamp = os.stat(row_json).st_mtime_ns
    again = bench.run([], str(out), str(work), task=task, **settings)
    assert os.stat(row_json).st_mtime_ns == stamp
    assert again["rows"]["uniform"]["psnr"] == shipped["psnr"]
    # Back to norms per image: re-exported again, the folded facts dropped.
    per_image = bench.run(
        [], str(out), str(work), task=task, **{**settings, "fold_norms": False}
    )["rows"]["uniform"]
    assert per_image["export"] == {
        "fold_norms": False,
        "norm_statistics": "one_pass",
        "int8_target_psnr": tgc.quantization.DEFAULT_TARGET_PSNR,
        "int8_plan": ship.INT8_PLAN,
        "folded_norms": 0,
        "instance_norms": norms,
    }
    assert per_image["psnr"] == pytest.approx(own, abs=1e-3)
    assert not [k for k in per_image if "unfolded" in k or "validation" in k]
    assert "| uniform | per image |" in (out / "photos.md").read_text()
    # A cached row without its student is kept (and says how it was made).
    os.remove(os.path.join(directory, "student.keras"))
    kept = bench.run([], str(out), str(work), task=task, **settings)
    assert kept["rows"]["uniform"]["export"]["fold_norms"] is False


def test_a_quantization_aware_student_ships_unfolded():
    keras.utils.set_random_seed(0)
    student = tgc.models.resnet_generator(
        ngf=4, n_blocks=1, affine=True, input_shape=(16, 16, 3)
    )
    images = np.random.default_rng(0).uniform(-1, 1, (2, 16, 16, 3)).astype("float32")
    view = types.SimpleNamespace(reference=(images, images), validation=None)
    folded, export = ship.shipped_model(student, view, fold_norms=True)
    assert folded is not student and export["instance_norms"] == 0
    assert export["folded_norms"] == ship.instance_norms(student) > 0
    assert "validation_psnr" not in export  # no validation photos
    aware = tgc.quantization.quantize_generator(student, calibration=images)
    same, export = ship.shipped_model(aware, view, fold_norms=True)
    assert same is aware and export["folded_norms"] == 0
