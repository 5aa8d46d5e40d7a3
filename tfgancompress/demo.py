"""The tour: profile -> prune -> slim -> export on the real pretrained teacher.

    python -m tfgancompress.demo --output_dir=outputs/demo

Loads the pretrained vintage CycleGAN generator, prunes every layer to
`--keep_ratio` of its filters by filter L1 norm (residual channels ranked
together), cuts the pruned channels out with `slim`, checks that the slimmed
model computes exactly what the gated one does, then ships both networks
(`tgc.ship`): LiteRT export, PSNR/SSIM against the teacher on held-out
photos, both files timed side by side. The pruned student is *not
fine-tuned* here (training is what `training/` adds), so its images show
what pruning alone does; the speed and size numbers are the real ones.

Writes to `--output_dir`: `student.keras`, `teacher.tflite`,
`student.tflite`, `samples.png` (input | teacher | pruned student |
|teacher - student| x4) and `report.md` / `report.json`.
"""

from __future__ import annotations

import os

import numpy as np
from absl import app, flags, logging

import tfgancompress as tgc
from tfgancompress import reports
from tfgancompress.atomic import atomic_path

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Defines the command-line flags (only when run as a script)."""
    flags.DEFINE_string("output_dir", "outputs/demo", "Where to write the results.")
    flags.DEFINE_float(
        "keep_ratio",
        0.25,
        "Fraction of each layer's filters to keep.",
        lower_bound=0.01,
    )
    flags.DEFINE_integer("size", 256, "Square input size for profiling and export.")
    flags.DEFINE_integer("runs", 20, "Timed LiteRT runs per model.", lower_bound=1)
    flags.DEFINE_integer("threads", 2, "LiteRT CPU threads.", lower_bound=1)
    flags.DEFINE_bool("verbose", False, "Show TensorFlow's and LiteRT's C++ log lines.")


SAMPLE_PHOTOS = 4


def _photos(size: int) -> np.ndarray:
    """The first held-out built-in photos (center crops), in [-1, 1]."""
    dataset = tgc.data.photos("eval", crop_size=size, batch_size=SAMPLE_PHOTOS)
    return np.asarray(next(iter(dataset)))


def _report_markdown(report: dict) -> str:
    teacher, student = report["teacher"], report["student"]
    lines = [
        "# tfgancompress tour: vintage CycleGAN teacher",
        "",
        f"Pruned to {report['keep_ratio']:.0%} of each layer's filters by L1 "
        "norm, slimmed, exported to LiteRT fp32; "
        f"{report['size']}x{report['size']}, {report['threads']} threads, "
        f"median of {report['runs']} interleaved runs. Not fine-tuned.",
        "",
        "| model | MACs | params | LiteRT ms | .tflite MB | PSNR vs teacher dB |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, row in (("teacher", teacher), ("student", student)):
        psnr = "" if name == "teacher" else f"{row['psnr']:.2f}"
        lines.append(
            f"| {name} | {row['macs'] / 1e9:.2f} G | {row['params'] / 1e6:.2f} M "
            f"| {row['latency_ms']:.1f} | {row['tflite_mb']:.1f} | {psnr} |"
        )
    lines += [
        "",
        f"- MACs ratio: {report['macs_ratio']:.1f}x; measured speed-up: "
        f"{report['speedup']:.2f}x",
        f"- slim vs gated model, max abs difference: {report['slim_max_abs_diff']:.2e}",
        f"- LiteRT vs Keras (student), max abs difference: "
        f"{report['litert_max_abs_diff']:.2e}",
        "",
    ]
    return "\n".join(lines)


def run(output_dir: str, keep_ratio: float, size: int, runs: int, threads: int):
    """Runs the tour and writes its outputs; returns the report dict."""
    os.makedirs(output_dir, exist_ok=True)
    shape = (size, size, 3)
    print("[1/3] loading the pretrained vintage teacher", flush=True)
    teacher = tgc.models.pretrained("vintage")

    print(f"[2/3] pruning to {keep_ratio:.0%} of the filters and slimming", flush=True)
    gated = tgc.pruning.add_gates(teacher, "binary")
    tgc.pruning.prune_gates_by_l1(gated, keep_ratio)
    student = tgc.slim(gated)
    photos = _photos(size)
    gated_out = np.asarray(gated(photos, training=False))
    student_out = np.asarray(student(photos, training=False))
    with atomic_path(os.path.join(output_dir, "student.keras")) as temporary:
        student.save(temporary)

    print(
        f"[3/3] shipping: LiteRT export, quality, {runs} interleaved timing runs",
        flush=True,
    )
    shipment = tgc.ship.ship(
        {"teacher": teacher, "student": student},
        output_dir,
        inputs=photos,
        input_shape=shape,
        runs=runs,
        threads=threads,
        distributions=False,
    )
    litert_out = tgc.ship.litert_outputs(shipment.files["student"], photos[:1])
    reports.save_comparison_grid(
        os.path.join(output_dir, "samples.png"),
        photos,
        shipment.outputs["teacher"],
        student_out,
    )
    report = {
        "keep_ratio": keep_ratio,
        "size": size,
        "runs": runs,
        "threads": threads,
        "slim_max_abs_diff": float(np.abs(gated_out - student_out).max()),
        "litert_max_abs_diff": float(np.abs(litert_out - student_out[:1]).max()),
    }
    for name in ("teacher", "student"):
        row = shipment.rows[name]
        report[name] = {
            **{key: row[key] for key in ("macs", "params", "latency_ms", "psnr")},
            "tflite_mb": os.path.getsize(row["file"]) / 2**20,
        }
    report["macs_ratio"] = report["teacher"]["macs"] / report["student"]["macs"]
    report["speedup"] = shipment.rows["student"]["speedup"]
    reports.write_report(output_dir, "report", report, _report_markdown(report))
    return report


def main(argv):
    logging.set_verbosity(logging.INFO if FLAGS.verbose else logging.WARNING)
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if FLAGS.keep_ratio > 1.0:
        raise app.UsageError(f"--keep_ratio must be <= 1, got {FLAGS.keep_ratio}.")
    run(FLAGS.output_dir, FLAGS.keep_ratio, FLAGS.size, FLAGS.runs, FLAGS.threads)


def cli() -> None:
    """Console-script entry point."""
    define_flags()
    app.run(main)


if __name__ == "__main__":
    cli()
