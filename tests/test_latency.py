"""Tests of tfgancompress.latency on a tiny generator (64x64, ngf 8)."""

from __future__ import annotations

import json
import subprocess
import sys

import keras
import numpy as np
import pytest

from tfgancompress import export, latency
from tfgancompress.models import resnet_generator

SIZE = 64


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    keras.utils.set_random_seed(0)
    model = resnet_generator(ngf=8, n_blocks=2, input_shape=(SIZE, SIZE, 3))
    path = tmp_path_factory.mktemp("latency") / "tiny.tflite"
    return model, export.to_litert(model, path)


def test_parses_a_real_litert_benchmark_run(tiny, tmp_path):
    _, path = tiny
    result = latency.run_litert_benchmark(path, num_threads=2, runs=4, warmup=1)
    assert result["runs"] == 4
    assert 0 < result["min_ms"] <= result["median_ms"] <= result["max_ms"]
    assert result["p5_ms"] <= result["p95_ms"]
    assert result["init_ms"] > 0
    # The zoo's generators export without MIRROR_PAD: XNNPACK runs every op.
    assert result["fully_accelerated"] is True

    inputs = keras.Input((SIZE, SIZE, 3))
    padded = keras.layers.Lambda(
        lambda x: keras.ops.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="reflect")
    )(inputs)
    mirror = keras.Model(inputs, keras.layers.Conv2D(3, 3)(padded))
    mirror_path = export.to_litert(mirror, tmp_path / "mirror_pad.tflite")
    assert "MIRROR_PAD" in export.litert_ops(mirror_path)
    result = latency.run_litert_benchmark(mirror_path, num_threads=2, runs=2, warmup=1)
    assert result["fully_accelerated"] is False


def test_measure_latency_with_the_litert_benchmark_runner(tiny):
    _, path = tiny
    result = latency.measure_latency(
        path, runs=3, warmup=1, runner="litert-benchmark", profile_ops=False
    )
    assert result.runner == "litert-benchmark"
    assert result.median_ms > 0 and result.p90_ms is None
    assert result.p95_ms >= result.median_ms * 0.5


def test_parse_benchmark_output_names_the_missing_field():
    with pytest.raises(RuntimeError, match="Inference \\(min\\)"):
        latency.parse_benchmark_output(
            "Model initialization:  3.0 ms\nInference (avg):  2.0 ms (5 runs)\n"
        )


def test_measure_latency_times_and_profiles_ops(tiny):
    _, path = tiny
    result = latency.measure_latency(path, runs=4, warmup=1, op_runs=2)
    assert len(result.times_ms) == 4
    assert 0 < min(result.times_ms) <= result.median_ms <= result.p90_ms
    assert result.p90_ms <= max(result.times_ms)
    graph = export.litert_graph(path)
    assert len(result.op_timings) == len(graph)
    assert [t.op for t in result.op_timings] == [op.name for op in graph]
    by_op = {op.op: op for op in result.ops}
    assert by_op["CONV_2D"].count == sum(op.name == "CONV_2D" for op in graph)
    assert by_op["CONV_2D"].total_ms > 0
    assert sum(op.count for op in result.ops) == len(graph)
    assert sum(op.percent for op in result.ops) == pytest.approx(100.0)
    assert result.ops_total_ms == pytest.approx(sum(t.ms for t in result.op_timings))
    assert [op.total_ms for op in result.ops] == sorted(
        (op.total_ms for op in result.ops), reverse=True
    )
    assert result.delegate_partitions == 1
    assert all(op.delegated == op.count for op in result.ops)
    assert result.op_timings[-1].output_shape == (1, SIZE, SIZE, 3)
    markdown = result.to_markdown()
    assert "| CONV_2D |" in markdown and "1 XNNPACK partitions" in markdown
    assert json.loads(json.dumps(result.to_dict()))["median_ms"] == result.median_ms


def test_single_op_model_computes_the_op(tiny):
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.interpreter import Interpreter

    model, path = tiny
    with open(path, "rb") as file:
        flat = schema.ModelT.InitFromPackedBuf(file.read(), 0)
    index = [op.name for op in export.litert_graph(path)].index("CONV_2D")
    interpreter = Interpreter(model_content=latency._single_op_model(flat, index))
    interpreter.allocate_tensors()
    (detail,) = interpreter.get_input_details()
    padded = np.pad(
        np.ones((1, SIZE, SIZE, 3), np.float32), ((0, 0), (3, 3), (3, 3), (0, 0))
    )
    assert tuple(detail["shape"]) == padded.shape
    interpreter.set_tensor(detail["index"], padded)
    interpreter.invoke()
    output = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    stem = model.get_layer("stem_conv")
    np.testing.assert_allclose(output, np.asarray(stem(padded)), atol=1e-4)


def test_measure_latency_exports_a_keras_model(tiny, tmp_path):
    model, _ = tiny
    result = latency.measure_latency(
        model, runs=2, warmup=0, profile_ops=False, output_dir=str(tmp_path)
    )
    assert result.path.endswith(".tflite") and result.path.startswith(str(tmp_path))
    assert result.name == model.name and result.ops == []


def test_compare_latency_interleaves_and_reports_ratios(tiny, tmp_path):
    model, path = tiny
    small = resnet_generator(ngf=4, n_blocks=1, input_shape=(SIZE, SIZE, 3))
    comparison = latency.compare_latency(
        {"tiny": path, "smaller": small}, runs=3, warmup=1, output_dir=str(tmp_path)
    )
    assert comparison.baseline == "tiny"
    assert list(comparison.results) == ["tiny", "smaller"]
    assert comparison.speedup["tiny"] == pytest.approx(1.0)
    expected = comparison.results["tiny"].median_ms
    expected /= comparison.results["smaller"].median_ms
    assert comparison.speedup["smaller"] == pytest.approx(expected)
    low, high = comparison.speedup_spread["smaller"]
    assert 0 < low <= high
    assert all(len(r.times_ms) == 3 for r in comparison.results.values())
    markdown, json_path = latency.write_report(comparison, str(tmp_path / "cmp"))
    with open(json_path, encoding="utf-8") as file:
        assert json.load(file)["speedup"]["tiny"] == pytest.approx(1.0)
    with open(markdown, encoding="utf-8") as file:
        assert "| smaller |" in file.read()


def test_bad_inputs_get_specific_errors(tiny, tmp_path):
    _, path = tiny
    with pytest.raises(FileNotFoundError, match="missing.tflite"):
        latency.measure_latency(str(tmp_path / "missing.tflite"))
    with pytest.raises(ValueError, match="runner must be one of"):
        latency.measure_latency(path, runner="perf")
    with pytest.raises(ValueError, match="already a LiteRT file"):
        latency.measure_latency(path, quantization="int8")
    with pytest.raises(ValueError, match="runs >= 1"):
        latency.measure_latency(path, runs=0)
    with pytest.raises(ValueError, match="at least one model"):
        latency.compare_latency({})


def test_command_line_writes_markdown_and_json(tiny, tmp_path):
    _, path = tiny
    prefix = tmp_path / "report"
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "tfgancompress.latency",
            f"--model={path}",
            "--runs=2",
            "--warmup=0",
            "--noprofile_ops",
            f"--output={prefix}",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    with open(f"{prefix}.json", encoding="utf-8") as file:
        report = json.load(file)
    assert report["median_ms"] > 0 and len(report["times_ms"]) == 2
    assert "median" in completed.stdout


def test_op_comparison_lists_every_op_of_either_profile():
    before = [
        latency.OpStats("CONV_2D", 2, 6.0, 60.0, 2),
        latency.OpStats("MEAN", 4, 4.0, 40.0, 4),
    ]
    after = [latency.OpStats("CONV_2D", 2, 5.0, 100.0, 2)]
    table = latency.op_comparison_markdown(before, after, ("norms", "folded"))
    lines = table.splitlines()
    assert lines[0].startswith("| op | norms: count")
    assert "folded: count" in lines[0]
    assert lines[2] == "| CONV_2D | 2 | 6.00 | 60.0 | 2 | 5.00 | 100.0 |"
    assert lines[3] == "| MEAN | 4 | 4.00 | 40.0 | 0 | 0.00 | 0.0 |"
    assert lines[-1] == "| **total** | 6 | 10.00 | 100 | 2 | 5.00 | 100 |"


def test_latency_vs_macs_plot(tmp_path):
    import matplotlib.image

    points = [
        latency.LatencyPoint("teacher", 56.8e9, 1000.0),
        latency.LatencyPoint("student", 2.84e9, 62.5),
        latency.LatencyPoint("student_int8", 2.84e9, 25.0, kind="int8"),
    ]
    assert latency.speedup_over_macs_ratio(points[1], points[0]) == pytest.approx(0.8)
    path = latency.plot_latency_vs_macs(points, tmp_path / "p.png", "teacher")
    image = matplotlib.image.imread(path)
    assert image.shape[0] > 200 and image.shape[1] > 300
    with pytest.raises(ValueError, match="baseline 'nope'"):
        latency.plot_latency_vs_macs(points, tmp_path / "q.png", "nope")
    with pytest.raises(ValueError, match="positive MACs"):
        latency.plot_latency_vs_macs(
            [*points, latency.LatencyPoint("x", 0, 1.0)], tmp_path / "r.png", "teacher"
        )
