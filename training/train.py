"""Compress the pretrained vintage CycleGAN teacher: the README's main job.

    python -m training.train --output_dir=outputs/vintage

Method `distill` (the default until a paper's method lands) is the
distillation baseline: the teacher cut to `--keep_ratio` of its filters by
L1 norm (or to `--macs_budget`), its convolutions refitted to the teacher
by least squares on `--reconstruction_views` training views
(`tgc.reconstruction`), then trained with pixel + feature distillation + a
GAN loss on exact pseudo-pairs (a view of a built-in
training photo, the teacher's output on that view; `--crops_per_photo`
colour-jittered views per photo). Method `uniform` trains a uniformly
thinner generator from scratch with the same losses but no feature
distillation. With `--colour_skip` (default) the student is wrapped as
`y = colour_map(x) + student(x)`, starting at the least-squares colour map
of the training photos (`tgc.models.with_colour_skip`).

Training checkpoints to `<output_dir>/backup` every epoch; run the same
command again after an interruption and it resumes there. Writes
`student.keras`, `student.tflite` (fp32), `student_int8.tflite`,
`samples.png` (input | teacher | student | colour map) and
`report.md`/`report.json` (MACs, params, LiteRT latency teacher vs student,
PSNR/SSIM/FD vs the teacher on photos held out by source, next to the
identity and colour-map references).
"""

from __future__ import annotations

import os
import time

import numpy as np
from absl import app, flags, logging

import tfgancompress as tgc
from tfgancompress import latency, reports
from training import evaluation, vintage

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Defines the command-line flags (only when run as a script)."""
    flags.DEFINE_enum(
        "method", vintage.DEFAULTS["method"], ["distill", "uniform"], "Student recipe."
    )
    flags.DEFINE_float(
        "keep_ratio",
        vintage.DEFAULTS["keep_ratio"],
        "Fraction of filters kept per layer.",
        lower_bound=0.01,
    )
    flags.DEFINE_float(
        "macs_budget", None, "Target student G MACs at 256x256 (overrides keep_ratio)."
    )
    flags.DEFINE_bool(
        "colour_skip",
        vintage.DEFAULTS["colour_skip"],
        "Wrap the student in a global colour skip (y = colour map + student).",
    )
    flags.DEFINE_integer(
        "reconstruction_views",
        vintage.DEFAULTS["reconstruction_views"],
        "Training views on which the distill student's pruned convolutions are "
        "refitted to the teacher by least squares before training (0: off).",
        lower_bound=0,
    )
    flags.DEFINE_integer(
        "steps", vintage.DEFAULTS["steps"], "Training steps.", lower_bound=1
    )
    flags.DEFINE_integer(
        "steps_per_epoch",
        vintage.DEFAULTS["steps_per_epoch"],
        "Steps between checkpoints and held-out evaluations.",
        lower_bound=1,
    )
    flags.DEFINE_integer(
        "batch_size", vintage.DEFAULTS["batch_size"], "Pairs per step.", lower_bound=1
    )
    flags.DEFINE_integer(
        "crop_size",
        vintage.DEFAULTS["crop_size"],
        "Training crop side.",
        lower_bound=32,
    )
    flags.DEFINE_integer(
        "crops_per_photo",
        vintage.DEFAULTS["crops_per_photo"],
        "Cached training views per photo (the teacher runs once on each).",
        lower_bound=1,
    )
    flags.DEFINE_float(
        "colour_jitter",
        vintage.DEFAULTS["colour_jitter"],
        "Colour jitter strength of the training views.",
        lower_bound=0.0,
        upper_bound=1.0,
    )
    flags.DEFINE_float(
        "learning_rate",
        vintage.DEFAULTS["learning_rate"],
        "Adam learning rate (G and D), cosine-decayed to 0 over --steps.",
    )
    flags.DEFINE_float(
        "lambda_recon",
        vintage.DEFAULTS["lambda_recon"],
        "Weight of the L1 to the teacher.",
    )
    flags.DEFINE_float(
        "lambda_distill",
        vintage.DEFAULTS["lambda_distill"],
        "Weight of feature distillation.",
    )
    flags.DEFINE_integer(
        "ndf", vintage.DEFAULTS["ndf"], "Discriminator width.", lower_bound=1
    )
    flags.DEFINE_integer(
        "eval_size",
        vintage.DEFAULTS["eval_size"],
        "Side of the held-out evaluation crops.",
    )
    flags.DEFINE_integer(
        "photo_size",
        vintage.DEFAULTS["photo_size"],
        "Short side the photos are loaded at before views are cut (multiple of 4).",
    )
    flags.DEFINE_integer(
        "latency_runs",
        vintage.DEFAULTS["latency_runs"],
        "Interleaved LiteRT timing rounds.",
    )
    flags.DEFINE_integer("seed", vintage.DEFAULTS["seed"], "Random seed.")
    flags.DEFINE_bool(
        "jit_compile",
        vintage.DEFAULTS["jit_compile"],
        "Compile the train step with XLA.",
    )
    flags.DEFINE_string(
        "output_dir", vintage.DEFAULTS["output_dir"], "Where to write results."
    )


def _report_markdown(report: dict) -> str:
    lines = [
        f"# Vintage teacher compressed with `{report['method']}`",
        "",
        f"{report['steps']} steps, batch {report['batch_size']}, crops "
        f"{report['crop_size']}; {report['train_seconds']:.0f} s training, "
        f"{report['wall_seconds']:.0f} s in all. Quality vs the teacher on "
        f"{report['eval_images']} photos held out by source "
        f"({report['eval_size']}x{report['eval_size']}).",
        "",
        f"Student before training: {report['initial_psnr']:.2f} dB PSNR "
        + (
            f"(refitted by least squares on {report['reconstruction_views']} "
            "training views)."
            if report["reconstruction_views"]
            else "(no least-squares refit)."
        ),
        "",
        "| model | G MACs | M params | LiteRT ms | PSNR dB | SSIM | FD |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in ("teacher", "student", "student_int8", "identity", "colour_map"):
        row = report["rows"][name]
        cells = [
            f"{row['macs'] / 1e9:.2f}" if "macs" in row else "",
            f"{row['params'] / 1e6:.2f}" if "params" in row else "",
            f"{row['latency_ms']:.1f}" if "latency_ms" in row else "",
            f"{row['psnr']:.2f}" if "psnr" in row else "",
            f"{row['ssim']:.3f}" if "ssim" in row else "",
            f"{row['fd']:.2f}" if "fd" in row else "",
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"MACs ratio {report['macs_ratio']:.1f}x, measured LiteRT speed-up "
        f"{report['speedup']:.2f}x (fp32, {report['threads']} threads, "
        f"{report['eval_size']}x{report['eval_size']}).",
        "",
    ]
    return "\n".join(lines)


def run(**overrides) -> dict:
    """The whole job; returns the report (also written to `output_dir`).

    Args:
        **overrides: Values replacing `vintage.DEFAULTS` (the flags' defaults).

    Raises:
        ValueError: On an unknown setting.
    """
    unknown = sorted(set(overrides) - set(vintage.DEFAULTS))
    if unknown:
        raise ValueError(
            f"Unknown settings {unknown}; known: {sorted(vintage.DEFAULTS)}."
        )
    config = {**vintage.DEFAULTS, **overrides}
    start = time.perf_counter()
    output_dir = config["output_dir"]
    os.makedirs(output_dir, exist_ok=True)
    size = config["eval_size"]
    shape = (size, size, 3)
    print("[1/5] teacher, held-out views and student", flush=True)
    teacher = tgc.models.pretrained("vintage")
    held_out, reference_pairs = vintage.task_data(config)
    colour_map = tgc.models.fit_colour_map(*reference_pairs, seed=config["seed"])
    calibration = vintage.calibration_views(config)
    if calibration is not None:
        print(
            f"      refitting the pruned student to the teacher on "
            f"{len(calibration)} views (least squares, layer by layer)",
            flush=True,
        )
    student, keep_ratio = vintage.build_student(
        teacher,
        config["method"],
        config["keep_ratio"],
        config.get("macs_budget"),
        colour_map if config["colour_skip"] else None,
        calibration,
    )

    inputs, targets = held_out
    initial_psnr = float(
        np.mean(tgc.metrics.psnr(targets, student.predict(inputs, 2, verbose=0)))
    )
    print(f"      untrained student: {initial_psnr:.2f} dB PSNR on held-out")
    print(f"[2/5] training {config['steps']} steps", flush=True)
    train_start = time.perf_counter()
    trainer = vintage.train_student(student, teacher, config, held_out)
    train_seconds = time.perf_counter() - train_start
    student = trainer.generator
    student.save(os.path.join(output_dir, "student.keras"))

    print("[3/5] exporting fp32 and int8 LiteRT files", flush=True)
    paths = {
        "student": tgc.export.to_litert(
            student, os.path.join(output_dir, "student.tflite"), input_shape=shape
        ),
        "student_int8": tgc.export.to_litert(
            student,
            os.path.join(output_dir, "student_int8.tflite"),
            quantization="int8",
            representative_data=reference_pairs[0],
            input_shape=shape,
        ),
    }

    print("[4/5] measuring quality against the teacher", flush=True)
    colour_map_reference = evaluation.colour_map_reference(
        reference_pairs, seed=config["seed"]
    )
    outputs = {
        "teacher": targets,
        "student": np.asarray(student.predict(inputs, batch_size=2, verbose=0)),
        "student_int8": np.concatenate(
            [tgc.export.run_litert(paths["student_int8"], x[None]) for x in inputs]
        ),
        "identity": inputs,
        "colour_map": colour_map_reference(inputs),
    }
    comparison = evaluation.TeacherComparison(targets)
    rows = {name: comparison.score(out) for name, out in outputs.items()}

    print("[5/5] timing teacher vs student in LiteRT", flush=True)
    timing = latency.compare_latency(
        {"teacher": teacher, **paths},
        input_shape=shape,
        runs=config["latency_runs"],
    )
    for name in ("teacher", "student"):
        cost = tgc.profile(teacher if name == "teacher" else student, shape)
        rows[name].update(macs=cost.macs, params=cost.params)
    rows["student_int8"].update(macs=rows["student"]["macs"])
    for name, result in timing.results.items():
        rows[name]["latency_ms"] = result.median_ms
    reports.save_image_grid(
        os.path.join(output_dir, "samples.png"),
        [inputs, targets, outputs["student"], outputs["colour_map"]],
    )
    report = {
        **{k: config[k] for k in ("method", "steps", "batch_size", "crop_size")},
        "keep_ratio": keep_ratio,
        "reconstruction_views": 0 if calibration is None else len(calibration),
        "initial_psnr": initial_psnr,
        "eval_size": size,
        "eval_images": len(inputs),
        "threads": 2,
        "train_seconds": train_seconds,
        "wall_seconds": time.perf_counter() - start,
        "rows": rows,
        "macs_ratio": rows["teacher"]["macs"] / rows["student"]["macs"],
        "speedup": timing.speedup["student"],
    }
    reports.write_report(output_dir, "report", report, _report_markdown(report))
    return report


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if FLAGS.keep_ratio > 1.0:
        raise app.UsageError(f"--keep_ratio must be <= 1, got {FLAGS.keep_ratio}.")
    if FLAGS.steps_per_epoch > FLAGS.steps:
        raise app.UsageError("--steps_per_epoch must not exceed --steps.")
    logging.set_verbosity(logging.WARNING)
    run(**{key: FLAGS[key].value for key in vintage.DEFAULTS if key in FLAGS})


def cli() -> None:
    """Console-script entry point."""
    define_flags()
    app.run(main)


if __name__ == "__main__":
    cli()
