"""How much of a student's error is one colour offset per photo.

    python -m benchmarks.tone --student=outputs/vintage/student.keras \
        --photo_set=extended          # the task flags and --seed of its run

A student's squared error against the teacher splits exactly into a *tone*
part (the square of each photo's mean colour difference) and a *detail*
part (the rest). This scores a trained student on the task's held-out and
validation photos: its PSNR, its detail PSNR (`tgc.metrics.detail_psnr`:
the PSNR once each photo's mean colour difference is removed) and the PSNR
once each photo also gets its best per-channel gain (a least-squares fit
of the student's output to the teacher's, per photo and channel). Neither
correction is a model: both use the teacher's output on the photo. They say
where the error is, and so which kind of lever could remove it. Writes
`<name>.md`, `.json` and `.png` (per photo: PSNR, detail PSNR, identity).
"""

from __future__ import annotations

import json
import os

import keras
import numpy as np
from absl import app, flags, logging

import tfgancompress as tgc
from tfgancompress import reports
from training import tasks, train

FLAGS = flags.FLAGS
SPLITS = ("held_out", "validation")


def gain_offset_psnr(targets: np.ndarray, outputs: np.ndarray) -> np.ndarray:
    """Per-photo PSNR after the best gain and offset per photo and channel.

    Args:
        targets: The teacher's outputs `(N, H, W, C)` in [-1, 1].
        outputs: The student's outputs, same shape.

    Returns:
        `(N,)` PSNR in dB of `gain * outputs + offset` (least squares on
        each photo's channel) against `targets`.
    """
    corrected = np.empty_like(outputs)
    for index, (target, output) in enumerate(zip(targets, outputs, strict=True)):
        for channel in range(output.shape[-1]):
            x = output[..., channel].ravel()
            gain, offset = np.polyfit(x, target[..., channel].ravel(), 1)
            corrected[index, ..., channel] = gain * output[..., channel] + offset
    return np.asarray(tgc.metrics.psnr(targets, corrected))


def score_split(student: keras.Model, inputs, targets) -> dict[str, list[float]]:
    """The per-photo scores of one split (and the identity's)."""
    outputs = np.clip(student.predict(inputs, batch_size=8, verbose=0), -1, 1)

    def values(array) -> list[float]:
        return [round(float(v), 3) for v in np.asarray(array)]

    return {
        "psnr": values(tgc.metrics.psnr(targets, outputs)),
        "detail_psnr": values(tgc.metrics.detail_psnr(targets, outputs)),
        "gain_offset_psnr": values(gain_offset_psnr(targets, outputs)),
        "identity": values(tgc.metrics.psnr(targets, inputs)),
        "colour_offset": values(
            np.abs((targets - outputs).mean(axis=(1, 2))).mean(axis=1)
        ),
    }


def to_markdown(report: dict) -> str:
    lines = [
        "# Tone and detail: where a student's error is",
        "",
        f"Student `{report['student']}`, scored against the teacher. *detail*: "
        "PSNR once each photo's mean colour difference is removed "
        "(`tgc.metrics.detail_psnr`); *gain+offset*: once each photo's channels "
        "also get their best gain. Both use the teacher's output: ceilings on "
        "what correcting the tone alone could give, not models. *offset*: the "
        "mean absolute colour difference, in [-1, 1] units.",
        "",
        "| split | photos | PSNR dB | detail PSNR dB | gain+offset PSNR dB "
        "| identity dB | mean offset |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for split, scores in report["splits"].items():
        means = {key: np.mean(values) for key, values in scores.items()}
        lines.append(
            f"| {split} | {len(scores['psnr'])} | {means['psnr']:.2f} | "
            f"{means['detail_psnr']:.2f} | {means['gain_offset_psnr']:.2f} | "
            f"{means['identity']:.2f} | {means['colour_offset']:.3f} |"
        )
    held_out = report["splits"]["held_out"]
    lines += [
        "",
        "Held-out photos, one by one:",
        "",
        "| photo | PSNR dB | detail PSNR dB | gain+offset PSNR dB | identity dB |",
        "|---|---:|---:|---:|---:|",
    ]
    for index, name in enumerate(report["photos"]):
        lines.append(
            f"| {name.split('/')[-1]} | {held_out['psnr'][index]:.2f} | "
            f"{held_out['detail_psnr'][index]:.2f} | "
            f"{held_out['gain_offset_psnr'][index]:.2f} | "
            f"{held_out['identity'][index]:.2f} |"
        )
    return "\n".join(lines) + "\n"


def _plot(report: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    scores = report["splits"]["held_out"]
    names = [name.split("/")[-1] for name in report["photos"]]
    positions = np.arange(len(names))
    figure, axis = plt.subplots(figsize=(9, 4))
    bars = (("identity", "identity"), ("psnr", "student"), ("detail_psnr", "detail"))
    for offset, (key, label) in zip((-0.27, 0.0, 0.27), bars, strict=True):
        axis.bar(positions + offset, scores[key], width=0.27, label=label)
    axis.set_xticks(positions, names, rotation=30, ha="right")
    axis.set_ylim(10, 40)
    axis.set_ylabel("PSNR vs teacher (dB)")
    axis.set_title("Held-out photos: the student, and without its colour offset")
    axis.legend()
    reports.save_figure(figure, path)


def check_same_data(student_path: str, key: str) -> None:
    """Refuses a student whose run (`run.json` beside it) had other data.

    Its validation photos would then not be the ones it never trained on.
    """
    path = os.path.join(os.path.dirname(os.path.abspath(student_path)), "run.json")
    if not os.path.exists(path):
        return
    with open(path) as file:
        data = json.load(file).get("data")
    if data is not None and data != key:
        raise ValueError(
            f"{student_path} was trained on data {data} ({path}); these task "
            f"flags load {key}: pass the run's task flags and --seed "
            "(`make train`'s student: --photo_set=extended)."
        )


def run(student_path: str, output_dir: str, name: str, **settings) -> dict:
    """Scores `student_path` on the task's held-out and validation photos;
    writes the report (and prints its table) and returns it."""
    if not os.path.exists(student_path):
        raise FileNotFoundError(
            f"No student at {student_path}: pass a trained student's .keras "
            "file (`python -m training.train` writes <output_dir>/student.keras)."
        )
    task = tasks.from_settings(train.settings(settings))
    check_same_data(student_path, task.key)
    student = keras.saving.load_model(student_path)
    splits = {"held_out": task.held_out}
    if task.validation is not None:
        splits["validation"] = task.validation
    report = {
        "student": student_path,
        "task": task.key,
        "seed": task.seed,
        "photos": task.photo_names["held_out"],
        "splits": {
            split: score_split(student, *arrays) for split, arrays in splits.items()
        },
    }
    os.makedirs(output_dir, exist_ok=True)
    reports.write_report(output_dir, name, report, to_markdown(report))
    _plot(report, os.path.join(output_dir, f"{name}.png"))
    return report


def _define_flags() -> None:
    flags.DEFINE_string(
        "student", "outputs/vintage/student.keras", "A trained student (.keras)."
    )
    flags.DEFINE_string("output_dir", "benchmarks/results", "Where to write.")
    flags.DEFINE_string("name", "tone", "Stem of the report files.")
    flags.DEFINE_integer(
        "seed", 0, "The student's run seed (it draws the validation photos)."
    )
    tasks.define_flags()


def main(argv):
    logging.set_verbosity(logging.WARNING)
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    run(
        FLAGS.student,
        FLAGS.output_dir,
        FLAGS.name,
        seed=FLAGS.seed,
        **tasks.flag_settings(),
    )


if __name__ == "__main__":
    _define_flags()
    app.run(main)
