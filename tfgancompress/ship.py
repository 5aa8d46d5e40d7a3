"""Evaluate and ship: LiteRT files, quality against the teacher, measured speed.

The last step every tool shares (the main job, the method benchmark, the
demo, `benchmarks/speed.py`), in three public pieces and one call that
runs them in order:

1. `export_files`: each Keras model as a float32 `.tflite` file, and the
   ones named in `int8` as int8 files too (`tgc.export.to_litert`,
   calibrated on given images);
2. `Scorer`: PSNR, detail PSNR, SSIM, L1, Fréchet distance and KID of any
   outputs against the teacher's outputs on the evaluation images (teacher
   features computed once); `litert_outputs` runs a file on them;
3. `time_files`: every file timed interleaved in one run
   (`tgc.latency.compare_latency`), so the speed-ups share the machine's
   noise; the first file is the baseline;
4. `ship`: all of it, with MACs and parameters (`tgc.profile`) per model
   and the outputs of references that have no model (e.g. the identity),
   as one row per name.

```python
shipment = tgc.ship.ship(
    {"teacher": teacher, "student": student},
    "outputs/run",
    inputs=images,             # evaluation images, (N, H, W, 3) in [-1, 1]
    targets=teacher_outputs,   # the teacher's outputs on them
    int8=["student"],          # also student_int8.tflite
    calibration=calibration,   # int8 calibration images
    references={"identity": images},
)
shipment.rows["student_int8"]  # macs, params, file, psnr, ..., latency_ms, speedup
```

`tgc.reports` draws the sample grid (`save_comparison_grid`) and writes the
report (`write_report`, strict JSON + Markdown).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Mapping, Sequence

import keras
import numpy as np

from tfgancompress import export, latency, metrics
from tfgancompress.profile import profile
from tfgancompress.quantization import is_quantized


class Scorer:
    """Scores outputs against fixed teacher outputs; teacher features cached.

    Args:
        targets: The teacher's outputs on the evaluation inputs, in [-1, 1].
        feature_fn: Feature network for FD/KID (default EfficientNet-Lite0,
            `tgc.metrics.compute_features`).
        distributions: Compute FD and KID (they need >= 2 images; `None`
            with fewer).
    """

    def __init__(self, targets: np.ndarray, feature_fn=None, distributions=True):
        self.targets = np.asarray(targets, np.float32)
        self.feature_fn = feature_fn
        self.distributions = bool(distributions) and len(self.targets) >= 2
        self.target_features = (
            metrics.compute_features(self.targets, feature_fn)
            if self.distributions
            else None
        )

    def score(self, outputs: np.ndarray) -> dict[str, float | None]:
        """PSNR (dB), SSIM, L1, FD and KID of `outputs` against the teacher.

        Also `detail_psnr`: the PSNR once each image's mean colour difference
        is removed (`metrics.detail_psnr`); its gap to `psnr` is the part of
        the error that is one colour offset per image.
        """
        outputs = np.asarray(outputs, np.float32)
        scores = {
            "psnr": float(np.mean(metrics.psnr(self.targets, outputs))),
            "detail_psnr": float(np.mean(metrics.detail_psnr(self.targets, outputs))),
            "ssim": float(np.mean(metrics.ssim(self.targets, outputs))),
            "l1": float(np.mean(metrics.l1(self.targets, outputs))),
            "fd": None,
            "kid": None,
        }
        if self.distributions:
            features = metrics.compute_features(outputs, self.feature_fn)
            frechet = metrics.FrechetDistance()
            frechet.update_features(real=self.target_features, fake=features)
            kid = metrics.KernelInceptionDistance()
            kid.update_features(real=self.target_features, fake=features)
            # A distance: round-off can make it a hair below 0 on equal sets.
            scores["fd"] = max(0.0, float(frechet.result()))
            scores["kid"] = float(kid.result())
        return scores


def litert_outputs(
    path: str | os.PathLike, inputs: np.ndarray, num_threads: int = 2
) -> np.ndarray:
    """A LiteRT file's outputs on `inputs`, one image at a time, in [-1, 1].

    The outputs are clipped to the images' range: an int8 file's output grid
    need not contain -1 and 1 exactly, and a generator clipped to [-1, 1]
    can come out one quantization step beyond them.
    """
    outputs = [
        export.run_litert(path, image[None], num_threads=num_threads)
        for image in inputs
    ]
    return np.clip(np.concatenate(outputs), -1.0, 1.0)


def int8_names(int8: Sequence[str] | Mapping[str, str]) -> dict[str, str]:
    """`{int8 name: float model name}`; names `["a"]` give `{"a_int8": "a"}`."""
    if isinstance(int8, Mapping):
        return dict(int8)
    return {f"{name}_int8": name for name in int8}


def export_files(
    models: Mapping[str, keras.Model],
    directory: str | os.PathLike,
    input_shape: Sequence[int],
    int8: Sequence[str] | Mapping[str, str] = (),
    calibration: np.ndarray | None = None,
) -> dict[str, str]:
    """Exports each model to `<directory>/<name>.tflite` (float32), some to int8.

    Args:
        models: `{name: keras.Model}`.
        directory: Existing folder for the files.
        input_shape: `(H, W, C)` to export at (batch 1).
        int8: Models to export as int8 too: names (file `<name>_int8`) or
            `{int8 name: model name}`.
        calibration: int8 calibration images (>= 16 recommended); not
            used for a quantization-aware model, which carries its ranges
            (`tgc.quantization.is_quantized`).

    Returns:
        `{name: path}`, float32 files first, then the int8 ones.

    Raises:
        KeyError: If `int8` names a model not in `models`.
    """
    shape = (1, *tuple(input_shape))
    files = {
        name: export.to_litert(
            model, os.path.join(directory, f"{name}.tflite"), input_shape=shape
        )
        for name, model in models.items()
    }
    for name, source in int8_names(int8).items():
        if source not in models:
            raise KeyError(f"int8 names {source!r}, not one of {sorted(models)}.")
        model = models[source]
        files[name] = export.to_litert(
            model,
            os.path.join(directory, f"{name}.tflite"),
            quantization="int8",
            # A quantization-aware model carries its own ranges.
            representative_data=None if is_quantized(model) else calibration,
            input_shape=shape,
        )
    return files


def time_files(
    files: Mapping[str, str],
    runs: int = 10,
    threads: int = 2,
    warmup: int = 3,
    **options,
) -> latency.Comparison:
    """Times LiteRT files interleaved in one run; the first is the baseline.

    Args:
        files: `{name: .tflite path}`.
        runs: Timed rounds.
        threads: CPU threads.
        warmup: Untimed rounds first.
        **options: More `tgc.latency.compare_latency` arguments (e.g.
            `profile_ops=True`).
    """
    return latency.compare_latency(
        dict(files), num_threads=threads, runs=runs, warmup=warmup, **options
    )


@dataclasses.dataclass
class Shipment:
    """What `ship` measured.

    Attributes:
        rows: `{name: row}` for every model, int8 file and reference: `macs`
            and `params` (models and their int8 files), `file`,
            `latency_ms` and `speedup` (files), `psnr`, `ssim`, `l1`,
            `fd`, `kid` (all).
        outputs: `{name: outputs on the evaluation inputs}`.
        files: `{name: .tflite path}`.
        timing: The interleaved timing run, or `None` without timing.
        seconds: Wall time of `export`, `score` and `time`.
    """

    rows: dict[str, dict]
    outputs: dict[str, np.ndarray]
    files: dict[str, str]
    timing: latency.Comparison | None
    seconds: dict[str, float]


def ship(
    models: Mapping[str, keras.Model],
    directory: str | os.PathLike,
    *,
    inputs: np.ndarray,
    targets: np.ndarray | None = None,
    int8: Sequence[str] | Mapping[str, str] = (),
    calibration: np.ndarray | None = None,
    references: Mapping[str, np.ndarray] | None = None,
    input_shape: Sequence[int] | None = None,
    runs: int = 10,
    threads: int = 2,
    warmup: int = 3,
    feature_fn=None,
    distributions: bool = True,
    timing: bool = True,
) -> Shipment:
    """Exports, scores and times models; one row per model, file and reference.

    Args:
        models: `{name: keras.Model}`; the first is the baseline (the
            teacher) of the speed-ups and, without `targets`, of quality.
            Every model is exported to `<directory>/<name>.tflite`, but the
            baseline only when it is timed.
        directory: Existing folder for the `.tflite` files.
        inputs: Evaluation images `(N, H, W, 3)` in [-1, 1].
        targets: The baseline's outputs on `inputs` (computed when `None`).
        int8: Models also shipped as int8 (see `export_files`).
        calibration: int8 calibration images.
        references: `{name: outputs}` scored without a model (identity,
            colour map, ...).
        input_shape: `(H, W, C)` of the files (default: the inputs').
        runs: Timed interleaved rounds.
        threads: LiteRT CPU threads.
        warmup: Untimed rounds first.
        feature_fn: FD/KID feature network (see `Scorer`).
        distributions: Compute FD and KID.
        timing: Time the files (the baseline's among them) interleaved.

    Returns:
        A `Shipment`.
    """
    inputs = np.asarray(inputs, np.float32)
    shape = tuple(input_shape or inputs.shape[1:])
    baseline = next(iter(models))
    shipped = {n: m for n, m in models.items() if timing or n != baseline}
    seconds = {}
    start = time.perf_counter()
    files = export_files(shipped, directory, shape, int8, calibration)
    seconds["export"] = time.perf_counter() - start
    start = time.perf_counter()
    outputs = {}
    for name, model in models.items():
        if name == baseline and targets is not None:
            outputs[name] = np.asarray(targets, np.float32)
        else:
            outputs[name] = np.asarray(model.predict(inputs, batch_size=2, verbose=0))
    for name in int8_names(int8):
        outputs[name] = litert_outputs(files[name], inputs, threads)
    outputs.update(references or {})
    scorer = Scorer(outputs[baseline], feature_fn, distributions)
    rows = {name: scorer.score(output) for name, output in outputs.items()}
    for name, model in models.items():
        cost = profile(model, shape)
        rows[name].update(macs=cost.macs, params=cost.params)
    for name, source in int8_names(int8).items():
        rows[name].update(macs=rows[source]["macs"], params=rows[source]["params"])
    for name, path in files.items():
        rows[name]["file"] = path
    seconds["score"] = time.perf_counter() - start
    comparison = None
    if timing:
        start = time.perf_counter()
        comparison = time_files(files, runs, threads, warmup)
        for name, result in comparison.results.items():
            rows[name].update(
                latency_ms=result.median_ms, speedup=comparison.speedup[name]
            )
        seconds["time"] = time.perf_counter() - start
    return Shipment(rows, outputs, files, comparison, seconds)
