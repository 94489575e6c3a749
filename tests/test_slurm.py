"""Hydra multirun through a real one-node SLURM cluster (tests/slurm/cluster.sh; .ci/run starts it).

Skipped, with the reason, where no cluster answers."""

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.hydra_cfg import SMALL_RUN

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slurm


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
def _needs_cluster():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    if not _cluster_idle():
        pytest.skip("no SLURM test cluster: start it with `tests/slurm/cluster.sh start` (.ci/run does)")


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
            "callbacks.model_checkpoint.every_n_train_steps=5",
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
    job_id = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout.split()[0]
    subprocess.run(["scontrol", "requeue", job_id], check=True, timeout=30)
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
