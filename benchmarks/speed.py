"""Real speed-up: teacher vs a uniformly thinned student in LiteRT, fp32 and int8.

    python -m benchmarks.speed [--runs=8 --repeats=2 --output_dir=benchmarks/results]

Builds the pretrained vintage CycleGAN teacher and its uniform-width student
(every layer cut to `--keep_ratio` of its filters by filter L1 norm, then
slimmed: ~1/16 of the MACs at 1/4 width), exports the teacher (fp32) and the
student (fp32 and full int8, calibrated on photos that are not evaluated),
and times the three files interleaved with `tfgancompress.latency`
(`--repeats` independent interleaved runs, each `--runs` rounds). Quality:
PSNR of each file's output against the Keras teacher, and of the int8
student against the fp32 student, on held-out photos (scikit-image
astronaut, coffee, chelsea). The student is not fine-tuned, so its PSNR
against the teacher is low; the int8-vs-fp32 difference is the number that
matters here.

Writes `speed.json`, `speed.md` and `speed.png` (per-op time of each model,
stacked by op type) to `--output_dir`.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile

import keras
import numpy as np
from absl import app, flags, logging

import keras_layers
import tfgancompress as tgc
from tfgancompress import export, latency, schedules

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


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of images in [-1, 1] (peak-to-peak 2)."""
    return float(10.0 * np.log10(4.0 / np.mean((a - b) ** 2)))


def _outputs(path: str, images: np.ndarray, threads: int) -> np.ndarray:
    return np.concatenate(
        [export.run_litert(path, image[None], num_threads=threads) for image in images]
    )


def _quality(paths: dict, teacher_out: np.ndarray, images, threads: int) -> dict:
    outputs = {name: _outputs(path, images, threads) for name, path in paths.items()}
    quality = {
        name: statistics.fmean(
            psnr(o, t) for o, t in zip(out, teacher_out, strict=True)
        )
        for name, out in outputs.items()
    }
    quality["student_int8_vs_fp32"] = statistics.fmean(
        psnr(a, b)
        for a, b in zip(outputs["student_int8"], outputs["student_fp32"], strict=True)
    )
    return quality


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
    shape = (1, size, size, 3)
    print("[1/4] teacher and uniform student", flush=True)
    teacher = tgc.models.pretrained("vintage")
    student = uniform_student(keep_ratio)
    macs = {
        "teacher_fp32": tgc.profile(teacher, shape[1:]).macs,
        "student_fp32": tgc.profile(student, shape[1:]).macs,
    }
    macs["student_int8"] = macs["student_fp32"]
    print("[2/4] exporting (teacher fp32, student fp32 and int8)", flush=True)
    calibration = photos(CALIBRATION_PHOTOS, size)
    calibration = np.concatenate([calibration, calibration[:, :, ::-1]])
    paths = {
        "teacher_fp32": export.to_litert(
            teacher, os.path.join(work, "teacher_fp32.tflite"), input_shape=shape
        ),
        "student_fp32": export.to_litert(
            student, os.path.join(work, "student_fp32.tflite"), input_shape=shape
        ),
        "student_int8": export.to_litert(
            student,
            os.path.join(work, "student_int8.tflite"),
            quantization="int8",
            representative_data=calibration,
            input_shape=shape,
        ),
    }
    print("[3/4] quality on held-out photos", flush=True)
    images = photos(EVAL_PHOTOS, size)
    teacher_out = np.asarray(teacher(images, training=False))
    quality = _quality(
        {k: v for k, v in paths.items() if k != "teacher_fp32"},
        teacher_out,
        images,
        threads,
    )
    print(f"[4/4] timing, {repeats} interleaved runs", flush=True)
    report = {
        "size": size,
        "keep_ratio": keep_ratio,
        "threads": threads,
        "runs": runs,
        "macs": macs,
        "psnr": quality,
        "repeats": [],
    }
    for repeat in range(repeats):
        comparison = latency.compare_latency(
            paths,
            num_threads=threads,
            runs=runs,
            warmup=warmup,
            profile_ops=repeat == repeats - 1,
            op_runs=op_runs,
        )
        report["repeats"].append(comparison.to_dict())
    report["summary"] = _summary(report)
    with open(os.path.join(output_dir, "speed.json"), "w", encoding="utf-8") as file:
        json.dump(report, file, indent=1)
    markdown = to_markdown(report)
    with open(os.path.join(output_dir, "speed.md"), "w", encoding="utf-8") as file:
        file.write(markdown)
    plot_ops(report, os.path.join(output_dir, "speed.png"))
    print(markdown)
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


def main(argv):
    logging.set_verbosity(logging.WARNING)
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
