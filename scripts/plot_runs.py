"""Training curves of finished runs, from their TensorBoard logs, as one PNG and a JSON summary.

    python scripts/plot_runs.py --run "pretrained=<run dir>" --run "scratch=<run dir>" \
        --metrics val/acc train/loss_epoch --out docs/figures/demo_finetune

writes <out>.png (one panel per metric, one line per run) and <out>.json (the curves and each run's
metrics.json).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from src.utils.io import atomic_path, write_json  # noqa: E402


def read_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    events = sorted(run_dir.glob("tensorboard/**/events.out.tfevents.*"))
    if not events:
        raise FileNotFoundError(f"{run_dir}: no TensorBoard events under tensorboard/")
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", action="append", required=True, help="label=run_dir")
    parser.add_argument("--metrics", nargs="+", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--title", default="")
    args = parser.parse_args(argv)
    runs = dict(item.split("=", 1) for item in args.run)

    summary = {"runs": {}}
    fig, axes = plt.subplots(1, len(args.metrics), figsize=(5 * len(args.metrics), 3.6), squeeze=False)
    for label, run_dir in runs.items():
        run_dir = Path(run_dir)
        curves = read_scalars(run_dir)
        metrics_file = run_dir / "metrics.json"
        entry = {"dir": str(run_dir), "final": json.loads(metrics_file.read_text()) if metrics_file.exists() else {}}
        for ax, metric in zip(axes[0], args.metrics):
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
    if args.title:
        fig.suptitle(args.title)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.out.with_suffix(".png")) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    write_json(args.out.with_suffix(".json"), summary)
    print(f"wrote {args.out.with_suffix('.png')} and {args.out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
