"""Photo-by-photo comparison of models (`tgc.metrics.paired_comparison`) and
the per-photo benchmark's report logic (`benchmarks.per_photo`)."""

import itertools
import json

import numpy as np
import pytest

from benchmarks import per_photo
from tfgancompress import metrics


def test_paired_comparison_counts_every_sign_pattern():
    out = metrics.paired_comparison([25.0, 24.0, 26.0], [24.0, 23.5, 25.0])
    assert out["mean"] == pytest.approx(5 / 6)
    assert out["wins"] == 3 and out["n"] == 3
    # Differences 1, 0.5, 1: only all-plus and all-minus are as extreme.
    assert out["p_value"] == pytest.approx(2 / 8)
    assert 0.5 <= out["low"] <= out["mean"] <= out["high"] <= 1.0


def test_paired_comparison_p_value_is_the_exact_permutation_test():
    rng = np.random.default_rng(3)
    differences = rng.normal(0.3, 1.0, size=7)
    out = metrics.paired_comparison(differences + 20.0, np.full(7, 20.0))
    flipped = [
        abs(np.mean(np.array(signs) * differences))
        for signs in itertools.product((1, -1), repeat=7)
    ]
    expected = np.mean(np.array(flipped) >= abs(differences.mean()) - 1e-12)
    assert out["p_value"] == pytest.approx(expected)
    assert out["wins"] == int(np.sum(differences > 0))


def test_paired_comparison_interval_shrinks_with_consistent_differences():
    noisy = metrics.paired_comparison([1.0, -1.0, 2.0, -1.5, 0.5], [0.0] * 5)
    steady = metrics.paired_comparison([0.2, 0.19, 0.21, 0.2, 0.2], [0.0] * 5)
    assert steady["high"] - steady["low"] < 0.05 < noisy["high"] - noisy["low"]
    assert steady["p_value"] == pytest.approx(2 / 32)
    assert noisy["p_value"] > 0.5


@pytest.mark.parametrize(
    "scores, baseline, confidence, message",
    [
        ([1.0, 2.0], [1.0], 0.95, "one shape"),
        ([1.0], [1.0], 0.95, ">= 2 images"),
        ([1.0, np.inf], [1.0, 2.0], 0.95, "not finite"),
        ([1.0, 2.0], [1.0, 2.0], 1.0, "confidence"),
    ],
)
def test_paired_comparison_rejects_bad_input(scores, baseline, confidence, message):
    with pytest.raises(ValueError, match=message):
        metrics.paired_comparison(scores, baseline, confidence=confidence)


def _report(path, rows, held_out=None):
    report = {
        "task": "vintage",
        "eval_size": 256,
        "eval_images": 3,
        "sources": {"held_out": held_out or {"scikit-image": 3}},
        "seed": 0,
        "rows": rows,
    }
    path.write_text(json.dumps(report))
    return str(path)


def test_load_rows_names_later_reports_rows_and_checks_the_split(tmp_path):
    file = tmp_path / "s.tflite"
    file.write_bytes(b"x")
    row = {"files": {"fp32": str(file)}, "psnr": 24.0}
    first = _report(tmp_path / "a.json", {"teacher": {}, "distill": row})
    (tmp_path / "b").mkdir()
    second = _report(tmp_path / "b" / "vintage.json", {"distill": row})
    _, rows = per_photo.load_rows([first, f"{second}:seed1", second])
    assert sorted(rows) == ["distill", "distill@b", "distill@seed1"]

    reseeded = json.loads((tmp_path / "a.json").read_text())
    (tmp_path / "e.json").write_text(json.dumps({**reseeded, "seed": 1}))
    assert len(per_photo.load_rows([first, str(tmp_path / "e.json")])[1]) == 2
    with pytest.raises(ValueError, match="seed 1"):
        per_photo.load_rows([first, str(tmp_path / "e.json")], same_seed=True)

    other = _report(tmp_path / "c.json", {"distill": row}, {"scratch": 3})
    with pytest.raises(ValueError, match="holds out"):
        per_photo.load_rows([first, other])
    gone = _report(
        tmp_path / "d.json", {"distill": {"files": {"fp32": str(tmp_path / "no")}}}
    )
    with pytest.raises(FileNotFoundError, match="no"):
        per_photo.load_rows([gone])
    with pytest.raises(FileNotFoundError, match="missing.json"):
        per_photo.load_rows([str(tmp_path / "missing.json")])


def test_compare_and_table_count_photos_above_identity_and_pair_baselines():
    scores = {
        "identity": {"fp32": [20.0, 22.0, 24.0]},
        "distill": {"fp32": [21.0, 21.0, 25.0], "int8": [20.5, 21.0, 24.5]},
        "method": {"fp32": [22.0, 23.0, 26.0], "int8": [22.0, 23.0, 26.0]},
    }
    comparisons = per_photo.compare(scores, ["distill"])
    assert comparisons["distill"] == {"above_identity": 2}
    assert comparisons["method"]["above_identity"] == 3
    assert comparisons["method"]["distill"]["mean"] == pytest.approx(4 / 3)
    assert comparisons["method"]["distill"]["wins"] == 3
    with pytest.raises(ValueError, match="uniform"):
        per_photo.compare(scores, ["uniform"])

    report = {
        "results": ["r.json"],
        "split": "held_out",
        "photos": ["scikit-image/a", "scikit-image/b", "scikit-image/c"],
        "eval_size": 256,
        "baselines": ["distill"],
        "scores": scores,
        "comparisons": comparisons,
    }
    table = per_photo.to_markdown(report)
    assert "| a | b | c | mean |" in table
    assert (
        "| method | 22.00 | 23.00 | 26.00 | **23.67** | 23.67 | 3/3 | +1.33 [" in table
    )


def test_best_row_per_photo_leaves_the_references_out():
    scores = {
        "identity": {"fp32": [30.0, 10.0, 10.0]},
        "colour_map": {"fp32": [10.0, 30.0, 10.0]},
        "distill": {"fp32": [21.0, 21.0, 25.0]},
        "method": {"fp32": [22.0, 20.0, 24.0]},
    }
    np.testing.assert_allclose(per_photo.best_per_photo(scores), [22.0, 21.0, 25.0])
    report = {
        "results": ["r.json"],
        "split": "held_out",
        "photos": ["s/a", "s/b", "s/c"],
        "eval_size": 256,
        "baselines": ["distill"],
        "scores": scores,
        "comparisons": per_photo.compare(scores, ["distill"]),
    }
    assert (
        "| *best row, photo by photo* | 22.00 | 21.00 | 25.00 | *22.67* |"
        in per_photo.to_markdown(report)
    )
