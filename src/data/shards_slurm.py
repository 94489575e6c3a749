"""A feature store's build on a SLURM cluster, through submitit (the engine of the project's Hydra
launcher): an array job of N parts, each building the shards it owns (`build --part I/N`), then a
merge job after the array (`build --merge`), which writes the index, stats and meta last.

    python -m src.data.shards build --manifest M --out O --target-length 1024 --slurm 100 \
        --workers 8 --partition cpu --time-min 240 [--sbatch account=my_lab] [--slurm-setup LINE ...]

Run the same command again after a failure: parts whose shards are all built (their marker in
<out>/parts/) are not submitted again, a part that ran before resumes (its shards that verify are
kept), and the merge runs after the new parts. A part pre-empted or out of time is requeued by
submitit and resumes the same way. The merge runs however the parts end (afterany): when one
failed, it stops naming the missing shards and the store stays incomplete (readers refuse it).
"""

from __future__ import annotations

import json
from pathlib import Path

import submitit

from src.data.shards import build, part_marker
from src.utils.io import file_sha256


class BuildPart(submitit.helpers.Checkpointable):
    """One array task: build part `part` of `parts`. As a Checkpointable, a task that gets SLURM's
    warning signal (pre-emption, time limit) is requeued with the same arguments and resumes."""

    def __init__(self, settings: dict):
        self.settings = settings

    def __call__(self, part: int, parts: int) -> None:
        build(**self.settings, part=(part, parts))


def merge(settings: dict) -> dict | None:
    return build(**settings, merge=True)


def parts_to_build(settings: dict, parts: int) -> list[int]:
    """The parts without a marker for today's manifest."""
    out, digest = Path(settings["out"]), file_sha256(settings["manifest"])
    todo = []
    for part in range(parts):
        marker = part_marker(out, part, parts)
        try:
            done = json.loads(marker.read_text()).get("manifest_sha256") == digest
        except (OSError, ValueError):
            done = False
        if not done:
            todo.append(part)
    return todo


def submit(
    settings: dict,
    parts: int,
    logs: Path | None,
    partition: str | None,
    time_min: int,
    setup: list[str],
    sbatch: dict,
) -> tuple[str | None, str]:
    """Submit the parts still to build as one array job and the merge after it; returns their job
    ids (None for the array when every part is built)."""
    out = Path(settings["out"])
    out.mkdir(parents=True, exist_ok=True)
    executor = submitit.SlurmExecutor(folder=(logs or out / "slurm") / "%j", max_num_timeout=20)
    common = dict(
        partition=partition,
        setup=setup,
        additional_parameters=sbatch,
        ntasks_per_node=1,
        signal_delay_s=120,
    )
    todo = parts_to_build(settings, parts)
    array_id = None
    if todo:
        executor.update_parameters(
            job_name=f"shards-{out.name}", time=time_min, cpus_per_task=settings["workers"], **common
        )
        jobs = executor.map_array(BuildPart(settings), todo, [parts] * len(todo))
        array_id = jobs[0].job_id.split("_")[0]
        print(
            f"submitted {len(todo)} of {parts} parts as SLURM array job {array_id} (logs in {executor.folder.parent})"
        )
    else:
        print(f"every one of the {parts} parts is built")
    executor.update_parameters(
        job_name=f"shards-{out.name}-merge",
        time=max(30, time_min // 4),
        cpus_per_task=1,
        dependency=f"afterany:{array_id}" if array_id else None,
        **common,
    )
    merge_id = executor.submit(merge, settings).job_id
    print(
        f"the merge: job {merge_id}{' after them' if array_id else ''}; then `python -m src.data.shards verify {out}`"
    )
    return array_id, merge_id
