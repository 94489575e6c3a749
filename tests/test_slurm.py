"""Hydra multirun through a real one-node SLURM cluster (tests/slurm/cluster.sh; .ci/run starts it).

Skipped, with the reason, where no cluster answers."""

import json
import shutil
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.helpers.hydra_cfg import SMALL_RUN

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slurm, pytest.mark.xdist_group("slurm")]  # one node: one test at a time


def _cluster_idle(wait_s: float = 90) -> bool:
    """True once the node is idle (jobs of an earlier test may still be completing)."""
    if not shutil.which("sinfo"):
        return False
    deadline = time.monotonic() + wait_s
    while True:
        result = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=20)
        if result.returncode == 0 and "idle" in result.stdout.split():
            return True
        if result.returncode != 0 or time.monotonic() > deadline:
            return False
        time.sleep(1)


@pytest.fixture(autouse=True)
def _needs_cluster(monkeypatch):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    if not _cluster_idle():
        pytest.skip("no SLURM test cluster: start it with `tests/slurm/cluster.sh start` (.ci/run does)")
    # a job gone from the queue without a result ends the sweep's wait after 5 s, not 60 (the
    # one-node cluster's squeue does not lag): a stopped or cancelled job's sweep ends a minute sooner
    monkeypatch.setenv("SSAMBA_SLURM_GRACE_S", "5")


@contextmanager
def requeued_jobs_start_at_once():
    """Slurm holds a requeued job for two minutes before it may start again (EligibleTime); on the
    test cluster a thread moves such jobs' start to now, so that a requeue test does not wait for it."""
    done = threading.Event()

    def release():
        while not done.wait(1.0):
            pending = subprocess.run(["squeue", "-h", "-t", "PD", "-o", "%i %r"], capture_output=True, text=True)
            for line in pending.stdout.splitlines():
                job, reason = line.split(maxsplit=1)
                if reason.strip() == "BeginTime":
                    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], capture_output=True)

    thread = threading.Thread(target=release, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def slurm_cmd(data_root, sweep, *extra):
    return [
        sys.executable,
        "-m",
        "src.train",
        "-m",
        "hydra/launcher=slurm",
        "experiment=ks2_demo",
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.precision=32-true",
        *SMALL_RUN,
        "data.freqm=0",
        "data.timem=0",
        "logger=[]",
        "trainer.limit_val_batches=1",
        "trainer.num_sanity_val_steps=0",
        "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.timeout_min=10",
        "hydra.launcher.mem_gb=null",
        f"paths.data_dir={data_root}",
        f"hydra.sweep.dir={sweep}",
        *extra,
    ]


def sweep_job(sweep: Path, task: int) -> str:
    """The SLURM id of a sweep point's job, from submitit's folder for it (`<id>_<task>` for an array
    task, `<id>` for a sweep of one point): the queue may hold another test's jobs too (a pending
    array lists first, as ID_[0-1%2], which scontrol does not take)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        folder = sweep / ".submitit"
        names = [p.name for p in folder.iterdir() if p.is_dir()] if folder.is_dir() else []
        found = [n for n in names if n.endswith(f"_{task}")] or [n for n in names if n.isdigit() and task == 0]
        if found:
            return found[0]
        time.sleep(0.2)
    raise AssertionError(f"no submitit folder for task {task} under {sweep / '.submitit'}")


def ranks(job_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((job_dir / "ranks").glob("rank*.json"))]


def test_sweep_runs_ddp_jobs_on_slurm(data_root, tmp_path):
    sweep = tmp_path / "sweep"
    result = subprocess.run(
        slurm_cmd(data_root, sweep, "trainer.max_epochs=1", "model.optimizer.lr=1e-3,2e-3"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    for job in ("0", "1"):
        records = ranks(sweep / job)
        assert [r["global_rank"] for r in records] == [0, 1]  # both ranks wrote into the same run folder
        assert {r["world_size"] for r in records} == {2}
        assert {r["cluster_environment"] for r in records} == {"SLURMEnvironment"}
        assert len({r["slurm_job_id"] for r in records}) == 1 and {r["slurm_procid"] for r in records} == {"0", "1"}
        assert (sweep / job / "checkpoints" / "last.ckpt").exists()
    summary = json.loads((sweep / "summary.json").read_text())  # gathered by the launching process
    assert len(summary["jobs"]) == 2 and all("val/acc" in j["metrics"] for j in summary["jobs"])
    assert "sweep: 2 jobs finished" in result.stdout


def test_requeued_job_resumes_from_its_checkpoint(data_root, tmp_path):
    sweep = tmp_path / "sweep"
    steps = 60
    proc = subprocess.Popen(
        slurm_cmd(
            data_root,
            sweep,
            f"trainer.max_steps={steps}",
            "trainer.max_epochs=100",
            "data.batch_size=2",  # 8 steps an epoch: the cancel lands mid-epoch or at its end
            "callbacks.model_checkpoint.every_n_train_steps=2",
        ),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    last = sweep / "0" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert last.exists(), "the job wrote no checkpoint"
    with requeued_jobs_start_at_once():
        subprocess.run(["scontrol", "requeue", sweep_job(sweep, 0)], check=True, timeout=30)
        out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-4000:]
    record = ranks(sweep / "0")[0]
    assert record["slurm_restart_count"] >= 1
    assert record["resumed_from"] and record["resumed_from"].endswith("last.ckpt")
    assert record["global_step"] == steps


def test_a_fine_tuning_recipe_sweeps_its_folds_on_slurm(data_root, tmp_path):
    """experiment=esc50 as documented (its own trainer config, trainer=gpu, moved to the CPU), two
    folds as a SLURM array: both jobs test, and summary.json holds the mean over the folds."""
    sweep = tmp_path / "sweep"
    command = [
        sys.executable,
        "-m",
        "src.train",
        "-m",
        "hydra/launcher=slurm",
        "experiment=esc50",
        "data.fold=1,2",
        "trainer.accelerator=cpu",
        "trainer.precision=32-true",
        "trainer.max_epochs=1",
        "trainer.num_sanity_val_steps=0",
        *SMALL_RUN,
        "data.target_length=128",
        "logger=[]",
        "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.timeout_min=10",
        "hydra.launcher.mem_gb=null",
        f"paths.data_dir={data_root}",
        f"hydra.sweep.dir={sweep}",
    ]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    summary = json.loads((sweep / "summary.json").read_text())
    assert summary["metric"] == "test/acc" and summary["n"] == 2
    assert sorted(j["metrics"]["fold"] for j in summary["jobs"]) == [1, 2]
    records = [r for job in ("0", "1") for r in ranks(sweep / job)]
    assert len(records) == 2 and all(r["slurm_job_id"] for r in records)  # each fold ran as a SLURM job


def test_a_sweep_job_cancelled_mid_training_ends_the_sweep_with_a_summary_naming_it(data_root, tmp_path):
    """A plain scancel leaves no result: the launcher's wait ends (it used to poll forever on a
    cluster without accounting), the other job finishes, summary.json lists the cancelled one."""
    sweep = tmp_path / "sweep"
    proc = subprocess.Popen(
        slurm_cmd(
            data_root,
            sweep,
            "trainer.max_steps=400,16",  # job 0 runs until it is cancelled; job 1 finishes soon
            "trainer.max_epochs=100",
            "data.batch_size=2",  # 8 steps an epoch: the cancel lands mid-epoch or at its end
            "callbacks.model_checkpoint.every_n_train_steps=2",
        ),  # fmt: skip
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # training under way (a first last.ckpt): on a loaded machine a fixed wait after the run folder
    # appeared could cancel the job before its processes had set up their signal handlers
    last = sweep / "0" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None and not (sweep / "0" / "metrics.json").exists(), "job 0 ended before it was cancelled"
    subprocess.run(["scancel", sweep_job(sweep, 0)], check=True, timeout=30)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 1, err[-4000:]  # the sweep ends, saying one job failed
    summary = json.loads((sweep / "summary.json").read_text())
    by_job = {j["job"]: j for j in summary["jobs"]}
    assert "metrics" in by_job["1"] and "metrics" not in by_job["0"]
    assert "stopped at step" in by_job["0"]["error"] and "ckpt_path=last" in by_job["0"]["error"]  # scancel: TERM first


def test_a_warning_signal_during_validation_or_test_requeues_and_the_job_ends_whole(data_root, tmp_path):
    """USR2 to every task of a DDP job (as SLURM's warning) while it validates (job 0), or while it
    tests (job 1; one sweep, so that their requeue waits overlap): the validation runs to its end
    before last.ckpt, a test writes none; submitit requeues, and the requeued job ends with every
    phase finished at the full step count and the metrics of the runs before it."""
    sweep = tmp_path / "sweep"
    stop = [
        "+callbacks.stop._target_=tests.helpers.signals.SignalAt",
        # during test: before its first batch, so that every process takes the stop at that batch's end
        "+callbacks.stop.hook=on_validation_batch_end,on_test_batch_start",
        "+callbacks.stop.step=0",
        "+callbacks.stop.sig=USR2",
        "+callbacks.stop.slurm=true",
    ]
    steps = 12
    # a clip per process and batch, so that the test split gives each process more than one batch (a
    # signal after the last one leaves nothing to stop)
    command = slurm_cmd(
        data_root, sweep, f"trainer.max_steps={steps}", "trainer.max_epochs=100", "data.batch_size=2",
        "trainer.limit_val_batches=3", "trainer.limit_test_batches=3", "test=true", *stop,
    )  # fmt: skip
    with requeued_jobs_start_at_once():  # submitit's requeue
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    for job in ("0", "1"):
        summary = json.loads((sweep / job / "metrics.json").read_text())
        assert summary["global_step"] == steps
        assert summary["finished"] and summary["phases"] == {"fit": "finished", "test": "finished"}
        assert "val/acc" in summary and "test/acc" in summary
        assert "received SIGUSR2" in (sweep / job / "train.log").read_text()
    assert "stopping once this validation ends" in (sweep / "0" / "train.log").read_text()
    assert "running what is left: test" in (sweep / "1" / "train.log").read_text()  # training had ended


def test_a_term_signal_to_every_task_during_the_epochs_validation_stops_the_job_there(data_root, tmp_path):
    """TERM to every task of a DDP job while the epoch's validation runs (where the stop used to race:
    Lightning's SIGTERM handler broadcast from inside the handler while the other rank was in another
    collective, and the job hung until SLURM killed it): the validation ends, every process stops at
    once, last.ckpt and metrics.json are written, and the sweep's summary names the stop."""
    sweep = tmp_path / "sweep"
    stop = ["+callbacks.stop._target_=tests.helpers.signals.SignalAt", "+callbacks.stop.hook=on_validation_batch_end",
            "+callbacks.stop.step=0", "+callbacks.stop.sig=TERM", "+callbacks.stop.slurm=true"]  # fmt: skip
    command = slurm_cmd(data_root, sweep, "trainer.max_steps=40", "trainer.max_epochs=100", "data.batch_size=2", *stop)
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 1, result.stderr[-4000:]  # the sweep ends, saying its job stopped
    summary = json.loads((sweep / "0" / "metrics.json").read_text())
    assert summary["phases"]["fit"] == "stopped" and summary["global_step"] < 40
    assert (sweep / "0" / "checkpoints" / "last.ckpt").exists()
    log = (sweep / "0" / "train.log").read_text()
    assert "stopping once this validation ends (where every process agrees)" in log and "stopped by a signal" in log


def _queue_empties(timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout.split():
        assert time.monotonic() < deadline, "SLURM jobs still queued or running"
        time.sleep(1)


def test_a_store_built_by_a_slurm_array_with_a_failed_part_rerun_equals_the_local_build(tmp_path):
    """`build --slurm 3`: three array tasks and a merge after them. Part 1 builds its first shard,
    then fails on its second (a folder stands where that shard's .npy goes: the rename onto it
    fails); the merge after the array refuses and the store stays unreadable. With the folder gone,
    the same command submits part 1 alone, which keeps the shard it had built, then the merge: the
    store verifies and equals a local build of the same manifest, byte for byte."""
    from src.data.prepare import PREPARERS
    from src.data.prepare.common import finalize
    from src.data.shards import FeatureStore, build, verify
    from src.utils.errors import UserError
    from tests.helpers import layouts
    from tests.test_shards import store_files

    finalize(PREPARERS["speechcommands"](layouts.speech_commands(tmp_path / "sc"), task="ks2"), tmp_path / "prep")
    manifest = tmp_path / "prep" / "manifest.jsonl"
    settings = ["--manifest", str(manifest), "--target-length", "128", "--shard-size", "4", "--workers", "1"]
    build(manifest, tmp_path / "local", target_length=128, shard_size=4, workers=1)
    out = tmp_path / "cluster"
    (out / "shard_00002.npy").mkdir(parents=True)  # part 1 of 3 owns shards 1 and 2
    command = [sys.executable, "-m", "src.data.shards", "build", *settings, "--out", str(out), "--slurm", "3"]
    first = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120, check=True).stdout
    assert "submitted 3 of 3 parts" in first, first
    _queue_empties()
    logs = {job.name: "".join(p.read_text() for p in job.glob("*_log.*")) for job in (out / "slurm").iterdir()}
    array = first.split("SLURM array job ")[1].split()[0]
    assert "IsADirectoryError" in logs[f"{array}_1"] and (out / "shard_00001.json").exists()
    assert "shards are not built (first: shard_00002)" in "".join(logs.values())  # the merge refused
    with pytest.raises(UserError, match="the build did not finish"):
        FeatureStore(out)
    (out / "shard_00002.npy").rmdir()
    again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120, check=True).stdout
    assert "submitted 1 of 3 parts" in again, again
    _queue_empties()
    rerun_job = again.split("SLURM array job ")[1].split()[0]  # its one task is part 1
    rerun = "".join(p.read_text() for p in (out / "slurm").glob(f"{rerun_job}*/*_log.*"))
    assert "resuming: 1 of 2 shards already built" in rerun  # the rerun part kept the shard it had built
    assert verify(out) == []
    local, cluster = store_files(tmp_path / "local"), store_files(out)
    assert sorted(local) == sorted(cluster) and [n for n in local if local[n] != cluster[n]] == []
