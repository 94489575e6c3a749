"""hydra/launcher=slurm: the launching process's wait for its jobs, made to end.

Hydra's submitit launcher waits on each job's result file, asking `sacct` whether the job is
still alive: on a cluster without accounting it never learns that a job ended without a result
(scancel, an out-of-memory kill, a time limit without requeue) and polls forever; with accounting
it raises from `results()` and the sweep ends before its summary. `install()` (called by the Hydra
callback LaunchChecks before a SLURM multirun launches; Hydra only takes launchers from its own
plugin package, so the launcher itself stays Hydra's) wraps the jobs that submitit's executor
returns: a job that has left SLURM's queue without a result file for GRACE_S is a failed job, the
sweep goes on, and SweepSummary lists it ("no result").
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
from pathlib import Path

from hydra.core.utils import JobReturn, JobStatus

from src.utils.io import write_json, write_text

log = logging.getLogger(__name__)
GRACE_S = float(os.environ.get("SSAMBA_SLURM_GRACE_S", "60"))  # tests shorten it
POLL_S = 5.0


def in_queue(job_id: str) -> bool | None:
    """Whether SLURM still lists the job (pending, running, completing, requeued); None when squeue
    does not answer (then the job counts as alive)."""
    try:
        result = subprocess.run(
            ["squeue", "-h", "-j", str(job_id), "-o", "%i"], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if result.returncode != 0:
        return False if "Invalid job id" in result.stderr else None
    return bool(result.stdout.strip())


def no_result(job_id: str, folder: Path | None, overrides: list[str]) -> JobReturn:
    """A job that ended without a result, as Hydra's multirun goes on past it (a FAILED return would
    end the multirun before SweepSummary). A job that never wrote its folder's record (it did not
    start, or died first) gets one, with failed.json, so that SweepSummary lists it."""
    message = f"no result: SLURM job {job_id} ended without one (killed, or it never started?)"
    log.warning(f"{message}; the sweep goes on")
    if folder is not None and not (folder / ".hydra" / "overrides.yaml").exists():
        write_text(folder / ".hydra" / "overrides.yaml", "".join(f"- {json.dumps(o)}\n" for o in overrides))
        write_json(folder / "failed.json", {"error": message, "type": "NoResult"})
    ret = JobReturn()
    ret.status, ret.return_value = JobStatus.COMPLETED, None
    return ret


class _Waited:
    """A submitit job whose results() returns, rather than waiting forever, once the job has left the
    queue without a result. folder: the job's run folder (None if unknown); overrides: its own."""

    def __init__(self, job, folder: Path | None = None, overrides=()):
        self.job, self.folder, self.overrides = job, folder, list(overrides)

    def results(self) -> list:
        gone_since = None
        while not self.job.done():
            if in_queue(self.job.job_id) is False:
                gone_since = gone_since or time.monotonic()
                if time.monotonic() - gone_since > GRACE_S and not self._results_written():
                    # submitit's results() would wait for it forever
                    return [no_result(self.job.job_id, self.folder, self.overrides)]
            else:
                gone_since = None
            time.sleep(POLL_S)
        try:
            return self.job.results()
        except Exception:  # no result after all (accounting said the job ended)
            return [no_result(self.job.job_id, self.folder, self.overrides)]

    def _results_written(self) -> bool:
        """Whether every task of the job wrote its result file."""
        tasks = getattr(self.job, "_sub_jobs", None) or [self.job]
        return all(task.paths.result_pickle.exists() for task in tasks)


def install() -> None:
    """From now on in this process, submitit's executors return jobs whose wait ends (_Waited)."""
    import submitit

    submit = submitit.AutoExecutor.map_array
    if getattr(submit, "waits_until_gone", False):
        return

    def map_array(executor, fn, *args, **kwargs):
        jobs = submit(executor, fn, *args, **kwargs)
        # Hydra's launcher maps (overrides, "hydra.sweep.dir", job index, ...) over the jobs
        sweep = getattr(getattr(fn, "config", None), "hydra", None)
        if sweep is None or len(args) < 3:
            return [_Waited(job) for job in jobs]
        root = Path(str(sweep.sweep.dir))
        return [_Waited(job, root / str(idx), overrides) for job, overrides, idx in zip(jobs, args[0], args[2])]

    map_array.waits_until_gone = True
    submitit.AutoExecutor.map_array = map_array
