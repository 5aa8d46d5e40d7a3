"""benchmarks/ops.py's Markdown: the numbers it states follow from its report."""

from benchmarks import folded_rows, ops


def _stats(op: str, count: int, ms: float, percent: float) -> dict:
    return {
        "op": op,
        "count": count,
        "total_ms": ms,
        "percent": percent,
        "delegated": count,
    }


# (plain, lowered) median ms per model and kind.
MEDIANS = {
    ("teacher", "fp32"): (1000.0, 900.0),
    ("teacher", "int8"): (500.0, 450.0),
    ("norms", "fp32"): (100.0, 60.0),
    ("norms", "int8"): (40.0, 30.0),
    ("folded", "fp32"): (60.0, 45.0),
    ("folded", "int8"): (20.0, 15.0),
}


def _report() -> dict:
    results, macs, op_stats = {}, {}, {}
    for index, lowering in enumerate(ops.LOWERINGS):
        for model in ops.MODELS:
            for kind in ops.KINDS:
                name = ops.file_name(model, kind, lowering)
                median = MEDIANS[model, kind][index]
                results[name] = {"median_ms": median, "times_ms": [median] * 3}
                macs[name] = 56.8e9 if model == "teacher" else 2.84e9
                if model != "teacher":
                    op_stats[name] = [
                        _stats("CONV_2D", 22, median / 2, 50.0),
                        _stats(
                            "TRANSPOSE_CONV"
                            if lowering == "plain"
                            else "DEPTH_TO_SPACE",
                            2,
                            median / 2,
                            50.0,
                        ),
                    ]
    # Rounds of the plain fp32 student: per-round speed-ups 10, 8 and 12.5.
    results["norms_fp32_plain"]["times_ms"] = [100.0, 125.0, 80.0]
    return {
        "student": "s.keras",
        "size": 256,
        "threads": 2,
        "runs": 3,
        "macs": macs,
        "float_layers": {"teacher": [], "norms": ["up2_conv"], "folded": []},
        "psnr": {name: 23.0 for name in results if not name.startswith("teacher")},
        "timing": {"results": results},
        "ops": op_stats,
    }


def test_markdown_states_speedups_ratios_and_op_tables():
    text = ops.to_markdown(_report())
    # Speed-ups over the teacher fp32 file of the same lowering; MACs ratio 20.
    assert (
        "| teacher_fp32_plain | 56.80 | 1000.0 | 1.00x (1.00-1.00) | 1.00 |  |" in text
    )
    assert (
        "| norms_fp32_plain | 2.84 | 100.0 | 10.00x (9.00-11.25) | 0.50 | 23.00 |"
        in (text)
    )
    assert (
        "| norms_fp32_lowered | 2.84 | 60.0 | 15.00x (15.00-15.00) | 0.75 | 23.00 |"
        in (text)
    )
    assert "| teacher_int8_lowered | 56.80 | 450.0 | 2.00x (2.00-2.00) | 2.00 |  |" in (
        text
    )
    assert "- norms, lowered: int8 2.00x faster than fp32." in text
    assert "- folded, plain: int8 3.00x faster than fp32." in text
    assert "- norms fp32: lowered 1.67x faster than plain." in text
    assert "- teacher int8: lowered 1.11x faster than plain." in text
    assert (
        "Kept float32 in int8: teacher: none, norms: `up2_conv`, folded: none." in text
    )
    assert "| TRANSPOSE_CONV | 2 | 50.00 | 50.0 | 0 | 0.00 | 0.0 |" in text
    assert text.count("| **total** |") == 4
    assert "timing runs" not in text  # one run: no per-run table


def test_markdown_gives_the_ratios_of_every_timing_run():
    report = _report()
    again = {
        name: result["median_ms"]
        for name, result in report["timing"]["results"].items()
    }
    again["folded_fp32_lowered"] = 36.0  # 900 / 36 = 25x: 1.25 of the MACs ratio
    report["repeats"] = [again]
    text = ops.to_markdown(report)
    assert "## The ratios in each of 2 interleaved timing runs" in text
    assert "| folded_fp32_lowered / MACs ratio | 1.00 | 1.25 |" in text
    assert "| norms lowered: int8 / fp32 | 2.00 | 2.00 |" in text
    assert "| folded fp32: lowered / plain | 1.33 | 1.67 |" in text


def test_folded_rows_ratios_follow_from_the_medians():
    medians = {"teacher": 100.0, "r norms": 10.0, "r norms_int8": 5.0}
    medians.update({"r folded": 8.0, "r folded_int8": 2.0})
    found = folded_rows.timing_ratios(medians, {"r": {"macs": 5}}, teacher_macs=100)
    assert found == {
        "r norms: fp32 speed-up / MACs ratio": 0.5,  # 10x at 20x fewer MACs
        "r norms: int8 / fp32 speed": 2.0,
        "r folded: fp32 speed-up / MACs ratio": 0.625,
        "r folded: int8 / fp32 speed": 4.0,
    }


def test_norms_report_ratios_and_markdown(tmp_path):
    from benchmarks import norms

    medians = {"teacher": 1000.0, "two_pass": 80.0, "two_pass_int8": 40.0}
    medians.update({"one_pass": 64.0, "one_pass_int8": 32.0})
    ratios = norms.run_ratios(medians, ["two_pass", "one_pass"], macs_ratio=20.0)
    assert ratios["two_pass: fp32 speed-up / MACs ratio"] == 1000.0 / 80.0 / 20.0
    assert ratios["one_pass: int8 / fp32 speed"] == 2.0
    assert ratios["one_pass / two_pass speed, fp32"] == 1.25
    assert ratios["one_pass / two_pass speed, int8"] == 1.25
    assert "two_pass / two_pass speed, fp32" not in ratios
    quality = {"psnr": 24.0, "psnr_int8": 23.9, "vs_two_pass": 90.0}
    report = {
        "row": "rows/gcc-1",
        "row_label": "gcc-1",
        "macs": 2.8e9,
        "macs_ratio": 20.0,
        "size": 256,
        "threads": 2,
        "runs": 10,
        "repeats": 1,
        "eval_images": 9,
        "float_layers": ["up2_conv"],
        "lowerings": ["two_pass", "one_pass"],
        "quality": {
            "two_pass": {**quality, "vs_two_pass_int8": 95.0},
            "one_pass": {**quality, "psnr": 23.5, "vs_two_pass_int8": 60.0},
        },
        "ratios": [ratios],
        "profiles": {
            "one_pass": {
                "total_ms": 50.0,
                "norm_ops": {"MUL": {"count": 3, "ms": 10.0, "full_size": 2}},
            }
        },
    }
    text = norms.to_markdown(report)
    assert "| one_pass | 23.500 | 23.900 | 90.0 dB | 60.0 dB |" in text
    assert "| one_pass / two_pass speed, fp32 | 1.250 | 1.250 |" in text
    assert "inside the norms 10.00 ms (20%)" in text
    assert "| MUL | 3 | 2 | 10.00 |" in text
    norms._plot(report, str(tmp_path / "norms.png"))
    assert (tmp_path / "norms.png").stat().st_size > 1000
