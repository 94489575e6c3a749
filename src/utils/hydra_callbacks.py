"""Hydra callbacks: a cross-validation summary after a multirun over folds."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from src.utils.io import write_json


class CrossValidationSummary(Callback):
    """After `-m` over data.fold, average `metric` from every job's metrics.json into summary.json."""

    def __init__(self, metric: str = "test/acc"):
        self.metric = metric

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        per_job = {}
        for path in sorted(sweep_dir.glob("*/metrics.json")):
            metrics = json.loads(path.read_text())
            if self.metric in metrics:
                per_job[path.parent.name] = {"fold": metrics.get("fold"), self.metric: metrics[self.metric]}
        if not per_job:
            print(f"cross-validation summary: no job logged {self.metric}")
            return
        values = [v[self.metric] for v in per_job.values()]
        summary = {
            "metric": self.metric,
            "mean": statistics.fmean(values),
            "std": statistics.pstdev(values),
            "folds": len(values),
            "per_job": per_job,
        }
        write_json(sweep_dir / "summary.json", summary)
        print(
            f"cross-validation: mean {self.metric} = {summary['mean']:.4f} +- {summary['std']:.4f} over "
            f"{len(values)} folds ({sweep_dir / 'summary.json'})"
        )
