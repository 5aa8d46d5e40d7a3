"""What people would rather see than read: image grids, channel charts, reports.

Every file is written atomically (`tfgancompress.atomic`): complete or absent.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence

import numpy as np

from tfgancompress.atomic import atomic_path, atomic_write


def save_image_grid(path: str, columns: Sequence[np.ndarray]) -> None:
    """Saves images side by side as a PNG: one row per sample, one column each.

    Args:
        path: PNG path.
        columns: Arrays of shape (N, H, W, 3) in [-1, 1], all the same shape
            (e.g. input, teacher output, student output).
    """
    from PIL import Image

    rows = [np.concatenate(images, axis=1) for images in zip(*columns, strict=True)]
    grid = np.concatenate(rows, axis=0)
    pixels = np.clip((grid + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    with atomic_path(path) as temporary:
        Image.fromarray(pixels).save(temporary)


def difference_image(
    first: np.ndarray, second: np.ndarray, gain: float = 4.0
) -> np.ndarray:
    """`|first - second| * gain` as an image in [-1, 1]: black where equal.

    Args:
        first: Images in [-1, 1].
        second: Images of the same shape.
        gain: Amplification (a difference of `2 / gain` is white).
    """
    difference = np.abs(np.asarray(first) - np.asarray(second)) * gain
    return (np.clip(difference, 0.0, 2.0) - 1.0).astype(np.float32)


def save_comparison_grid(
    path: str,
    inputs: np.ndarray,
    teacher: np.ndarray,
    student: np.ndarray,
    gain: float = 4.0,
) -> None:
    """Saves `input | teacher | student | |teacher - student| x gain` rows as a PNG.

    Args:
        path: PNG path.
        inputs: `(N, H, W, 3)` inputs in [-1, 1].
        teacher: The teacher's outputs on them.
        student: The student's outputs on them.
        gain: Amplification of the difference column.
    """
    difference = difference_image(teacher, student, gain)
    save_image_grid(path, [inputs, teacher, student, difference])


def save_figure(figure, path: str) -> None:
    """Lays out, writes (atomically, 100 dpi) and closes a matplotlib figure."""
    import matplotlib.pyplot as plt

    figure.tight_layout()
    try:
        with atomic_path(path) as temporary:
            figure.savefig(temporary, dpi=100)
    finally:
        plt.close(figure)


def plot_channels(channels, path: str, title: str = "") -> None:
    """Bar chart of kept vs total channels per layer, written as a PNG.

    Args:
        channels: `tgc.live_channels(model)` (objects with `name`, `kept`,
            `total`).
        path: PNG path.
        title: Chart title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [c.name for c in channels]
    figure, axis = plt.subplots(figsize=(max(6.0, 0.35 * len(names)), 4.0))
    positions = np.arange(len(names))
    axis.bar(positions, [c.total for c in channels], color="#dddddd", label="total")
    axis.bar(positions, [c.kept for c in channels], color="#1f77b4", label="kept")
    axis.set_xticks(positions, names, rotation=90, fontsize=7)
    axis.set_ylabel("channels")
    axis.set_title(title)
    axis.legend()
    save_figure(figure, path)


def strict_json(value):
    """`value` made strict JSON: non-finite floats become `None` (null).

    JSON has no `Infinity` or `NaN` (Python's `json` writes them, other
    readers reject the file). Mappings, lists/tuples and numpy scalars and
    arrays are converted recursively.
    """
    if isinstance(value, Mapping):
        return {str(key): strict_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [strict_json(item) for item in value]
    if isinstance(value, np.ndarray):
        return strict_json(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: str, value) -> None:
    """Writes `value` as strict JSON (`strict_json`), atomically."""
    with atomic_write(path) as file:
        json.dump(strict_json(value), file, indent=2, allow_nan=False)


def plot_mask_trajectory(
    history: Sequence[dict], path: str, budget_macs: int | None = None, title: str = ""
) -> None:
    """Live channels and their MACs against the training step, as a PNG.

    Panels: the live channels of every group (when the records have
    `live_by_group`, `{label: live channels}`), the live channels in all
    with the band's half-width, and their MACs with the budget line. A
    record whose `event` is `"frozen"` marks the freeze (dotted line).

    Args:
        history: Records with `step`, `open_channels`, `open_macs` and
            `bound` (e.g. `training.methods.dmad.DmadSchedule.history`).
        path: PNG path.
        budget_macs: Draws the MACs budget as a line, if given.
        title: Chart title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in history]
    labels = list(history[0].get("live_by_group", {})) if history else []
    rows = 3 if labels else 2
    figure, axes = plt.subplots(
        rows, 1, figsize=(8.0, 3.0 * rows), sharex=True, squeeze=False
    )
    axes = list(axes[:, 0])
    step_style = {"drawstyle": "steps-post"}
    if labels:
        groups = axes.pop(0)
        colours = plt.get_cmap("tab20")
        for index, label in enumerate(labels):
            groups.plot(
                steps,
                [r["live_by_group"][label] for r in history],
                color=colours(index % 20),
                label=label,
                **step_style,
            )
        groups.set_ylabel("live channels per group")
        groups.legend(fontsize=6, ncol=2, loc="upper left", bbox_to_anchor=(1.01, 1))
        groups.set_title(title)
        title = ""
    channels, macs = axes
    channels.plot(
        steps, [r["open_channels"] for r in history], color="#1f77b4", **step_style
    )
    channels.set_ylabel("live channels (all masks)")
    band = channels.twinx()
    band.plot(
        steps, [r["bound"] for r in history], color="#aaaaaa", ls="--", **step_style
    )
    band.set_ylabel("band half-width b")
    macs.plot(
        steps, [r["open_macs"] / 1e9 for r in history], color="#d62728", **step_style
    )
    if budget_macs is not None:
        macs.axhline(budget_macs / 1e9, color="black", lw=0.8, label="budget")
        macs.legend()
    for record in history:
        if record.get("event") == "frozen":
            for axis in (channels, macs):
                axis.axvline(record["step"], color="#555555", lw=0.8, ls=":")
    macs.set_ylabel("G MACs of live channels")
    macs.set_xlabel("step")
    channels.set_title(title)
    save_figure(figure, path)


def plot_training_curves(
    phases: Sequence[dict], path: str, title: str = "", monitor: str = "val_psnr"
) -> None:
    """A run's losses and validation metric against the step, as a PNG.

    Panels: every logged loss (log scale when all are positive), then
    `monitor` when it was logged. The x axis is the step across phases; a
    dotted line marks where each phase starts.

    Args:
        phases: Records with `phase`, `start` (its first step) and `epochs`
            (records with `step` and the logged values; a value may be
            `None`), e.g. `training.bench.training_curves(...)["phases"]`.
        path: PNG path.
        title: Chart title.
        monitor: The validation metric of the lower panel.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    skip = {"step", "phase_step", monitor}
    names = list(
        dict.fromkeys(
            name
            for phase in phases
            for epoch in phase["epochs"]
            for name in epoch
            if name not in skip and not name.startswith("val_")
        )
    )

    def points(name: str) -> tuple[list, list]:
        pairs = [
            (epoch["step"], epoch[name])
            for phase in phases
            for epoch in phase["epochs"]
            if epoch.get(name) is not None
        ]
        return [s for s, _ in pairs], [v for _, v in pairs]

    monitored = points(monitor)
    rows = 2 if monitored[0] else 1
    figure, axes = plt.subplots(
        rows, 1, figsize=(8.0, 3.2 * rows), sharex=True, squeeze=False
    )
    axes = list(axes[:, 0])
    colours = plt.get_cmap("tab20")
    positive = True
    for index, name in enumerate(names):
        steps, values = points(name)
        positive = positive and all(v > 0 for v in values)
        axes[0].plot(steps, values, marker=".", color=colours(index % 20), label=name)
    if names:
        axes[0].legend(fontsize=6, ncol=2, loc="upper left", bbox_to_anchor=(1.01, 1))
        axes[0].set_yscale("log" if positive else "linear")
    axes[0].set_ylabel("loss (epoch mean)")
    axes[0].set_title(title)
    if rows == 2:
        axes[1].plot(*monitored, marker="o", color="#d62728")
        axes[1].set_ylabel(monitor)
    for phase in phases:
        for axis in axes:
            axis.axvline(phase["start"], color="#555555", lw=0.8, ls=":")
        axes[0].annotate(
            phase["phase"],
            (phase["start"], 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(2, -10),
            textcoords="offset points",
            fontsize=8,
        )
    axes[-1].set_xlabel("step (all training phases)")
    save_figure(figure, path)


def write_report(output_dir: str, stem: str, report: dict, markdown: str) -> None:
    """Writes `<stem>.json` and `<stem>.md` to `output_dir` and prints the table.

    The JSON is strict (`strict_json`: an infinite PSNR is written as null).

    Args:
        output_dir: Existing folder.
        stem: File name without extension.
        report: JSON-serializable results (numpy scalars allowed).
        markdown: The human-readable version.
    """
    path = os.path.join(output_dir, stem)
    write_json(f"{path}.json", report)
    with atomic_write(f"{path}.md") as file:
        file.write(markdown)
    print(markdown)
