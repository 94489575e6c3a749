"""Training curves of runs, from their TensorBoard logs, as a PNG (one panel per metric, one line
per run) and a JSON of the points. scripts/plot_runs.py compares runs; src/train.py draws each run's
own curves into <run>/curves.png at its end."""

from __future__ import annotations

import json
from pathlib import Path

from matplotlib.figure import Figure  # drawn without pyplot: no GUI backend, no global figure state
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from src.utils.errors import MissingInput
from src.utils.io import atomic_path, write_json


def read_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    events = sorted(run_dir.glob("tensorboard/**/events.out.tfevents.*"))
    if not events:
        raise MissingInput(f"{run_dir}: no TensorBoard events under tensorboard/")
    curves: dict[str, list[tuple[int, float]]] = {}
    for event_file in events:
        acc = EventAccumulator(str(event_file))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            curves.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return {tag: sorted(points) for tag, points in curves.items()}


def epoch_axis(curves: dict, metric: str) -> list[tuple[float, float]]:
    """Map a metric's steps to epochs with the logged `epoch` scalar."""
    epochs = dict(curves.get("epoch", []))
    return [(epochs.get(step, step), value) for step, value in curves.get(metric, [])]


def plot(runs: dict[str, Path], metrics: list[str], out: Path, title: str = "") -> dict:
    """Write <out>.png and <out>.json for runs {label: run folder}; returns the JSON's content."""
    summary = {"runs": {}}
    fig = Figure(figsize=(5 * len(metrics), 3.6))
    axes = fig.subplots(1, len(metrics), squeeze=False)
    for label, run_dir in runs.items():
        run_dir = Path(run_dir)
        curves = read_scalars(run_dir)
        metrics_file = run_dir / "metrics.json"
        entry = {"dir": str(run_dir), "final": json.loads(metrics_file.read_text()) if metrics_file.exists() else {}}
        for ax, metric in zip(axes[0], metrics):
            points = epoch_axis(curves, metric)
            entry[metric] = points
            if points:
                ax.plot([p[0] + 1 for p in points], [p[1] for p in points], marker="o", ms=3, label=label)
                ax.set_title(metric)
                ax.set_xlabel("epoch")
                ax.grid(alpha=0.3)
        summary["runs"][label] = entry
    for ax in axes[0]:
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out.with_suffix(".png")) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    write_json(out.with_suffix(".json"), summary)
    return summary


def plot_run(run_dir: Path, optimized_metric: str | None) -> Path | None:
    """<run>/curves.png of a finished run: its optimised metric, losses and accuracy, those logged."""
    tags = read_scalars(run_dir)
    wanted = [optimized_metric, "val/loss", "train/loss_epoch", "train/loss", "train/acc"]
    metrics = list(dict.fromkeys(m for m in wanted if m and m in tags))
    if not metrics:
        return None
    plot({run_dir.name: run_dir}, metrics, run_dir / "curves")
    return run_dir / "curves.png"
