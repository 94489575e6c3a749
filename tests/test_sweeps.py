"""Hydra multiruns: sweeps that really run (basic and local submitit launchers), and the SLURM launcher's sbatch script
checked against a fake `sbatch` on PATH."""

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.hydra_cfg import SMALL_RUN

ROOT = Path(__file__).resolve().parents[1]
SMALL = [
    *SMALL_RUN,
    "logger=[]",
]

pytest.importorskip("hydra_plugins.hydra_submitit_launcher")


def run(args, tmp_path, env=None, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", "src.train", "-m", *args, *SMALL],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


# keeps the script and refuses the job: the launcher fails at once, where a job that "ran" and left
# no result would keep submitit waiting 15 s a task for its result file
FAKE_SBATCH = """#!/bin/sh
for last; do true; done
cp "$last" "$FAKE_SLURM_DIR/job.sh"
echo "$@" > "$FAKE_SLURM_DIR/sbatch_args"
echo "sbatch: error: a fake cluster: nothing runs here" >&2
exit 1
"""


def _fake_slurm(tmp_path) -> dict:
    """sbatch, sacct, scancel and srun stand-ins on PATH: the script sbatch is given lands in tmp_path."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    noop = "#!/bin/sh\nexit 0\n"  # submitit checks that srun exists; the fake cluster never runs it
    for name, text in [("sbatch", FAKE_SBATCH), ("sacct", noop), ("scancel", noop), ("srun", noop)]:
        path = bin_dir / name
        path.write_text(text)
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_SLURM_DIR": str(tmp_path)}


def test_slurm_launcher_writes_the_expected_sbatch_script(data_root, tmp_path):
    env = _fake_slurm(tmp_path)
    result = run(
        [
            "hydra/launcher=slurm",
            "experiment=ks2_demo",
            "trainer=ddp",
            "trainer.devices=4",
            "hydra.launcher.timeout_min=90",
            "hydra.launcher.partition=gpu",
            f"paths.data_dir={data_root}",
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
            "model.optimizer.lr=1e-3,2e-3",
        ],
        tmp_path,
        env=env,
        timeout=180,
    )
    script = (tmp_path / "job.sh").read_text()  # the fake cluster refuses the jobs; the script is what counts
    assert "#SBATCH --nodes=1" in script
    assert "#SBATCH --ntasks-per-node=4" in script  # one task per device
    assert "#SBATCH --gpus-per-node=4" in script
    assert "#SBATCH --time=90" in script
    assert "#SBATCH --partition=gpu" in script
    assert "#SBATCH --signal=USR2@120" in script  # pre-emption warning for requeue
    assert "#SBATCH --array=0-1" in script  # both sweep points
    assert "srun" in script and "submitit" in script
    assert result.returncode != 0 and "a fake cluster" in result.stderr  # nothing really ran


def test_a_fine_tuning_recipe_on_several_nodes_asks_slurm_for_them(data_root, tmp_path):
    """experiment=esc50 (trainer=gpu, as every fine-tuning recipe) with trainer.num_nodes=2."""
    env = _fake_slurm(tmp_path)
    result = run(
        [
            "hydra/launcher=slurm",
            "experiment=esc50",
            "trainer.num_nodes=2",
            "data.fold=1,2",
            f"paths.data_dir={data_root}",
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
        ],
        tmp_path,
        env=env,
        timeout=180,
    )
    script = (tmp_path / "job.sh").read_text()
    assert "#SBATCH --nodes=2" in script and "#SBATCH --ntasks-per-node=1" in script
    assert "#SBATCH --gpus-per-node=1" in script and "#SBATCH --array=0-1" in script
    assert result.returncode != 0 and "a fake cluster" in result.stderr  # nothing really ran


def test_the_slurm_launcher_composes_with_every_experiment_and_trainer():
    """Every field the launcher reads exists whatever the experiment and the trainer."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    import src.train  # noqa: F401  (registers the gpus_for resolver the launcher uses)

    experiments = sorted(p.stem for p in (ROOT / "configs" / "experiment").glob("*.yaml"))
    trainers = [None] + sorted(p.stem for p in (ROOT / "configs" / "trainer").glob("*.yaml"))
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "configs")):
        for experiment in experiments:
            for trainer in trainers:
                overrides = ["hydra/launcher=slurm", f"experiment={experiment}", "trainer.num_nodes=3"]
                overrides += [f"trainer={trainer}"] if trainer else []
                cfg = compose("train.yaml", overrides=overrides, return_hydra_config=True)
                launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
                assert launcher["nodes"] == 3, (experiment, trainer)
                assert launcher["tasks_per_node"] == cfg.trainer.devices
                gpus = 0 if cfg.trainer.accelerator in ("cpu", "auto") else cfg.trainer.devices
                assert launcher["gpus_per_node"] == gpus, (experiment, trainer)


@pytest.mark.parametrize("launcher", ["basic", pytest.param("local", marks=pytest.mark.slow)])
def test_a_failing_job_does_not_stop_the_sweep_and_is_in_the_summary(data_root, tmp_path, launcher):
    """Three points, the middle one fails mid-run (a negative learning rate, refused when the
    optimizer is made): the jobs after it run (local: each as a submitit job), summary.json lists
    its error, the exit code is 1."""
    sweep = tmp_path / "sweep"
    result = run(
        [
            *([] if launcher == "basic" else ["hydra/launcher=local"]),
            "experiment=ks2_demo",
            f"paths.data_dir={data_root}",
            f"hydra.sweep.dir={sweep}",
            "model.optimizer.lr=1e-3,-1,2e-3",
            "+trainer.fast_dev_run=true",
        ],
        tmp_path,
    )
    assert result.returncode == 1, result.stderr[-3000:]
    summary = json.loads((sweep / "summary.json").read_text())
    jobs = {j["job"]: j for j in summary["jobs"]}
    assert set(jobs) == {"0", "1", "2"} and summary["failed"] == ["1"]
    assert "set model.optimizer.lr to a positive value" in jobs["1"]["error"]
    assert "test/acc" in jobs["0"]["metrics"] and "test/acc" in jobs["2"]["metrics"]  # the job after it ran
    assert all("test/acc" in json.loads((sweep / k / "metrics.json").read_text()) for k in ("0", "2"))
    assert (sweep / ".submitit").is_dir() == (launcher == "local")
    assert (
        "sweep: 2 jobs finished, 1 failed" in result.stdout and "job 1 (model.optimizer.lr=-1) failed" in result.stdout
    )


@pytest.mark.parametrize(
    "timeout_min,signal_delay_s,refused",
    [(1, 30, True), (2, 120, True), (5, 120, False), (240, 120, False)],
)
def test_a_slurm_time_limit_the_warning_signal_would_beat_is_refused_before_submitting(
    timeout_min, signal_delay_s, refused, tmp_path
):
    from src.utils.errors import UserError
    from src.utils.hydra_callbacks import check_slurm_timing

    if not refused:
        check_slurm_timing(timeout_min, signal_delay_s)
        return
    with pytest.raises(UserError, match=f"timeout_min={timeout_min} with signal_delay_s={signal_delay_s}"):
        check_slurm_timing(timeout_min, signal_delay_s)
    if timeout_min == 1:  # through the command: one line, exit 2, no sbatch called (none is on PATH here)
        sweep = tmp_path / "sweep"
        args = ["hydra/launcher=slurm", f"hydra.sweep.dir={sweep}", "hydra.launcher.timeout_min=1"]
        result = run([*args, "hydra.launcher.signal_delay_s=30", "seed=1,2"], tmp_path, env={"PATH": os.defpath})
        assert result.returncode == 2, result.stderr[-2000:]
        assert "raise timeout_min to at least 3" in result.stderr and "Traceback" not in result.stderr
        assert not sweep.exists() or not any(sweep.iterdir())


@pytest.mark.parametrize(
    "left,delay,timed_out", [("1:50", "120", True), ("7:30", "120", False), ("2-00:00:00", "", False)]
)
def test_a_warning_with_more_time_left_than_its_delay_is_a_preemption(left, delay, timed_out, tmp_path, monkeypatch):
    """submitit counts every USR2 as a timeout when timeout_min <= 10; the project asks SLURM's time
    left (a fake squeue here) against the delay the launcher exports."""
    from src.utils.callbacks import _slurm_duration_s, slurm_timed_out

    squeue = tmp_path / "squeue"
    squeue.write_text(f"#!/bin/sh\necho {left}\n")
    squeue.chmod(squeue.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.setenv("SSAMBA_SIGNAL_DELAY_S", delay or "120")
    assert slurm_timed_out() is timed_out
    assert _slurm_duration_s("UNLIMITED") is None and _slurm_duration_s("1-02:03:04") == 93784
    monkeypatch.delenv("SLURM_JOB_ID")
    assert slurm_timed_out() is None  # not a SLURM job: submitit's own rule stays


def test_the_slurm_settings_file_is_read_by_the_slurm_launcher_only(data_root, tmp_path):
    """configs/local/slurm.yaml, the example copied as docs/slurm.md says, sets the
    SLURM launcher's partition and limit (the command line still wins); a local run of `make
    pretrain`'s recipe with it and a machine's configs/local/default.yaml in place runs."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    import src.train  # noqa: F401  (the resolvers the configs use)

    copy = tmp_path / "repo"
    for part in ("src", "configs"):
        shutil.copytree(ROOT / part, copy / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / ".project-root", copy / ".project-root")
    shutil.copy(copy / "configs" / "local" / "slurm.yaml.example", copy / "configs" / "local" / "slurm.yaml")
    (copy / "configs" / "local" / "default.yaml").write_text(f"# @package _global_\npaths:\n  data_dir: {data_root}\n")
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(copy / "configs")):
        slurm = compose("train.yaml", overrides=["hydra/launcher=slurm"], return_hydra_config=True)
        launcher = OmegaConf.to_container(slurm.hydra.launcher, resolve=True)
        assert (launcher["partition"], launcher["timeout_min"]) == ("gpu", 2880)
        assert launcher["setup"][0] == "export SSAMBA_SIGNAL_DELAY_S=120"
        override = ["hydra/launcher=slurm", "hydra.launcher.partition=debug"]
        assert compose("train.yaml", overrides=override, return_hydra_config=True).hydra.launcher.partition == "debug"
        local = compose("train.yaml", overrides=[], return_hydra_config=True)
        assert "partition" not in local.hydra.launcher
    command = [sys.executable, "-m", "src.train", "experiment=pretrain_demo", "debug=smoke", "logger=[]"]
    command += [f"hydra.run.dir={tmp_path / 'run'}"]
    result = subprocess.run(command, cwd=copy, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["finished"]
