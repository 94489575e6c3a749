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

import logging
import os
import subprocess
import time

from hydra.core.utils import JobReturn, JobStatus

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


def no_result(job_id: str) -> JobReturn:
    """A job that ended without a result, as Hydra's multirun goes on past it (a FAILED return would
    end the multirun before SweepSummary, which lists the job from its folder)."""
    log.warning(f"SLURM job {job_id} ended without a result (killed?); the sweep goes on")
    ret = JobReturn()
    ret.status, ret.return_value = JobStatus.COMPLETED, None
    return ret


class _Waited:
    """A submitit job whose results() returns a failed JobReturn rather than waiting forever."""

    def __init__(self, job):
        self.job = job

    def results(self) -> list:
        gone_since = None
        while not self.job.done():
            if in_queue(self.job.job_id) is False:
                gone_since = gone_since or time.monotonic()
                if time.monotonic() - gone_since > GRACE_S and not self._results_written():
                    return [no_result(self.job.job_id)]  # submitit's results() would wait for it forever
            else:
                gone_since = None
            time.sleep(POLL_S)
        try:
            return self.job.results()
        except Exception:  # no result after all (accounting said the job ended)
            return [no_result(self.job.job_id)]

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

    def map_array(executor, *args, **kwargs):
        return [_Waited(job) for job in submit(executor, *args, **kwargs)]

    map_array.waits_until_gone = True
    submitit.AutoExecutor.map_array = map_array
