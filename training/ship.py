"""Evaluate and ship a student on its task: LiteRT files, scores, speed, report.

    report = ship.ship(student, task, "outputs/run")
    ship.write_report("outputs/run", {**report, **facts}, title="...")

Writes to the output folder `student.tflite` (fp32) and
`student_int8.tflite` (int8, calibrated on the task's reference views) --
with `fold_norms`, both of the student whose instance norms are frozen on
the reference views and folded into its convolutions
(`tgc.export.fold_instance_norms`), the model they are scored as, the
Keras student as trained scored beside them as `student_unfolded` --
`teacher.tflite` when timing, `samples.png` (input | teacher | student |
|teacher - student| x4 on the held-out photos) and `report.json` /
`report.md`: MACs, parameters, measured LiteRT latency and speed-up (teacher,
student and its int8 file timed interleaved), PSNR, SSIM, L1, FD and KID
against the teacher on the held-out photos for the student, its int8 file
and the task's references (identity, colour map). The task-free pieces are
`tgc.ship` and `tgc.reports`; `training.train` and `training.bench` call
this.
"""

from __future__ import annotations

import os

import keras
import numpy as np

import tfgancompress as tgc
from keras_layers import InstanceNormalization
from tfgancompress import reports
from training.tasks import TaskData

ROWS = ("teacher", "student", "student_int8", "identity", "colour_map")
# How the files' instance norms take their statistics (`tgc.export.to_litert`'s
# default lowering: `E[x]` and `E[x**2]` in one pass; files before it: two).
NORM_STATISTICS = "one_pass"
# The whole-output target of the int8 files' plan (`tgc.export.to_litert`'s
# default; files before it: the per-layer plan only, recorded as missing).
INT8_TARGET_PSNR = tgc.quantization.DEFAULT_TARGET_PSNR
# How the plan gets there (`plan_int8`'s defaults, `to_litert`'s): the
# residual stream's adds one candidate, the whole output simulated on 32
# views (files before it: single layers on 8 views, recorded as missing).
INT8_PLAN = {
    "residual_stream": True,
    "target_samples": tgc.quantization.DEFAULT_TARGET_SAMPLES,
}
UNFOLDED = "student_unfolded"


def instance_norms(model: keras.Model) -> int:
    """How many instance norms `model` computes (nested models included)."""
    return sum(
        isinstance(layer, InstanceNormalization) for layer in model._flatten_layers()
    )


def _cell(row: dict, key: str, scale: float, fmt: str) -> str:
    value = row.get(key)
    return "" if value is None else format(value / scale, fmt)


def rows_markdown(rows: dict[str, dict]) -> list[str]:
    """The table of `ship`'s rows (MACs, params, latency, quality)."""
    lines = [
        "| model | G MACs | M params | LiteRT ms | speed-up | PSNR dB "
        "| detail PSNR dB | SSIM | FD | KID |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in rows.items():
        cells = [
            _cell(row, "macs", 1e9, ".2f"),
            _cell(row, "params", 1e6, ".2f"),
            _cell(row, "latency_ms", 1, ".1f"),
            _cell(row, "speedup", 1, ".2f"),
            _cell(row, "psnr", 1, ".2f"),
            _cell(row, "detail_psnr", 1, ".2f"),
            _cell(row, "ssim", 1, ".3f"),
            _cell(row, "fd", 1, ".2f"),
            _cell(row, "kid", 1, ".4f"),
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def task_markdown(task: dict) -> str:
    """One line on the photos a run used, split by split."""
    photos = task["photos"]
    views = task["views"]
    return (
        f"Task `{task['task']}`: {task['task_description']}. Photos: "
        f"{photos['train']} training ({task['training_views']} views of "
        f"{views['crop_size']} px), {photos['validation']} validation, "
        f"{photos['held_out']} held out, {photos['reference']} reference "
        f"(colour map, int8 calibration; central {views['eval_size']} px)."
    )


def _validation_psnr(model: keras.Model, task: TaskData) -> float:
    inputs, targets = task.validation
    outputs = model.predict(inputs, batch_size=2, verbose=0)
    return float(np.mean(tgc.metrics.psnr(targets, outputs)))


def shipped_model(student: keras.Model, task: TaskData, fold_norms: bool):
    """The model the files are made of: `student`, or it with norms folded.

    A quantization-aware student (`tgc.quantization.is_quantized`) is
    shipped as it is: its int8 file runs on the ranges it was trained with.

    Returns:
        `(model, export)`: `export` records the settings (`fold_norms`,
        `norm_statistics`, `int8_target_psnr`, `int8_plan`),
        `folded_norms` (how many norms were folded), `instance_norms` (how
        many the files still compute per image: a norm not fed by a plain
        convolution stays) and, when norms were folded and the task has
        validation photos, `validation_psnr`: `{"unfolded": dB, "folded":
        dB}` against the teacher (photos of the training distribution,
        where frozen statistics can cost more than on the held-out ones).
    """
    model = student
    if fold_norms and not tgc.quantization.is_quantized(student):
        model = tgc.export.fold_instance_norms(student, task.reference[0])
    left = instance_norms(model)
    export = {
        "fold_norms": fold_norms,
        "norm_statistics": NORM_STATISTICS,
        "int8_target_psnr": INT8_TARGET_PSNR,
        "int8_plan": INT8_PLAN,
        "folded_norms": instance_norms(student) - left,
        "instance_norms": left,
    }
    if model is not student and task.validation is not None:
        export["validation_psnr"] = {
            "unfolded": _validation_psnr(student, task),
            "folded": _validation_psnr(model, task),
        }
    return model, export


def ship(
    student: keras.Model,
    task: TaskData,
    output_dir: str,
    *,
    runs: int = 10,
    threads: int = 2,
    timing: bool = True,
    fold_norms: bool = False,
) -> dict:
    """Exports, scores and times `student` on `task`; draws the sample grid.

    Args:
        student: The compressed generator.
        task: Its task (teacher, held-out and reference views).
        output_dir: Existing folder for the files.
        runs: Interleaved LiteRT timing rounds.
        threads: LiteRT CPU threads.
        timing: Time teacher, student and its int8 file (off: no
            `teacher.tflite`, no latency).
        fold_norms: Ship `student` with its instance norms folded
            (`shipped_model`); the rows `student` and `student_int8` are
            then the folded model and its files, `student_unfolded` the
            scores of `student` itself.

    Returns:
        The report (`write_report` writes it): the task's summary
        (`TaskData.summary`), `rows` (see the module docstring),
        `macs_ratio`, `speedup`, `speedup_int8`, `runs`, `threads`,
        `export` (`shipped_model`), `ship_seconds` (`export`, `score`,
        `time`).
    """
    inputs, targets = task.held_out
    shipped, export = shipped_model(student, task, fold_norms)
    references = task.references()
    if shipped is not student:
        references[UNFOLDED] = student.predict(inputs, batch_size=2, verbose=0)
    shipment = tgc.ship.ship(
        {"teacher": task.teacher, "student": shipped},
        output_dir,
        inputs=inputs,
        targets=targets,
        int8=["student"],
        calibration=task.reference[0],
        references=references,
        input_shape=inputs.shape[1:],
        runs=runs,
        threads=threads,
        timing=timing,
    )
    rows = {n: shipment.rows[n] for n in (*ROWS, UNFOLDED) if n in shipment.rows}
    reports.save_comparison_grid(
        os.path.join(output_dir, "samples.png"),
        inputs,
        targets,
        shipment.outputs["student"],
    )
    return {
        **task.summary(),
        "eval_size": inputs.shape[1],
        "eval_images": len(inputs),
        "runs": runs if timing else 0,
        "threads": threads,
        "rows": rows,
        "macs_ratio": rows["teacher"]["macs"] / rows["student"]["macs"],
        "speedup": rows["student"].get("speedup"),
        "speedup_int8": rows["student_int8"].get("speedup"),
        "export": export,
        "ship_seconds": shipment.seconds,
    }


def export_markdown(export: dict | None) -> str:
    """One sentence on what the student's files are (`ship`'s `export`)."""
    if not export or not export.get("folded_norms"):
        return "`student`: the files compute the instance norms per image."
    return (
        f"`student`: the files and scores are of the student with "
        f"{export['folded_norms']} instance norms frozen on the reference views "
        f"and folded into the convolutions ({export['instance_norms']} left per "
        f"image); `{UNFOLDED}`: the trained student itself."
    )


def write_report(
    output_dir: str, report: dict, title: str, notes: list[str] | None = None
) -> None:
    """Writes `ship`'s report (with the caller's facts) as JSON and Markdown.

    Args:
        output_dir: Where `report.json` and `report.md` go.
        report: `ship`'s report, maybe with more fields.
        title: The Markdown heading.
        notes: Markdown lines between the heading and the table.
    """
    size = report["eval_size"]
    lines = [f"# {title}", "", *(notes or []), task_markdown(report), ""]
    lines += rows_markdown(report["rows"])
    lines += ["", export_markdown(report.get("export"))]
    if report["runs"]:
        lines.append(
            f"MACs ratio {report['macs_ratio']:.1f}x; measured LiteRT speed-up "
            f"{report['speedup']:.2f}x fp32, {report['speedup_int8']:.2f}x int8 "
            f"({report['threads']} threads, {size}x{size}, {report['runs']} "
            "interleaved rounds)."
        )
    lines += [
        "",
        f"Quality against the teacher on the {report['eval_images']} held-out "
        "photos; `samples.png`: input | teacher | student | "
        "|teacher - student| x4.",
        "",
    ]
    reports.write_report(output_dir, "report", report, "\n".join(lines))
