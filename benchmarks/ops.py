"""Where a student's LiteRT time goes: per-op profiles, before/after norm folding.

    python -m benchmarks.ops --student=outputs/vintage/student.keras

Exports the student as it is ("before": instance norms computed per image)
and with its norms folded into the convolutions ("after":
`tgc.export.fold_instance_norms`, statistics frozen on the calibration
views), each in fp32 and int8, plus the vintage teacher in fp32. Times the
five files interleaved (`tgc.latency.compare_latency`), profiles each
student file op by op (`tgc.latency.op_profile`), scores each file's PSNR
against the teacher on the held-out photos, and writes `ops.md`,
`ops.json` and `ops.png` (latency vs MACs, with the line speed-up = MACs
ratio) to `--output_dir`.

The calibration and held-out views are the vintage task's (central
256-pixel views of the training photos, and of the photos held out by
source; `tgc.data.vintage_pairs`).
"""

from __future__ import annotations

import json
import os

import keras
import numpy as np
from absl import app, flags, logging

import tfgancompress as tgc
from tfgancompress import latency

FLAGS = flags.FLAGS


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
    """The five LiteRT files: teacher; student before/after folding, fp32/int8."""
    shape = (1, size, size, 3)
    folded = tgc.export.fold_instance_norms(student, calibration)
    path = os.path.join
    files = {
        "teacher_fp32": tgc.export.to_litert(
            teacher, path(directory, "t.tflite"), input_shape=shape
        )
    }
    for tag, model in (("before", student), ("after", folded)):
        files[f"{tag}_fp32"] = tgc.export.to_litert(
            model, path(directory, f"{tag}_fp32.tflite"), input_shape=shape
        )
        files[f"{tag}_int8"] = tgc.export.to_litert(
            model,
            path(directory, f"{tag}_int8.tflite"),
            "int8",
            calibration,
            shape,
        )
    macs = {"teacher_fp32": tgc.profile(teacher, shape[1:]).macs}
    for tag, model in (("before", student), ("after", folded)):
        for kind in ("fp32", "int8"):
            macs[f"{tag}_{kind}"] = tgc.profile(model, shape[1:]).macs
    return {"files": files, "macs": macs}


def to_markdown(report: dict) -> str:
    """The report as Markdown: summary table, then before/after op tables."""
    timing = report["timing"]
    lines = [
        "# Where the student's LiteRT time goes: per-op profiles",
        "",
        f"Student `{report['student']}`, {report['size']}x{report['size']}, "
        f"{report['threads']} threads (XNNPACK), {report['runs']} interleaved "
        "rounds; PSNR against the teacher on the held-out photos. *before*: "
        "instance norms computed per image; *after*: norms folded into the "
        "convolutions (`tgc.export.fold_instance_norms`, statistics frozen "
        "on the calibration views).",
        "",
        "| file | G MACs | median ms | speed-up vs teacher | / MACs ratio | PSNR dB |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    teacher_macs = report["macs"]["teacher_fp32"]
    for name, result in timing["results"].items():
        speedup = timing["speedup"][name]
        ratio = teacher_macs / report["macs"][name]
        psnr = report["psnr"].get(name)
        lines.append(
            f"| {name} | {report['macs'][name] / 1e9:.2f} | "
            f"{result['median_ms']:.1f} | {speedup:.2f}x | {speedup / ratio:.2f} | "
            + ("" if psnr is None else f"{psnr:.2f}")
            + " |"
        )
    for tag in ("before", "after"):
        fp32, int8 = (timing["results"][f"{tag}_{k}"] for k in ("fp32", "int8"))
        lines.append("")
        lines.append(
            f"- {tag}: int8 {fp32['median_ms'] / int8['median_ms']:.2f}x faster "
            "than fp32."
        )
    for kind in ("fp32", "int8"):
        before = [latency.OpStats(**op) for op in report["ops"][f"before_{kind}"]]
        after = [latency.OpStats(**op) for op in report["ops"][f"after_{kind}"]]
        lines += [
            "",
            f"## {kind}: each op timed on its own (ms summed per op type)",
            "",
            latency.op_comparison_markdown(before, after),
        ]
    return "\n".join(lines) + "\n"


def run(student_path: str, output_dir: str, size: int, runs: int, threads: int):
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
    report = {
        "student": student_path,
        "size": size,
        "threads": threads,
        "runs": runs,
        "macs": exported["macs"],
        "psnr": {
            name: _psnr(path, held_in, held_out)
            for name, path in files.items()
            if name != "teacher_fp32"
        },
        "timing": comparison.to_dict(),
        "ops": {},
    }
    for name, path in files.items():
        if name != "teacher_fp32":
            ops, _ = latency.op_profile(path, num_threads=threads)
            report["ops"][name] = [vars(op) for op in ops]
    with open(os.path.join(output_dir, "ops.json"), "w", encoding="utf-8") as file:
        json.dump(report, file, indent=1)
    with open(os.path.join(output_dir, "ops.md"), "w", encoding="utf-8") as file:
        file.write(to_markdown(report))
    points = [
        latency.LatencyPoint(
            name,
            report["macs"][name],
            comparison.results[name].median_ms,
            kind=name.rsplit("_", 1)[-1],
        )
        for name in files
    ]
    latency.plot_latency_vs_macs(
        points, os.path.join(output_dir, "ops.png"), baseline="teacher_fp32"
    )
    return report


def _define_flags() -> None:
    flags.DEFINE_string("student", None, "The student .keras file.", required=True)
    flags.DEFINE_string("output_dir", "benchmarks/results", "Where to write.")
    flags.DEFINE_integer("size", 256, "Square input size.", lower_bound=16)
    flags.DEFINE_integer("runs", 10, "Interleaved timing rounds.", lower_bound=1)
    flags.DEFINE_integer("threads", 2, "LiteRT CPU threads.", lower_bound=1)


def main(argv):
    logging.set_verbosity(logging.WARNING)
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    report = run(FLAGS.student, FLAGS.output_dir, FLAGS.size, FLAGS.runs, FLAGS.threads)
    print(to_markdown(report))


if __name__ == "__main__":
    _define_flags()
    app.run(main)
