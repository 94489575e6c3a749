"""Hydra callbacks (run in the launching process)."""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from src.utils.errors import UserError, report, traceback_wanted
from src.utils.io import write_json
from src.utils.utils import lower_is_better

# overrides that repeat a point rather than move it: its mean over them means something
REPEATS = ("seed", "data.fold")


class RunFolderGuard(Callback):
    """Before Hydra writes anything into a single run's folder (.hydra/, the log file): refuse to
    start over in a folder that holds a run's checkpoints, or one another training holds
    (entry.check_fresh_start; src/train.py checks the same again for sweeps' jobs and direct calls)."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        from src.utils.entry import check_fresh_start

        if config.get("task_name") != "train":
            return
        try:
            check_fresh_start(config, Path(config.hydra.run.dir))
        except UserError as e:
            if traceback_wanted():
                raise
            sys.exit(report(e))


# SLURM sends the warning signal signal_delay_s before the limit, give or take its 30 s check
# period; the run needs about this long to start and install its handlers
SLURM_CHECK_PERIOD_S, STARTUP_S = 30, 120


def check_slurm_timing(timeout_min: float, signal_delay_s: float) -> None:
    """A SLURM job whose warning signal can come before the run has its handlers dies at once, with
    no checkpoint and no requeue: refuse such a pair of settings before anything is submitted."""
    room = 60 * timeout_min - signal_delay_s - SLURM_CHECK_PERIOD_S
    if room < STARTUP_S:
        least = -(-(signal_delay_s + SLURM_CHECK_PERIOD_S + STARTUP_S) // 60)
        raise UserError(
            f"hydra.launcher.timeout_min={timeout_min} with signal_delay_s={signal_delay_s}: SLURM may send its "
            f"warning signal {signal_delay_s + SLURM_CHECK_PERIOD_S:.0f} s before the limit, before the run has "
            f"started (about {STARTUP_S} s); raise timeout_min to at least {least:.0f} or lower signal_delay_s"
        )


class LaunchChecks(Callback):
    """Before a multirun submits anything: settings of the launcher that cannot work (SLURM's time
    limit against its warning signal), in one line and exit 2; and on SLURM a wait for the jobs that
    ends when one dies without a result (src/utils/slurm_wait.py)."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        launcher = config.hydra.get("launcher") or {}
        if "SlurmLauncher" not in str(launcher.get("_target_", "")):
            return
        try:
            check_slurm_timing(float(launcher.timeout_min), float(launcher.signal_delay_s))
        except UserError as e:
            if traceback_wanted():
                raise
            sys.exit(report(e))
        from src.utils import slurm_wait

        slurm_wait.install()


class SweepSummary(Callback):
    """After a multirun, read every job's metrics.json from the sweep folder (jobs may have run on
    other machines) and write <sweep>/summary.json: per job its overrides and metrics; per point of
    the sweep (the jobs that differ only by seed or fold) the mean and std of `metric` over them;
    and the best point. `metric` defaults to optimized_metric, read from the test stage when every
    job tested (test/acc rather than val/acc)."""

    def __init__(self, metric: str | None = None):
        self.metric = metric

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        jobs = []
        folders = [p.parent.parent for p in sweep_dir.glob("*/.hydra/overrides.yaml")]
        for folder in sorted(folders, key=lambda p: int(p.name) if p.name.isdigit() else 0):
            overrides = OmegaConf.to_container(OmegaConf.load(folder / ".hydra" / "overrides.yaml"))
            job = {"job": folder.name, "overrides": overrides}
            metrics = json.loads((folder / "metrics.json").read_text()) if (folder / "metrics.json").exists() else None
            if metrics is not None and metrics.get("finished", True) is False:  # stopped (a signal, a kill)
                resume = " ".join([*overrides, "ckpt_path=last", f"hydra.run.dir={folder}", "hydra.output_subdir=null"])
                job["error"] = (
                    f"stopped at step {metrics.get('global_step')} before its end ({metrics.get('phases')}); "
                    f"resume it with: python -m src.train {resume}"
                )
            elif metrics is not None:
                job["metrics"] = metrics
            elif (folder / "failed.json").exists():
                job["error"] = json.loads((folder / "failed.json").read_text())["error"]
            else:  # killed (out of memory, a time limit without requeue) before it wrote anything
                job["error"] = "no result: the job ended without writing metrics.json (killed?)"
            jobs.append(job)
        metric = self.metric or config.get("optimized_metric")
        if metric in (None, "auto"):  # each job resolved it for its data (metrics.json)
            metric = next((j["metrics"].get("optimized_metric") for j in jobs if "metrics" in j), None)
        summary = summarise(jobs, metric)
        write_json(sweep_dir / "summary.json", summary)
        failed = [j for j in jobs if "error" in j]
        print(
            f"sweep: {len(jobs) - len(failed)} jobs finished, {len(failed)} failed; results in "
            f"{sweep_dir / 'summary.json'}"
        )
        shared = set.intersection(*(set(j["overrides"]) for j in jobs)) if jobs else set()
        for job in failed:  # named by what sets it apart from the other jobs
            own = " ".join(o for o in job["overrides"] if o not in shared) or "the only point"
            print(f"  job {job['job']} ({own}) failed: {job['error']}")
        metric = summary["metric"]
        for point in summary["points"]:
            where = " ".join(point["overrides"]) or "(one point)"
            spread = f" +- {point['std']:.4f} over {point['n']} {point['repeats']}" if point["n"] > 1 else ""
            print(f"  {where}: {metric} = {point['mean']:.4f}{spread}" if point["n"] else f"  {where}: no {metric}")
        if summary.get("best"):
            print(f"  best: {' '.join(summary['best']['overrides']) or '(one point)'}")
        if failed:
            sys.exit(1)  # a script that runs the sweep sees that not every job finished


def summarise(jobs: list[dict], metric: str | None) -> dict:
    """The summary of a sweep's jobs ({"job", "overrides", "metrics"} each, or "error" for a job
    that failed: listed, and left out of the means)."""
    done = [j for j in jobs if "metrics" in j]
    if metric and metric.startswith("val/"):
        tested = "test/" + metric[len("val/") :]
        if done and all(tested in j["metrics"] for j in done):
            metric = tested
    points: dict[tuple, list[dict]] = {}
    for job in jobs:
        key = tuple(o for o in job["overrides"] if o.split("=")[0].lstrip("+~") not in REPEATS)
        points.setdefault(key, []).append(job)
    rows = []
    for key, members in points.items():
        values = [j["metrics"][metric] for j in members if metric in j.get("metrics", {})]
        repeated = sorted({o.split("=")[0] for j in members for o in j["overrides"] if o.split("=")[0] in REPEATS})
        row = {"overrides": list(key), "jobs": [j["job"] for j in members], "n": len(values)}
        row["repeats"] = " and ".join(f"{r}s" for r in repeated) or "runs"
        if values:
            row.update(mean=statistics.fmean(values), std=statistics.pstdev(values), values=values)
        rows.append(row)
    summary = {"metric": metric, "points": rows, "jobs": jobs, "failed": [j["job"] for j in jobs if "error" in j]}
    scored = [r for r in rows if r["n"]]
    if len(scored) > 1:
        summary["best"] = (min if lower_is_better(metric) else max)(scored, key=lambda r: r["mean"])
    elif scored:  # one point (cross-validation folds, seeds): its mean is the sweep's
        summary.update(mean=scored[0]["mean"], std=scored[0]["std"], n=scored[0]["n"])
    return summary
