"""Export a trained generator: LiteRT (fp32/fp16/dynamic/int8), ONNX, SavedModel.

    python -m training.export --model=outputs/vintage/student.keras \\
        --output=student_int8.tflite --quantization=int8

A `.keras` file saved by `training.train` (or any Keras model using this
project's layers) is loaded, exported at a fixed `--size` and checked: the
exported file is run on one built-in photo and its largest difference from
the Keras model is printed. int8 calibrates on built-in training photos.
"""

from __future__ import annotations

import os

import keras
import numpy as np
from absl import app, flags, logging

import tfgancompress as tgc

FORMATS = ("litert", "onnx", "saved_model")
FLAGS = flags.FLAGS


def define_flags() -> None:
    """Defines the command-line flags (only when run as a script)."""
    flags.DEFINE_string("model", None, "The .keras model to export.", required=True)
    flags.DEFINE_string("output", None, "Output file or folder.", required=True)
    flags.DEFINE_enum("format", "litert", list(FORMATS), "Export format.")
    flags.DEFINE_enum(
        "quantization",
        None,
        ["fp16", "dynamic", "int8"],
        "LiteRT quantization (default: float32).",
    )
    flags.DEFINE_integer("size", 256, "Square input size to export at.", lower_bound=8)
    flags.DEFINE_integer(
        "calibration_images", 16, "int8: built-in photos to calibrate on."
    )


def _photos(count: int, size: int) -> np.ndarray:
    dataset = tgc.data.photos("train", crop_size=size, batch_size=1, seed=0)
    return np.concatenate([np.asarray(x) for x in dataset.take(count)])


def export(
    model_path: str,
    output: str,
    file_format: str = "litert",
    quantization: str | None = None,
    size: int = 256,
    calibration_images: int = 16,
) -> float:
    """Exports a `.keras` generator; returns max |exported - Keras| on a photo.

    Args:
        model_path: The `.keras` file (custom layers of this project load
            because importing `tfgancompress` registers them).
        output: The file (LiteRT, ONNX) or folder (SavedModel) to write.
        file_format: `"litert"`, `"onnx"` or `"saved_model"`.
        quantization: LiteRT only: None, `"fp16"`, `"dynamic"`, `"int8"`.
        size: Square input size to export at.
        calibration_images: int8: built-in training photos to calibrate on.

    Returns:
        The largest absolute difference from the Keras model on one photo
        (0 for SavedModel, which is not re-run).

    Raises:
        FileNotFoundError: If `model_path` does not exist.
        ValueError: On an unknown format, or quantization with a non-LiteRT
            format.
    """
    if not os.path.isfile(model_path):
        raise FileNotFoundError(f"No model file at {model_path!r}.")
    if file_format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {file_format!r}.")
    if quantization and file_format != "litert":
        raise ValueError(f"quantization={quantization!r} is for LiteRT exports.")
    model = keras.models.load_model(model_path)
    shape = (size, size, model.input_shape[-1])
    sample = _photos(1, size)
    expected = np.asarray(model(sample, training=False))
    if file_format == "onnx":
        got = tgc.export.run_onnx(tgc.export.to_onnx(model, output), sample)
    elif file_format == "saved_model":
        tgc.export.to_saved_model(model, output)
        return 0.0
    else:
        calibration = (
            _photos(calibration_images, size) if quantization == "int8" else None
        )
        path = tgc.export.to_litert(
            model, output, quantization, calibration, input_shape=shape
        )
        got = tgc.export.run_litert(path, sample)
    return float(np.abs(np.asarray(got) - expected).max())


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if FLAGS.quantization and FLAGS.format != "litert":
        raise app.UsageError("--quantization applies to --format=litert only.")
    if not os.path.isfile(FLAGS.model):
        raise app.UsageError(f"--model: no file at {FLAGS.model!r}.")
    logging.set_verbosity(logging.WARNING)
    difference = export(
        FLAGS.model,
        FLAGS.output,
        FLAGS.format,
        FLAGS.quantization,
        FLAGS.size,
        FLAGS.calibration_images,
    )
    print(f"wrote {FLAGS.output}; max |exported - keras| = {difference:.2e}")


def cli() -> None:
    """Console-script entry point."""
    define_flags()
    app.run(main)


if __name__ == "__main__":
    cli()
