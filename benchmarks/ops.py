"""Where a student's LiteRT time goes: per-op profiles, with and without lowering.

    python -m benchmarks.ops --student=outputs/vintage/student.keras

Exports the vintage teacher, the student as it is ("norms": instance norms
computed per image) and the student with its norms folded into the
convolutions ("folded": `tgc.export.fold_instance_norms`, statistics frozen
on the calibration views, each norm at what it sees once the norms before it
are frozen), each in fp32 and int8, each converted as its
layers are ("plain": `to_litert(..., lowering=False)`) and with the exact
export-time rewrites ("lowered", the default: `tfgancompress.lowering`,
transposed convolutions as sub-pixel convolutions, the few-channel output
convolution on a coarser grid). Times the twelve files interleaved
(`tgc.latency.compare_latency`, `--repeats` runs, the ratios of each
shown), profiles each student file op by op
(`tgc.latency.op_profile`), scores each file's PSNR against the teacher on
the held-out photos, and writes `<name>.md`, `<name>.json` and `<name>.png`
(latency vs MACs of the lowered files, with the line speed-up = MACs ratio)
to `--output_dir` (`--name`, default `ops`).

The int8 files keep the convolutions `tgc.quantization.plan_int8` picks in
float32 (one plan per student, shared by both lowerings); the teacher's
int8 files keep none (its plan would take ~20x a student's forward passes;
they are there for speed). The calibration and held-out views are the
vintage task's (central 256-pixel views of the training photos, and of the
photos held out by source; `tgc.data.vintage_pairs`).
"""

from __future__ import annotations

import os

import keras
import numpy as np
from absl import app, flags, logging

import tfgancompress as tgc
from tfgancompress import latency, reports

FLAGS = flags.FLAGS

MODELS = ("teacher", "norms", "folded")
STUDENTS = MODELS[1:]
KINDS = ("fp32", "int8")
LOWERINGS = ("plain", "lowered")


def file_name(model: str, kind: str, lowering: str) -> str:
    """The report's name of one file, e.g. `"norms_int8_lowered"`."""
    return f"{model}_{kind}_{lowering}"


def _views(split: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    inputs, targets = [], []
    for x, y in tgc.data.vintage_pairs(
        split, size=size, crop_size=size, training=False, batch_size=8
    ):
        inputs.append(np.asarray(x))
        targets.append(np.asarray(y))
    return np.concatenate(inputs), np.concatenate(targets)


def _psnr(path: str, inputs: np.ndarray, targets: np.ndarray) -> float:
    outputs = np.concatenate([tgc.export.run_litert(path, x[None]) for x in inputs])
    return float(np.mean(tgc.metrics.psnr(targets, outputs)))


def export_files(student, teacher, calibration, size: int, directory: str) -> dict:
    """The twelve LiteRT files, their MACs and the students' int8 plans."""
    shape = (1, size, size, 3)
    models = {
        "teacher": teacher,
        "norms": student,
        "folded": tgc.export.fold_instance_norms(student, calibration),
    }
    kept_float = {"teacher": ()}
    for name in STUDENTS:
        plan = tgc.quantization.plan_int8(models[name], calibration)
        kept_float[name] = plan.float_layers
    files, macs = {}, {}
    for lowering in LOWERINGS:
        for model_name, model in models.items():
            for kind in KINDS:
                name = file_name(model_name, kind, lowering)
                print(f"exporting {name}", flush=True)
                files[name] = tgc.export.to_litert(
                    model,
                    os.path.join(directory, f"{name}.tflite"),
                    None if kind == "fp32" else "int8",
                    None if kind == "fp32" else calibration,
                    shape,
                    float_layers=kept_float[model_name],
                    lowering=lowering == "lowered",
                )
                macs[name] = tgc.profile(model, shape[1:]).macs
    return {"files": files, "macs": macs, "float_layers": kept_float}


def _paired_speedups(timing: dict, name: str, baseline: str) -> list[float]:
    """Per interleaved round, the baseline's time over `name`'s."""
    base = timing["results"][baseline]["times_ms"]
    times = timing["results"][name]["times_ms"]
    return [b / t for b, t in zip(base, times, strict=True)]


def speedups(timing: dict) -> dict:
    """Each file's speed-up over the teacher's fp32 file of its lowering.

    Returns:
        `{name: (median ms ratio, 25th, 75th percentile of the per-round
        ratios)}`.
    """
    found = {}
    for name, result in timing["results"].items():
        lowering = name.rsplit("_", 1)[-1]
        baseline = file_name("teacher", "fp32", lowering)
        paired = _paired_speedups(timing, name, baseline)
        found[name] = (
            timing["results"][baseline]["median_ms"] / result["median_ms"],
            float(np.percentile(paired, 25)) if paired else float("nan"),
            float(np.percentile(paired, 75)) if paired else float("nan"),
        )
    return found


def _median_ms(report: dict, name: str) -> float:
    return report["timing"]["results"][name]["median_ms"]


def _summary_lines(report: dict) -> list[str]:
    lines = [
        "| file | G MACs | median ms | speed-up vs teacher fp32 (25-75% of "
        "rounds) | / MACs ratio | PSNR dB |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    found = speedups(report["timing"])
    for name in report["timing"]["results"]:
        lowering = name.rsplit("_", 1)[-1]
        teacher_macs = report["macs"][file_name("teacher", "fp32", lowering)]
        speedup, low, high = found[name]
        ratio = teacher_macs / report["macs"][name]
        psnr = report["psnr"].get(name)
        lines.append(
            f"| {name} | {report['macs'][name] / 1e9:.2f} | "
            f"{_median_ms(report, name):.1f} | {speedup:.2f}x ({low:.2f}-{high:.2f}) "
            f"| {speedup / ratio:.2f} | "
            + ("" if psnr is None else f"{psnr:.2f}")
            + " |"
        )
    lines.append("")
    for lowering in LOWERINGS:
        for model in MODELS:
            fp32, int8 = (
                _median_ms(report, file_name(model, kind, lowering)) for kind in KINDS
            )
            lines.append(
                f"- {model}, {lowering}: int8 {fp32 / int8:.2f}x faster than fp32."
            )
    lines.append("")
    for model in MODELS:
        for kind in KINDS:
            plain, lowered = (
                _median_ms(report, file_name(model, kind, lowering))
                for lowering in LOWERINGS
            )
            lines.append(
                f"- {model} {kind}: lowered {plain / lowered:.2f}x faster than plain."
            )
    return lines


def run_ratios(medians: dict, macs: dict) -> dict[str, float]:
    """The ratios one timing run gives, from its median ms per file.

    `"<student>_fp32_<lowering> / MACs ratio"` (speed-up over the teacher's
    fp32 file of the same lowering, over the MACs ratio), `"<model>
    <lowering>: int8 / fp32"` and `"<model> <kind>: lowered / plain"`
    (speed ratios).
    """
    found = {}
    for model in STUDENTS:
        for lowering in LOWERINGS:
            name = file_name(model, "fp32", lowering)
            teacher = file_name("teacher", "fp32", lowering)
            speedup = medians[teacher] / medians[name]
            found[f"{name} / MACs ratio"] = speedup * macs[name] / macs[teacher]
    for model in MODELS:
        for lowering in LOWERINGS:
            fp32, int8 = (medians[file_name(model, k, lowering)] for k in KINDS)
            found[f"{model} {lowering}: int8 / fp32"] = fp32 / int8
    for model in MODELS:
        for kind in KINDS:
            plain, lowered = (
                medians[file_name(model, kind, lowering)] for lowering in LOWERINGS
            )
            found[f"{model} {kind}: lowered / plain"] = plain / lowered
    return found


def _runs_lines(report: dict) -> list[str]:
    """One column per timing run (the first is the one above)."""
    first = {n: r["median_ms"] for n, r in report["timing"]["results"].items()}
    runs = [first, *report.get("repeats", [])]
    if len(runs) < 2:
        return []
    columns = [run_ratios(medians, report["macs"]) for medians in runs]
    return ratio_runs_table(columns, "The ratios")


def ratio_runs_table(columns: list[dict[str, float]], title: str) -> list[str]:
    """Markdown lines: one row per ratio, one column per timing run."""
    lines = [
        "",
        f"## {title} in each of {len(columns)} interleaved timing runs",
        "",
        "| ratio | " + " | ".join(f"run {i + 1}" for i in range(len(columns))) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for key in columns[0]:
        cells = " | ".join(f"{column[key]:.2f}" for column in columns)
        lines.append(f"| {key} | {cells} |")
    return lines


def to_markdown(report: dict) -> str:
    """The report as Markdown: summary table, then plain/lowered op tables."""
    kept = ", ".join(
        f"{model}: {', '.join(f'`{n}`' for n in names) or 'none'}"
        for model, names in report["float_layers"].items()
    )
    lines = [
        "# Where the student's LiteRT time goes: per-op profiles",
        "",
        f"Student `{report['student']}`, {report['size']}x{report['size']}, "
        f"{report['threads']} threads (XNNPACK), {report['runs']} interleaved "
        "rounds of the twelve files; PSNR against the teacher on the held-out "
        "photos. *norms*: instance norms computed per image; *folded*: norms "
        "folded into the convolutions (`tgc.export.fold_instance_norms`, "
        "statistics frozen on the calibration views). *plain*: "
        "`to_litert(..., lowering=False)`; *lowered*: the default exact "
        "rewrites (`tfgancompress.lowering`: transposed convolutions as "
        "sub-pixel convolutions + DEPTH_TO_SPACE, the 3-channel output "
        "convolution on a 2x coarser grid). Speed-ups are over the teacher's "
        "fp32 file of the same lowering. Kept float32 in int8: "
        f"{kept}.",
        "",
        *_summary_lines(report),
        *_runs_lines(report),
    ]
    for model in STUDENTS:
        for kind in KINDS:
            plain, lowered = (
                [
                    latency.OpStats(**op)
                    for op in report["ops"][file_name(model, kind, lowering)]
                ]
                for lowering in LOWERINGS
            )
            lines += [
                "",
                f"## {model} {kind}: each op timed on its own (ms summed per op type)",
                "",
                latency.op_comparison_markdown(plain, lowered, LOWERINGS),
            ]
    return "\n".join(lines) + "\n"


def run(
    student_path: str,
    output_dir: str,
    size: int,
    runs: int,
    threads: int,
    description: str | None = None,
    repeats: int = 1,
    name: str = "ops",
) -> dict:
    """Exports, times, profiles and scores; writes and returns the report."""
    import tfgancompress.models  # noqa: F401  (registers the zoo layers)

    os.makedirs(output_dir, exist_ok=True)
    work = os.path.join(output_dir, "files")
    os.makedirs(work, exist_ok=True)
    student = keras.saving.load_model(student_path, compile=False)
    teacher = tgc.models.pretrained("vintage")
    calibration, _ = _views("train", size)
    held_in, held_out = _views("eval", size)
    exported = export_files(student, teacher, calibration, size, work)
    files = exported["files"]
    comparison = latency.compare_latency(files, num_threads=threads, runs=runs)
    repeated = [
        latency.compare_latency(files, num_threads=threads, runs=runs)
        for _ in range(repeats - 1)
    ]
    teachers_fp32 = {file_name("teacher", "fp32", lowering) for lowering in LOWERINGS}
    report = {
        "student": description or student_path,
        "size": size,
        "threads": threads,
        "runs": runs,
        "macs": exported["macs"],
        "float_layers": exported["float_layers"],
        "psnr": {
            name: _psnr(path, held_in, held_out)
            for name, path in files.items()
            if name not in teachers_fp32
        },
        "timing": comparison.to_dict(),
        "repeats": [
            {name: result.median_ms for name, result in again.results.items()}
            for again in repeated
        ],
        "ops": {},
    }
    for label, path in files.items():
        if not label.startswith("teacher"):
            ops, _ = latency.op_profile(path, num_threads=threads)
            report["ops"][label] = [vars(op) for op in ops]
    reports.write_report(output_dir, name, report, to_markdown(report))
    points = [
        latency.LatencyPoint(
            name.removesuffix("_lowered"),
            report["macs"][name],
            comparison.results[name].median_ms,
            kind=name.split("_")[1],
        )
        for name in files
        if name.endswith("_lowered")
    ]
    latency.plot_latency_vs_macs(
        points,
        os.path.join(output_dir, f"{name}.png"),
        baseline="teacher_fp32",
        title="LiteRT latency vs MACs, lowered files",
    )
    return report


def _define_flags() -> None:
    flags.DEFINE_string("student", None, "The student .keras file.", required=True)
    flags.DEFINE_string("output_dir", "benchmarks/results", "Where to write.")
    flags.DEFINE_integer("size", 256, "Square input size.", lower_bound=16)
    flags.DEFINE_integer("runs", 10, "Interleaved timing rounds.", lower_bound=1)
    flags.DEFINE_integer("threads", 2, "LiteRT CPU threads.", lower_bound=1)
    flags.DEFINE_integer(
        "repeats", 1, "Interleaved timing runs (ratios of each shown).", lower_bound=1
    )
    flags.DEFINE_string(
        "description", None, "How the student was made (default: its path)."
    )
    flags.DEFINE_string("name", "ops", "Stem of the report files.")


def main(argv):
    logging.set_verbosity(logging.WARNING)
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    run(
        FLAGS.student,
        FLAGS.output_dir,
        FLAGS.size,
        FLAGS.runs,
        FLAGS.threads,
        FLAGS.description,
        FLAGS.repeats,
        FLAGS.name,
    )


if __name__ == "__main__":
    _define_flags()
    app.run(main)
