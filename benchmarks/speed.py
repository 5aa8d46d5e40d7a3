"""Real speed-up: teacher vs a uniformly thinned student in LiteRT, fp32 and int8.

    python -m benchmarks.speed [--runs=8 --repeats=2 --output_dir=benchmarks/results]

Builds the pretrained vintage CycleGAN teacher and its uniform-width student
(every layer cut to `--keep_ratio` of its filters by filter L1 norm, then
slimmed: ~1/16 of the MACs at 1/4 width), exports the teacher (fp32) and the
student (fp32 and full int8, calibrated on photos that are not evaluated),
and times the three files interleaved (`tgc.ship`: `--repeats` independent
interleaved runs, each `--runs` rounds). Quality: PSNR of the student and
of its int8 file against the Keras teacher, and of the int8 file against
the student, on held-out photos (scikit-image astronaut, coffee, chelsea).
The student is not fine-tuned, so its PSNR against the teacher is low; the
int8-vs-fp32 difference is the number that matters here.

Writes `speed.json`, `speed.md` and `speed.png` (per-op time of each model,
stacked by op type) to `--output_dir`.
"""

from __future__ import annotations

import os
import statistics
import tempfile

import keras
import numpy as np
from absl import app, flags, logging

import keras_layers
import tfgancompress as tgc
from tfgancompress import latency, reports, schedules

FLAGS = flags.FLAGS
EVAL_PHOTOS = ("astronaut", "coffee", "chelsea")
CALIBRATION_PHOTOS = ("rocket", "retina", "immunohistochemistry", "hubble_deep_field")


def photos(names, size: int) -> np.ndarray:
    """scikit-image sample photos, center-cropped and resized, in [-1, 1]."""
    import skimage.data
    import skimage.transform

    images = []
    for name in names:
        image = getattr(skimage.data, name)()[..., :3].astype(np.float32) / 255.0
        side = min(image.shape[:2])
        top, left = (image.shape[0] - side) // 2, (image.shape[1] - side) // 2
        image = image[top : top + side, left : left + side]
        images.append(skimage.transform.resize(image, (size, size), anti_aliasing=True))
    return np.stack(images).astype(np.float32) * 2.0 - 1.0


def uniform_student(keep_ratio: float) -> keras.Model:
    """The vintage teacher with every layer L1-pruned to `keep_ratio`, slimmed."""
    gated = tgc.models.pretrained("vintage", gated="binary")
    importance = tgc.pruning.l1_importance(gated)
    for layer in gated.layers:
        if isinstance(layer, keras_layers.ChannelGate):
            schedules.apply_sparsity(layer, 1.0 - keep_ratio, importance[layer.name])
    return tgc.slim(gated)


def _summary(report: dict) -> dict:
    speedups = [r["speedup"] for r in report["repeats"]]

    def spread(name: str) -> dict:
        values = [s[name] for s in speedups]
        return {
            "median": statistics.median(values),
            "min": min(values),
            "max": max(values),
        }

    student = spread("student_fp32")
    int8 = [s["student_int8"] / s["student_fp32"] for s in speedups]
    return {
        "macs_ratio": report["macs"]["teacher_fp32"] / report["macs"]["student_fp32"],
        "student_fp32_speedup": student,
        "student_int8_speedup": spread("student_int8"),
        "speedup_over_macs_ratio": student["median"]
        / (report["macs"]["teacher_fp32"] / report["macs"]["student_fp32"]),
        "int8_over_fp32_student": {
            "median": statistics.median(int8),
            "min": min(int8),
            "max": max(int8),
        },
    }


def to_markdown(report: dict) -> str:
    """The speed table, quality and the per-op profiles as Markdown."""
    summary = report["summary"]
    last = report["repeats"][-1]
    lines = [
        "# Real speed-up: vintage CycleGAN teacher vs uniform student (LiteRT)",
        "",
        f"{report['size']}x{report['size']}, {report['threads']} threads, XNNPACK; "
        f"{len(report['repeats'])} interleaved runs of {report['runs']} rounds "
        "(speed-up: median over runs, [min-max]).",
        "",
        "| model | MACs | median ms (last run) | speed-up vs teacher | "
        "PSNR vs teacher (dB) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in ("teacher_fp32", "student_fp32", "student_int8"):
        values = [r["speedup"][name] for r in report["repeats"]]
        lines.append(
            f"| {name} | {report['macs'][name] / 1e9:.2f} G | "
            f"{last['results'][name]['median_ms']:.1f} | "
            f"{statistics.median(values):.2f}x [{min(values):.2f}-{max(values):.2f}] | "
            f"{report['psnr'].get(name, float('inf')):.2f} |"
        )
    int8 = summary["int8_over_fp32_student"]
    lines += [
        "",
        f"- MACs ratio {summary['macs_ratio']:.2f}x; fp32 student speed-up "
        f"{summary['student_fp32_speedup']['median']:.2f}x = "
        f"{summary['speedup_over_macs_ratio']:.2f} x the MACs ratio.",
        f"- int8 student vs fp32 student: {int8['median']:.2f}x faster "
        f"[{int8['min']:.2f}-{int8['max']:.2f}]; PSNR int8 vs fp32 student "
        f"{report['psnr']['student_int8_vs_fp32']:.2f} dB; PSNR loss against the "
        f"teacher {report['psnr']['student_fp32'] - report['psnr']['student_int8']:.2f}"
        " dB.",
        "",
        "## Per-op profile (each op timed on its own; last run)",
    ]
    for name, result in last["results"].items():
        ops = [latency.OpStats(**op) for op in result["ops"]]
        if ops:
            lines += [
                "",
                f"### {name} ({result['delegate_partitions']} XNNPACK partitions)",
                "",
                latency.op_table_markdown(ops),
            ]
    return "\n".join(lines) + "\n"


def plot_ops(report: dict, path: str) -> None:
    """Stacked bars: per-op-type time of each model (last run)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = report["repeats"][-1]["results"]
    names = [n for n in results if results[n]["ops"]]
    op_types = sorted(
        {op["op"] for n in names for op in results[n]["ops"]},
        key=lambda op: (
            -sum(
                o["total_ms"] for n in names for o in results[n]["ops"] if o["op"] == op
            )
        ),
    )
    figure, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 4.5))
    axes = np.atleast_1d(axes)
    colors = plt.get_cmap("tab20")
    for axis, name in zip(axes, names, strict=True):
        times = {op["op"]: op["total_ms"] for op in results[name]["ops"]}
        bottom = 0.0
        for index, op in enumerate(op_types):
            value = times.get(op, 0.0)
            axis.bar([0], [value], bottom=bottom, color=colors(index % 20), label=op)
            bottom += value
        axis.set_title(f"{name}\n{results[name]['median_ms']:.0f} ms whole model")
        axis.set_ylabel("ms (ops timed one by one)")
        axis.set_xticks([])
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="center right", fontsize=8)
    figure.tight_layout(rect=(0, 0, 0.82, 1))
    figure.savefig(path, dpi=100)
    plt.close(figure)


def run(
    output_dir: str,
    size: int,
    keep_ratio: float,
    runs: int,
    warmup: int,
    repeats: int,
    threads: int,
    op_runs: int,
) -> dict:
    """Builds, exports, times and evaluates; writes and returns the report."""
    os.makedirs(output_dir, exist_ok=True)
    work = tempfile.mkdtemp(prefix="tgc_speed_")
    shape = (size, size, 3)
    print("[1/3] teacher and uniform student", flush=True)
    teacher = tgc.models.pretrained("vintage")
    student = uniform_student(keep_ratio)
    print(
        "[2/3] shipping: teacher fp32, student fp32 and int8; quality on "
        "held-out photos",
        flush=True,
    )
    calibration = photos(CALIBRATION_PHOTOS, size)
    calibration = np.concatenate([calibration, calibration[:, :, ::-1]])
    shipment = tgc.ship.ship(
        {"teacher_fp32": teacher, "student_fp32": student},
        work,
        inputs=photos(EVAL_PHOTOS, size),
        int8={"student_int8": "student_fp32"},
        calibration=calibration,
        input_shape=shape,
        threads=threads,
        distributions=False,
        timing=False,
    )
    files = {"teacher_fp32": os.path.join(work, "teacher_fp32.tflite")}
    tgc.export.to_litert(teacher, files["teacher_fp32"], input_shape=(1, *shape))
    files.update(shipment.files)
    students = ("student_fp32", "student_int8")
    quality = {name: shipment.rows[name]["psnr"] for name in students}
    quality["student_int8_vs_fp32"] = float(
        np.mean(tgc.metrics.psnr(*(shipment.outputs[name] for name in students)))
    )
    print(f"[3/3] timing, {repeats} interleaved runs", flush=True)
    report = {
        "size": size,
        "keep_ratio": keep_ratio,
        "threads": threads,
        "runs": runs,
        "macs": {name: shipment.rows[name]["macs"] for name in files},
        "psnr": quality,
        "repeats": [],
    }
    for repeat in range(repeats):
        comparison = tgc.ship.time_files(
            files,
            runs=runs,
            threads=threads,
            warmup=warmup,
            profile_ops=repeat == repeats - 1,
            op_runs=op_runs,
        )
        report["repeats"].append(comparison.to_dict())
    report["summary"] = _summary(report)
    reports.write_report(output_dir, "speed", report, to_markdown(report))
    plot_ops(report, os.path.join(output_dir, "speed.png"))
    return report


def _define_flags() -> None:
    """Defines the command-line flags (only when run as a script)."""
    flags.DEFINE_string("output_dir", "benchmarks/results", "Where to write results.")
    flags.DEFINE_integer("size", 256, "Square input size.", lower_bound=16)
    flags.DEFINE_float("keep_ratio", 0.25, "Student width.", lower_bound=0.01)
    flags.DEFINE_integer("runs", 8, "Interleaved rounds per repeat.", lower_bound=1)
    flags.DEFINE_integer("warmup", 2, "Warm-up runs per model.", lower_bound=0)
    flags.DEFINE_integer("repeats", 2, "Independent interleaved runs.", lower_bound=1)
    flags.DEFINE_integer("threads", 2, "LiteRT CPU threads.", lower_bound=1)
    flags.DEFINE_integer("op_runs", 3, "Timed runs per op for the profiles.")
    flags.DEFINE_bool("verbose", False, "Show TensorFlow's and LiteRT's C++ log lines.")


def main(argv):
    logging.set_verbosity(logging.INFO if FLAGS.verbose else logging.WARNING)
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if FLAGS.keep_ratio > 1.0:
        raise app.UsageError(f"--keep_ratio must be <= 1, got {FLAGS.keep_ratio}.")
    run(
        FLAGS.output_dir,
        FLAGS.size,
        FLAGS.keep_ratio,
        FLAGS.runs,
        FLAGS.warmup,
        FLAGS.repeats,
        FLAGS.threads,
        FLAGS.op_runs,
    )


if __name__ == "__main__":
    _define_flags()
    app.run(main)
