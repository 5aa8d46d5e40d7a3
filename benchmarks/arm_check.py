"""ARM check: the LiteRT files run under an arm64 LiteRT and agree with x86.

    python -m benchmarks.arm_check [--model=student.keras] [--size=256]

Phones are ARM. This exports a generator to fp32 and int8 LiteRT files on
this (x86-64) machine, runs them here, then runs the same files with the
aarch64 build of `ai-edge-litert` (XNNPACK's ARM kernels) on Debian's
arm64 Python 3.11 under `qemu-user` emulation, and compares the outputs.
Emulated timings mean nothing: only agreement is reported.

Set-up (once, cached in `--work_dir`; needs root for apt, and the Debian
and PyPI package registries):

- `apt-get install qemu-user` (the `qemu-aarch64` user-mode emulator);
- `dpkg --add-architecture arm64 && apt-get update`, then
  `apt-get download` Debian's arm64 `python3.11-minimal`,
  `libpython3.11-stdlib` and the libraries they link, unpacked with
  `dpkg -x` into a sysroot (nothing arm64 is installed on the host);
- `pip install --target --platform manylinux_2_27_aarch64 --only-binary
  :all: ai-edge-litert==<--litert_version>` (and its numpy etc.).

`--litert_version` defaults to 1.4.0, not the 2.3 used on x86: under
Debian bookworm's qemu-user 7.2, the aarch64 build of ai-edge-litert 2.3.0
crashes (SIGSEGV) while creating the XNNPACK delegate, and in `invoke()`
of a generator with XNNPACK off (a one-op ADD model runs), whatever the
emulated CPU (`-cpu max`, `max,sve=off,sme=off`, `neoverse-n1`,
`cortex-a72`, `a64fx`); 1.4.0 runs the same files, XNNPACK included.

Without `--model` the model is the pretrained vintage teacher L1-pruned to
`--keep_ratio` (~1/20 of its MACs at 0.21), wrapped in the colour skip,
calibrated on scikit-image photos. Writes `arm_check.json` to `--output_dir`
and prints the table; exits with status 1 if a file disagrees beyond
`--min_psnr`.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
from absl import app, flags, logging

from benchmarks.speed import photos

FLAGS = flags.FLAGS

# Debian bookworm's arm64 Python 3.11 and the libraries it (and LiteRT) link.
ARM64_PACKAGES = (
    "python3.11-minimal",
    "libpython3.11-minimal",
    "libpython3.11-stdlib",
    "libc6",
    "libgcc-s1",
    "libstdc++6",
    "zlib1g",
    "libexpat1",
    "libffi8",
    "libssl3",
    "libbz2-1.0",
    "liblzma5",
    "libsqlite3-0",
    "libuuid1",
    "libncursesw6",
    "libtinfo6",
    "libreadline8",
    "libdb5.3",
    "libnsl2",
    "libtirpc3",
    "libcrypt1",
    "libgssapi-krb5-2",
    "libkrb5-3",
    "libk5crypto3",
    "libkrb5support0",
    "libkeyutils1",
    "libcom-err2",
)
WHEEL_PLATFORMS = (
    "manylinux_2_17_aarch64",
    "manylinux_2_27_aarch64",
    "manylinux_2_28_aarch64",
    "manylinux2014_aarch64",
)

# Runs inside the emulated arm64 Python: every file on every input.
_ARM_SCRIPT = """
import json, platform, sys
import numpy as np
from ai_edge_litert.interpreter import Interpreter
inputs = np.load(sys.argv[1])["images"]
files = json.loads(sys.argv[2])
outputs = {}
for name, path in files.items():
    interpreter = Interpreter(model_path=path, num_threads=1)
    interpreter.allocate_tensors()
    (source,), (target,) = (interpreter.get_input_details(),
                            interpreter.get_output_details())
    results = []
    for image in inputs:
        interpreter.set_tensor(source["index"], image[None].astype(np.float32))
        interpreter.invoke()
        results.append(interpreter.get_tensor(target["index"])[0])
    outputs[name] = np.stack(results)
np.savez(sys.argv[3], machine=platform.machine(), **outputs)
"""


def _run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    logging.info("running %s", " ".join(command))
    completed = subprocess.run(command, capture_output=True, text=True, **kwargs)
    if completed.returncode != 0:
        raise RuntimeError(
            f"`{' '.join(command)}` failed (exit {completed.returncode}):\n"
            f"{completed.stdout[-1500:]}\n{completed.stderr[-1500:]}"
        )
    return completed


def ensure_qemu() -> str:
    """The `qemu-aarch64` binary, installed with apt-get if missing."""
    found = shutil.which("qemu-aarch64")
    if found:
        return found
    if os.geteuid() != 0:
        raise RuntimeError(
            "qemu-aarch64 is missing and installing it needs root: "
            "`apt-get install qemu-user`."
        )
    _run(["apt-get", "install", "-y", "-q", "qemu-user"])
    return shutil.which("qemu-aarch64")


def ensure_sysroot(work_dir: str) -> str:
    """A directory holding Debian's arm64 Python 3.11, unpacked (not installed)."""
    root = os.path.join(work_dir, "root")
    python = os.path.join(root, "usr", "bin", "python3.11")
    if os.path.exists(python):
        return root
    architectures = _run(["dpkg", "--print-foreign-architectures"]).stdout.split()
    if "arm64" not in architectures:
        _run(["dpkg", "--add-architecture", "arm64"])
        _run(["apt-get", "update", "-q"])
    debs = os.path.join(work_dir, "debs")
    os.makedirs(debs, exist_ok=True)
    _run(
        ["apt-get", "download", *[f"{name}:arm64" for name in ARM64_PACKAGES]],
        cwd=debs,
    )
    for deb in sorted(os.listdir(debs)):
        _run(["dpkg", "-x", os.path.join(debs, deb), root])
    return root


def ensure_wheels(work_dir: str, version: str) -> str:
    """A `--target` directory with the aarch64 ai-edge-litert and numpy."""
    site = os.path.join(work_dir, f"site-{version}")
    if os.path.isdir(os.path.join(site, "ai_edge_litert")):
        return site
    command = [sys.executable, "-m", "pip", "install", "--no-compile", "-q"]
    command += ["--target", site, "--only-binary=:all:", "--python-version", "3.11"]
    command += ["--implementation", "cp"]
    for platform in WHEEL_PLATFORMS:
        command += ["--platform", platform]
    _run([*command, f"ai-edge-litert=={version}"])
    return site


def _default_model(keep_ratio: float, size: int):
    import tfgancompress as tgc

    teacher = tgc.models.pretrained("vintage")
    student = tgc.pruning.l1_prune(teacher, keep_ratio)
    images = photos(("rocket", "coffee", "chelsea", "astronaut"), size)
    outputs = np.asarray(teacher.predict(images, verbose=0))
    return tgc.models.with_colour_skip(
        student, tgc.models.fit_colour_map(images, outputs), zero_layer=None
    )


def _psnr(a: np.ndarray, b: np.ndarray) -> float | None:
    """PSNR in dB for images in [-1, 1]; `None` when they are identical."""
    mse = float(np.mean((np.asarray(a, np.float64) - b) ** 2))
    return None if mse == 0 else float(10 * np.log10(4.0 / mse))


def check(
    model,
    work_dir: str,
    size: int,
    output_dir: str,
    images: int = 2,
    litert_version: str = "1.4.0",
) -> dict:
    """Exports, runs on x86 and emulated arm64, compares; returns the report."""
    import tfgancompress as tgc

    qemu = ensure_qemu()
    root = ensure_sysroot(work_dir)
    site = ensure_wheels(work_dir, litert_version)
    files_dir = tempfile.mkdtemp(prefix="arm_check_", dir=work_dir)
    shape = (1, size, size, 3)
    calibration = photos(
        ("rocket", "retina", "immunohistochemistry", "hubble_deep_field"), size
    )
    calibration = np.concatenate([calibration, calibration[:, :, ::-1]])
    calibration = np.concatenate([calibration, calibration[:, ::-1]])
    files = {
        "fp32": tgc.export.to_litert(
            model, os.path.join(files_dir, "fp32.tflite"), input_shape=shape
        ),
        "int8": tgc.export.to_litert(
            model,
            os.path.join(files_dir, "int8.tflite"),
            "int8",
            calibration,
            shape,
        ),
    }
    inputs = photos(("astronaut", "coffee", "chelsea")[:images], size)
    inputs_path = os.path.join(files_dir, "inputs.npz")
    np.savez(inputs_path, images=inputs)
    x86 = {
        name: np.concatenate(
            [
                tgc.export.run_litert(path, image[None], num_threads=1)
                for image in inputs
            ]
        )
        for name, path in files.items()
    }
    arm_path = os.path.join(files_dir, "arm.npz")
    environment = {**os.environ, "PYTHONPATH": site}
    command = [qemu, "-L", root, os.path.join(root, "usr", "bin", "python3.11")]
    _run(
        [*command, "-c", _ARM_SCRIPT, inputs_path, json.dumps(files), arm_path],
        env=environment,
    )
    arm = np.load(arm_path)
    report = {
        "arm_machine": str(arm["machine"]),
        "arm_litert_version": litert_version,
        "x86_litert_version": importlib.metadata.version("ai-edge-litert"),
        "size": size,
        "images": len(inputs),
        "files": {},
    }
    for name in files:
        difference = np.abs(arm[name] - x86[name])
        report["files"][name] = {
            "max_abs_difference": float(difference.max()),
            "mean_abs_difference": float(difference.mean()),
            "psnr_arm_vs_x86": _psnr(arm[name], x86[name]),
        }
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "arm_check.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
    return report


def _define_flags() -> None:
    flags.DEFINE_string("model", None, "A .keras generator (default: see module doc).")
    flags.DEFINE_float("keep_ratio", 0.21, "Width of the default L1-pruned model.")
    flags.DEFINE_integer("size", 256, "Square export size.", lower_bound=16)
    flags.DEFINE_integer("images", 2, "Photos compared.", lower_bound=1, upper_bound=3)
    flags.DEFINE_string(
        "work_dir",
        os.path.join(os.path.expanduser("~"), ".cache", "tfgancompress-arm64"),
        "Where the arm64 Python, wheels and files are kept.",
    )
    flags.DEFINE_string("output_dir", "outputs/arm_check", "Where to write JSON.")
    flags.DEFINE_string(
        "litert_version",
        "1.4.0",
        "aarch64 ai-edge-litert to emulate (2.3.0 crashes under qemu-user 7.2).",
    )
    flags.DEFINE_float(
        "min_psnr", 40.0, "Fail below this PSNR (dB) of arm64 vs x86 outputs."
    )


def main(argv):
    logging.set_verbosity(logging.WARNING)
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if FLAGS.model:
        import keras

        import tfgancompress.models  # noqa: F401  (registers the zoo layers)

        model = keras.saving.load_model(FLAGS.model, compile=False)
    else:
        model = _default_model(FLAGS.keep_ratio, FLAGS.size)
    os.makedirs(FLAGS.work_dir, exist_ok=True)
    report = check(
        model,
        FLAGS.work_dir,
        FLAGS.size,
        FLAGS.output_dir,
        FLAGS.images,
        FLAGS.litert_version,
    )
    print(
        f"arm64 LiteRT ({report['arm_machine']}, ai-edge-litert "
        f"{report['arm_litert_version']}, qemu-user) vs x86 (ai-edge-litert "
        f"{report['x86_litert_version']}), {report['images']} "
        f"photos at {report['size']}x{report['size']}:"
    )
    print("| file | max abs diff | mean abs diff | PSNR arm vs x86 |")
    print("|---|---:|---:|---:|")
    failed = False
    for name, row in report["files"].items():
        psnr = row["psnr_arm_vs_x86"]
        print(
            f"| {name} | {row['max_abs_difference']:.2e} | "
            f"{row['mean_abs_difference']:.2e} | "
            + ("identical" if psnr is None else f"{psnr:.1f} dB")
            + " |"
        )
        failed |= psnr is not None and psnr < FLAGS.min_psnr
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    _define_flags()
    app.run(main)
