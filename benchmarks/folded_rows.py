"""Trained bench rows shipped with folded norms, against their files with norms.

    python -m benchmarks.folded_rows \
        --rows=outputs/bench/rows/distill-26af9ffcfce2,outputs/bench/rows/uniform-...

For each finished `training.bench` row (a folder holding `row.json`,
`student.keras`, and the `student.tflite` / `student_int8.tflite` files it
was shipped with, instance norms computed per image), ships its student
again through `training.ship.ship(..., fold_norms=True)` (what the bench
does by default) into `--output_dir/files/<row>`, and then:

- quality against the teacher on the task's held-out photos: the row's
  files and the folded files, fp32 and int8, and on the validation photos
  the trained and the folded student;
- speed: the teacher's fp32 file and every row's four files timed
  interleaved (`tgc.ship.time_files`), `--repeats` runs; per run each
  file's speed-up over the teacher against the MACs ratio, and each int8
  file's speed over its fp32 file;
- per-op profiles of the first row's four files (`tgc.latency.op_profile`,
  each op timed on its own), norms against folded.

Writes `<name>.json` and `<name>.md` to `--output_dir`. The rows must be of
the task the flags describe (the vintage task by default).
"""

from __future__ import annotations

import json
import os

import keras
from absl import app, flags, logging

import tfgancompress as tgc
from benchmarks import ops
from tfgancompress import latency, reports
from training import ship, tasks, train

FLAGS = flags.FLAGS

KINDS = ("norms", "norms_int8", "folded", "folded_int8")


def _label(directory: str) -> str:
    """A row's folder name, e.g. `distill-26af9ffcfce2`."""
    return os.path.basename(os.path.normpath(directory))


def ship_folded(directory: str, task: tasks.TaskData, output_dir: str) -> dict:
    """One row's files with norms and folded, and their quality."""
    with open(os.path.join(directory, "row.json")) as file:
        row = json.load(file)
    if row.get("export", {}).get("folded_norms"):
        raise ValueError(
            f"{directory}: its files are folded already; give a row shipped "
            "with norms computed per image."
        )
    student = keras.saving.load_model(
        os.path.join(directory, "student.keras"), compile=False
    )
    target = os.path.join(output_dir, "files", os.path.basename(directory))
    os.makedirs(target, exist_ok=True)
    report = ship.ship(student, task, target, timing=False, fold_norms=True)
    keras.backend.clear_session()
    rows = report["rows"]
    return {
        "files": {
            "norms": os.path.join(directory, "student.tflite"),
            "norms_int8": os.path.join(directory, "student_int8.tflite"),
            "folded": rows["student"]["file"],
            "folded_int8": rows["student_int8"]["file"],
        },
        "psnr": {
            "norms": row["psnr"],
            "norms_int8": row["psnr_int8"],
            "folded": rows["student"]["psnr"],
            "folded_int8": rows["student_int8"]["psnr"],
            "unfolded": rows[ship.UNFOLDED]["psnr"],
        },
        "fd": {"norms": row["fd"], "folded": rows["student"]["fd"]},
        "validation_psnr": report["export"]["validation_psnr"],
        "macs": rows["student"]["macs"],
        "export": report["export"],
    }


def timing_ratios(medians: dict, rows: dict, teacher_macs: int) -> dict:
    """Per row: each fp32 file's speed-up over the MACs ratio, and int8/fp32."""
    found = {}
    for label, row in rows.items():
        ratio = teacher_macs / row["macs"]
        for kind in ("norms", "folded"):
            fp32, int8 = medians[f"{label} {kind}"], medians[f"{label} {kind}_int8"]
            found[f"{label} {kind}: fp32 speed-up / MACs ratio"] = (
                medians["teacher"] / fp32 / ratio
            )
            found[f"{label} {kind}: int8 / fp32 speed"] = fp32 / int8
    return found


def to_markdown(report: dict) -> str:
    """The report as Markdown: quality, speed ratios per run, op tables."""
    lines = [
        "# Trained bench rows: files with norms vs folded norms",
        "",
        f"Rows: {', '.join(f'`{d}`' for d in report['rows_dirs'])}. *norms*: "
        "the row's files as the bench shipped them (instance norms computed per "
        "image); *folded*: `training.ship.ship(..., fold_norms=True)` (norms "
        "frozen on the reference views, each at the statistics it sees once the "
        "norms before it are frozen, folded into the convolutions). PSNR dB "
        f"against the teacher on {report['eval_images']} held-out photos "
        f"({report['eval_size']} px) and on the validation photos; files timed "
        f"interleaved with the teacher's fp32 file, {report['threads']} threads, "
        f"{report['runs']} rounds per run.",
        "",
        "| row | norms | norms int8 | folded | folded int8 | int8 - fp32 (folded) "
        "| FD norms / folded | val: trained / folded |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, row in report["rows"].items():
        psnr, fd, val = row["psnr"], row["fd"], row["validation_psnr"]
        lines.append(
            f"| {label} | {psnr['norms']:.2f} | {psnr['norms_int8']:.2f} | "
            f"{psnr['folded']:.2f} | {psnr['folded_int8']:.2f} | "
            f"{psnr['folded_int8'] - psnr['folded']:+.2f} | "
            f"{fd['norms']:.1f} / {fd['folded']:.1f} | "
            f"{val['unfolded']:.2f} / {val['folded']:.2f} |"
        )
    lines += ops.ratio_runs_table(report["ratios"], "Speed ratios")
    label = report["profiled"]
    for kind in ("fp32", "int8"):
        suffix = "" if kind == "fp32" else "_int8"
        before, after = (
            [latency.OpStats(**op) for op in report["ops"][f"{name}{suffix}"]]
            for name in ("norms", "folded")
        )
        lines += [
            "",
            f"## {label} {kind}: each op timed on its own (ms summed per op type)",
            "",
            latency.op_comparison_markdown(before, after, ("norms", "folded")),
        ]
    return "\n".join(lines) + "\n"


def run(
    rows_dirs: list[str],
    output_dir: str,
    name: str,
    runs: int,
    repeats: int,
    threads: int = 2,
    **settings,
) -> dict:
    """Ships, scores, times and profiles; writes and returns the report."""
    os.makedirs(output_dir, exist_ok=True)
    task = tasks.from_settings(train.settings(settings))
    rows = {}
    for directory in rows_dirs:
        print(f"{directory}: shipping with folded norms", flush=True)
        rows[_label(directory)] = ship_folded(directory, task, output_dir)
    size = task.held_out[0].shape[1]
    teacher = os.path.join(output_dir, "files", f"teacher-{size}.tflite")
    if not os.path.exists(teacher):
        tgc.export.to_litert(task.teacher, teacher, input_shape=(1, size, size, 3))
    files = {"teacher": teacher}
    for label, row in rows.items():
        files.update({f"{label} {kind}": row["files"][kind] for kind in KINDS})
    teacher_macs = tgc.profile(task.teacher, (size, size, 3)).macs
    timings, ratios = [], []
    for index in range(repeats):
        print(f"timing run {index + 1} of {repeats}", flush=True)
        timing = tgc.ship.time_files(files, runs=runs, threads=threads)
        medians = {n: r.median_ms for n, r in timing.results.items()}
        timings.append(medians)
        ratios.append(timing_ratios(medians, rows, teacher_macs))
    profiled = next(iter(rows))
    ops = {}
    for kind in KINDS:
        stats, _ = latency.op_profile(rows[profiled]["files"][kind], threads)
        ops[kind] = [vars(op) for op in stats]
    report = {
        "rows_dirs": rows_dirs,
        "eval_images": len(task.held_out[0]),
        "eval_size": size,
        "threads": threads,
        "runs": runs,
        "teacher_macs": teacher_macs,
        "rows": rows,
        "median_ms": timings,
        "ratios": ratios,
        "profiled": profiled,
        "ops": ops,
    }
    reports.write_report(output_dir, name, report, to_markdown(report))
    return report


def _define_flags() -> None:
    flags.DEFINE_list("rows", None, "Finished bench row folders.", required=True)
    flags.DEFINE_string("output_dir", "outputs/folded_rows", "Where to write.")
    flags.DEFINE_string("name", "ops_trained", "Stem of the report files.")
    flags.DEFINE_integer("runs", 10, "Interleaved timing rounds.", lower_bound=1)
    flags.DEFINE_integer("repeats", 2, "Interleaved timing runs.", lower_bound=1)
    tasks.define_flags()


def main(argv):
    logging.set_verbosity(logging.WARNING)
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    settings = tasks.flag_settings()
    run(FLAGS.rows, FLAGS.output_dir, FLAGS.name, FLAGS.runs, FLAGS.repeats, **settings)


if __name__ == "__main__":
    _define_flags()
    app.run(main)
