"""Per-photo quality of benchmark rows, and which differences are real.

    python -m benchmarks.per_photo
    python -m benchmarks.per_photo \
        --results=benchmarks/results/vintage.json,/tmp/s1/vintage.json:seed1

The method benchmark (`python -m training.bench`) scores each row by its
mean PSNR against the teacher over the task's held-out photos (9 on the
vintage task). On so few photos a difference of a few tenths of a dB can
come from one photo, so this reads the rows' LiteRT files (fp32 and int8)
from one or more `vintage.json` reports, scores every held-out photo, and
compares every row with each `--baselines` row photo by photo
(`tgc.metrics.paired_comparison`: the mean difference, its bootstrap 95%
interval, the exact sign-flip p-value, the photos won). It also counts the
photos above the identity's score (issue 11 asks for all of them).

Rows of the second and later reports are named `<row>@<suffix>`
(`path:suffix`, default: the report's folder name); their held-out split
must be the first report's (same task, sources and sizes; other seeds
split the other photos differently, the held-out source is the same).
Writes `<name>.json`, `<name>.md` and `<name>.png` (per-photo PSNR minus
the identity's, every row) to `--output_dir`.
"""

from __future__ import annotations

import json
import os

import numpy as np
from absl import app, flags, logging

import tfgancompress as tgc
from tfgancompress import reports
from training import tasks, train

FLAGS = flags.FLAGS

# A row's mean of the per-photo scores and the report's own PSNR differ by
# more than this (dB) only if its file changed since the report.
TOLERANCE_DB = 0.01
FILES = {"fp32": "psnr", "int8": "psnr_int8"}
SPLITS = ("held_out", "validation")
REFERENCES = ("identity", "colour_map")


def _split(entry: str) -> tuple[str, str]:
    path, _, suffix = entry.partition(":")
    return path, suffix or os.path.basename(os.path.dirname(os.path.abspath(path)))


def _check_same_split(first: dict, other: dict, path: str) -> None:
    for key in ("task", "eval_size", "eval_images"):
        if other.get(key) != first.get(key):
            raise ValueError(
                f"{path} scores {key}={other.get(key)!r}, the first report "
                f"{first.get(key)!r}: not the same held-out photos."
            )
    held_out = (other.get("sources") or {}).get("held_out")
    if held_out != (first.get("sources") or {}).get("held_out"):
        raise ValueError(
            f"{path} holds out {held_out}, the first report "
            f"{first['sources'].get('held_out')}."
        )


def load_rows(
    results: list[str], same_seed: bool = False
) -> tuple[dict, dict[str, dict]]:
    """`(first report, {row name: report row with files})` of `results`.

    Args:
        results: Report paths, `path` or `path:suffix`.
        same_seed: Refuse reports of another seed (whose validation photos
            are other photos).

    Raises:
        FileNotFoundError: If a report or a row's file is missing.
        ValueError: If a later report holds out other photos (or, with
            `same_seed`, was run with another seed).
    """
    first, rows = None, {}
    for index, entry in enumerate(results):
        path, suffix = _split(entry)
        if not os.path.exists(path):
            raise FileNotFoundError(f"No benchmark report {path}.")
        with open(path, encoding="utf-8") as file:
            report = json.load(file)
        if first is None:
            first = report
        else:
            _check_same_split(first, report, path)
            if same_seed and report.get("seed") != first.get("seed"):
                raise ValueError(
                    f"{path} was run with seed {report.get('seed')}, the first "
                    f"report with {first.get('seed')}: its validation photos "
                    "differ."
                )
        for label, row in report["rows"].items():
            if not row.get("files"):
                continue
            for file in row["files"].values():
                if not os.path.exists(file):
                    raise FileNotFoundError(
                        f"{path}: row {label!r} names {file}, which is gone "
                        "(re-run the bench with the same --work_dir)."
                    )
            rows[label if index == 0 else f"{label}@{suffix}"] = row
    return first, rows


def score_rows(
    task, rows: dict[str, dict], split: str = "held_out"
) -> dict[str, dict[str, list[float]]]:
    """`{row: {"fp32": per-photo PSNR, "int8": ...}}` on the task's `split`
    (`"held_out"` or `"validation"`), plus `identity`. On the held-out
    photos, warns when a mean disagrees with the row's report."""
    inputs, targets = getattr(task, split)
    scores = {"identity": {"fp32": tgc.metrics.psnr(inputs, targets).numpy().tolist()}}
    for label, row in rows.items():
        print(f"scoring {label}", flush=True)
        scores[label] = {}
        for kind, path in row["files"].items():
            outputs = tgc.ship.litert_outputs(path, inputs)
            values = tgc.metrics.psnr(outputs, targets).numpy().tolist()
            scores[label][kind] = values
            reported = row.get(FILES.get(kind, "")) if split == "held_out" else None
            if reported is not None and abs(np.mean(values) - reported) > TOLERANCE_DB:
                logging.warning(
                    "%s %s: mean %.3f dB here, %.3f dB in its report.",
                    label,
                    kind,
                    np.mean(values),
                    reported,
                )
    return scores


def compare(scores: dict, baselines: list[str]) -> dict:
    """Each row's fp32 scores against each baseline's and the identity's."""
    missing = [name for name in baselines if name not in scores]
    if missing:
        raise ValueError(f"Baselines {missing} are not rows of the reports.")
    identity = np.asarray(scores["identity"]["fp32"])
    comparisons = {}
    for label, files in scores.items():
        if label == "identity":
            continue
        values = np.asarray(files["fp32"])
        comparisons[label] = {
            "above_identity": int(np.sum(values > identity)),
            **{
                name: tgc.metrics.paired_comparison(values, scores[name]["fp32"])
                for name in baselines
                if name != label
            },
        }
    return comparisons


def to_markdown(report: dict) -> str:
    names = [name.split("/")[-1] for name in report["photos"]]
    lines = [
        "# Per-photo PSNR of the benchmark rows against the teacher",
        "",
        f"Reports: {', '.join(report['results'])}. {len(names)} photos "
        f"({report['split']}), "
        f"{report['eval_size']}x{report['eval_size']}; PSNR dB of each row's "
        "fp32 file against the teacher. *vs X*: the mean difference to row X "
        "photo by photo, its bootstrap 95% interval and the exact sign-flip "
        "p-value (`tgc.metrics.paired_comparison`); *> id*: photos above the "
        "identity's score.",
        "",
        "| row | "
        + " | ".join(names)
        + " | mean | int8 mean | > id | "
        + " | ".join(f"vs {name}" for name in report["baselines"])
        + " |",
        "|---|" + "---:|" * (len(names) + 3) + "---|" * len(report["baselines"]),
    ]
    for label, files in report["scores"].items():
        values = files["fp32"]
        int8 = files.get("int8")
        comparison = report["comparisons"].get(label, {})
        cells = [f"{value:.2f}" for value in values]
        cells.append(f"**{np.mean(values):.2f}**")
        cells.append(f"{np.mean(int8):.2f}" if int8 else "")
        above = comparison.get("above_identity")
        cells.append("" if above is None else f"{above}/{len(values)}")
        for name in report["baselines"]:
            result = comparison.get(name)
            cells.append(
                ""
                if result is None
                else f"{result['mean']:+.2f} [{result['low']:+.2f}, "
                f"{result['high']:+.2f}] p={result['p_value']:.2f}"
            )
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    best = best_per_photo(report["scores"])
    lines.append(
        "| *best row, photo by photo* | "
        + " | ".join(f"{value:.2f}" for value in best)
        + f" | *{np.mean(best):.2f}* |"
        + " |" * (2 + len(report["baselines"]))
    )
    lines += [
        "",
        "*best row, photo by photo*: each photo's highest score over the "
        "trained rows above. Not a model: a ceiling on what choosing among "
        "these students could give.",
    ]
    return "\n".join(lines) + "\n"


def best_per_photo(scores: dict) -> np.ndarray:
    """Each photo's highest fp32 score over the rows (the references left out).

    Args:
        scores: `{row: {"fp32": [per-photo PSNR], ...}}` as `score_rows` makes.

    Returns:
        The per-photo maxima.
    """
    trained = [
        files["fp32"] for label, files in scores.items() if label not in REFERENCES
    ]
    return np.max(np.asarray(trained), axis=0)


def _plot(report: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    identity = np.asarray(report["scores"]["identity"]["fp32"])
    labels = [label for label in report["scores"] if label != "identity"]
    gains = np.array(
        [np.asarray(report["scores"][x]["fp32"]) - identity for x in labels]
    )
    names = [name.split("/")[-1] for name in report["photos"]]
    figure, axis = pyplot.subplots(
        figsize=(1.0 * len(names) + 3, 0.3 * len(labels) + 1.5)
    )
    limit = float(np.max(np.abs(gains)))
    image = axis.imshow(gains, cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto")
    for (i, j), value in np.ndenumerate(gains):
        axis.text(j, i, f"{value:+.1f}", ha="center", va="center", fontsize=6)
    axis.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=7)
    axis.set_yticks(range(len(labels)), labels, fontsize=7)
    axis.set_title(
        f"PSNR vs teacher minus the identity's, per photo ({report['split']}, dB)"
    )
    figure.colorbar(image, ax=axis, shrink=0.6)
    reports.save_figure(figure, path)


def run(
    results: list[str],
    baselines: list[str],
    output_dir: str,
    name: str,
    split: str = "held_out",
    **settings,
) -> dict:
    """Scores and compares every row of `results` on the task's `split`;
    writes the report (and prints its table) and returns it."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
    first, rows = load_rows(results, same_seed=split == "validation")
    task = tasks.from_settings(train.settings({**settings, "seed": first["seed"]}))
    if task.key != first["key"]:
        raise ValueError(
            f"The task's data key is {task.key}, {results[0]} was scored on "
            f"{first['key']}: pass the report's task flags."
        )
    if split == "validation" and task.validation is None:
        raise ValueError("The task has no validation photos (--validation_photos).")
    scores = score_rows(task, rows, split)
    report = {
        "results": results,
        "split": split,
        "photos": task.photo_names[split],
        "eval_size": int(task.held_out[0].shape[1]),
        "baselines": baselines,
        "scores": scores,
        "comparisons": compare(scores, baselines),
    }
    os.makedirs(output_dir, exist_ok=True)
    reports.write_report(output_dir, name, report, to_markdown(report))
    _plot(report, os.path.join(output_dir, f"{name}.png"))
    return report


def _define_flags() -> None:
    flags.DEFINE_list(
        "results",
        ["benchmarks/results/vintage.json"],
        "Benchmark reports (`path` or `path:suffix`); the first names the task.",
    )
    flags.DEFINE_list("baselines", ["distill", "uniform"], "Rows compared against.")
    flags.DEFINE_enum(
        "split",
        "held_out",
        list(SPLITS),
        "Photos scored: the held-out source, or the validation photos (of the "
        "training sources, never trained on).",
    )
    flags.DEFINE_string("output_dir", "outputs/per_photo", "Where to write.")
    flags.DEFINE_string("name", "per_photo", "Stem of the report files.")
    tasks.define_flags()


def main(argv):
    logging.set_verbosity(logging.WARNING)
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    run(
        FLAGS.results,
        FLAGS.baselines,
        FLAGS.output_dir,
        FLAGS.name,
        FLAGS.split,
        **tasks.flag_settings(),
    )


if __name__ == "__main__":
    _define_flags()
    app.run(main)
