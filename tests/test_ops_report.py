"""benchmarks/ops.py's Markdown: the numbers it states follow from its report."""

from benchmarks import ops


def _stats(op: str, count: int, ms: float, percent: float) -> dict:
    return {
        "op": op,
        "count": count,
        "total_ms": ms,
        "percent": percent,
        "delegated": count,
    }


def test_markdown_states_speedups_ratios_and_op_tables():
    names = ("teacher_fp32", "before_fp32", "before_int8", "after_fp32", "after_int8")
    medians = dict(zip(names, (1000.0, 80.0, 40.0, 60.0, 20.0), strict=True))
    report = {
        "student": "s.keras",
        "size": 256,
        "threads": 2,
        "runs": 10,
        "macs": {name: 56.8e9 if name == "teacher_fp32" else 2.84e9 for name in names},
        "psnr": {name: 23.0 for name in names[1:]},
        "timing": {
            "results": {name: {"median_ms": ms} for name, ms in medians.items()},
            "speedup": {name: 1000.0 / ms for name, ms in medians.items()},
        },
        "ops": {
            "before_fp32": [
                _stats("CONV_2D", 22, 50.0, 62.5),
                _stats("MEAN", 46, 30.0, 37.5),
            ],
            "after_fp32": [_stats("CONV_2D", 22, 55.0, 100.0)],
            "before_int8": [
                _stats("CONV_2D", 22, 20.0, 50.0),
                _stats("MUL", 69, 20.0, 50.0),
            ],
            "after_int8": [_stats("CONV_2D", 22, 18.0, 100.0)],
        },
    }
    text = ops.to_markdown(report)
    # after_fp32: 1000 / 60 = 16.67x at a MACs ratio of 20: 0.83 of it.
    assert "| after_fp32 | 2.84 | 60.0 | 16.67x | 0.83 | 23.00 |" in text
    assert "| teacher_fp32 | 56.80 | 1000.0 | 1.00x | 1.00 |  |" in text
    assert "- before: int8 2.00x faster than fp32." in text
    assert "- after: int8 3.00x faster than fp32." in text
    assert "| MEAN | 46 | 30.00 | 37.5 | 0 | 0.00 | 0.0 |" in text
    assert text.count("| **total** |") == 2
