"""Hydra callbacks (run in the launching process)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from src.utils.io import write_json


class SweepSummary(Callback):
    """After a multirun, read every job's metrics.json from the sweep folder (jobs may have run on
    other machines) and write <sweep>/summary.json: per job its overrides and metrics, and the
    mean and std of `metric` (e.g. test/acc over cross-validation folds)."""

    def __init__(self, metric: str | None = None):
        self.metric = metric

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        metric = self.metric or config.get("optimized_metric")
        jobs = []
        for path in sorted(
            sweep_dir.glob("*/metrics.json"), key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0
        ):
            overrides_file = path.parent / ".hydra" / "overrides.yaml"
            overrides = OmegaConf.to_container(OmegaConf.load(overrides_file)) if overrides_file.exists() else []
            jobs.append({"job": path.parent.name, "overrides": overrides, "metrics": json.loads(path.read_text())})
        values = [j["metrics"][metric] for j in jobs if metric in j["metrics"]]
        summary = {"metric": metric, "jobs": jobs}
        if values:
            summary.update(mean=statistics.fmean(values), std=statistics.pstdev(values), n=len(values))
        write_json(sweep_dir / "summary.json", summary)
        print(f"sweep: {len(jobs)} jobs finished; results in {sweep_dir / 'summary.json'}")
        for j in jobs:
            print(f"  job {j['job']}: {metric}={j['metrics'].get(metric)}  {' '.join(j['overrides'])}")
        if values:
            print(f"  mean {metric} = {summary['mean']:.4f} +- {summary['std']:.4f} over {len(values)} jobs")
