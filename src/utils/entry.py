"""What src/train.py and src/eval.py share around the Lightning calls."""

from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path

import lightning as L
from lightning_utilities.core.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict

from src.utils.devices import per_device_batch
from src.utils.errors import MissingInput, UserError
from src.utils.io import exclusive_lock, folder_busy, remove_partial_writes, write_json
from src.utils.pylogger import RankedLogger

log = RankedLogger(__name__)


def launching_process() -> bool:
    """True in the process that started the run: not in the ranks Lightning's ddp or srun start."""
    return all(os.environ.get(name, "0") == "0" for name in ("SLURM_PROCID", "LOCAL_RANK", "RANK"))


@contextmanager
def run_folder(cfg: DictConfig):
    """Hold the run folder for this training (<run>/.lock: a second training into it is refused) and
    clear the temp files that killed checkpoint writes left in it."""
    if not launching_process():
        yield
        return
    out = Path(cfg.paths.output_dir)
    busy = (
        f"{out} is in use by another training; give this one its own folder (the default hydra.run.dir), "
        "or wait for the other to end before resuming in it"
    )
    with exclusive_lock(out / ".lock", busy):
        for leftover in remove_partial_writes(Path(cfg.paths.output_dir) / "checkpoints"):
            log.info(f"removed {leftover.name}, left by a checkpoint write that was killed")
        yield


def check_fresh_start(cfg: DictConfig, out: Path | None = None) -> None:
    """Before anything is written into the run folder (`out`, default cfg.paths.output_dir): a folder
    that holds a run's checkpoints is resumed (ckpt_path=last, or a SLURM requeue), never started
    over, and a folder another training holds is not touched. Each a UserError naming the way out."""
    out = Path(out or cfg.paths.output_dir)
    if not launching_process() or not out.is_dir():
        return
    if folder_busy(out / ".lock"):
        raise UserError(
            f"{out} is in use by another training; give this one its own folder (the default hydra.run.dir), "
            "or wait for the other to end before resuming in it"
        )
    requeued = int(os.environ.get("SLURM_RESTART_COUNT", "0")) > 0
    checkpoints = sorted((out / "checkpoints").glob("*.ckpt"))
    if checkpoints and cfg.get("ckpt_path") is None and not requeued:
        raise UserError(
            f"{out} holds the checkpoints of an earlier run ({', '.join(p.name for p in checkpoints[:3])}): resume "
            f"it with ckpt_path=last, or leave out hydra.run.dir to start a new run in a new folder"
        )


# trainer settings that are fractions or counts: numbers
NUMBERS = ("limit_train_batches", "limit_val_batches", "limit_test_batches", "val_check_interval", "gradient_clip_val")
# the counts, whole numbers, and the least each may be (-1: "no limit" to Lightning)
AT_LEAST = {
    "trainer.max_epochs": -1,
    "trainer.max_steps": -1,
    "trainer.min_epochs": 0,
    "trainer.min_steps": 0,
    "trainer.check_val_every_n_epoch": 1,
    "trainer.log_every_n_steps": 1,
    "trainer.accumulate_grad_batches": 1,
    "trainer.num_sanity_val_steps": -1,
    "trainer.num_nodes": 1,
    "data.batch_size": 1,
    "data.num_workers": 0,
}


def check_settings(cfg: DictConfig) -> None:
    """Before anything is built or launched: counts that are whole numbers in range, fractions that
    are numbers, devices that exist, and no setting a module does not take (+model.foo=1): each a
    UserError naming the setting, not a traceback from deep inside Lightning or Hydra."""
    for key in NUMBERS:
        value = cfg.trainer.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise UserError(f"trainer.{key}={value!r} is not a number")
    for key, least in AT_LEAST.items():
        value = OmegaConf.select(cfg, key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{key}={value!r} is not a whole number")
        if value < least:
            raise UserError(f"{key}={value} is below {least}" + (" (-1: no limit)" if least == -1 else ""))
    devices = cfg.trainer.get("devices")
    if isinstance(devices, bool) or (isinstance(devices, int) and devices < 1 and devices != -1):
        raise UserError(f"trainer.devices={devices!r}: use a count of at least 1, a list of device ids, or auto")
    check_accelerator(cfg)
    for group in ("model", "data"):
        _check_arguments(cfg, group)


def resolve_metric(cfg: DictConfig, model, datamodule) -> str | None:
    """optimized_metric (what the best checkpoint, early stopping and sweeps follow): `auto` becomes
    the module's own for this data (val/mAP on multi-label data, else val/acc); a metric validation
    does not log is refused here, before training, not after the first epoch. Returns it."""
    logged = model.validation_metrics(datamodule)
    metric = cfg.get("optimized_metric")
    if metric == "auto":
        metric = logged[0]
        with open_dict(cfg):
            cfg.optimized_metric = metric
    elif metric is not None and metric not in logged and not metric.startswith("train/"):
        raise UserError(
            f"optimized_metric={metric}: validation here logs {', '.join(logged)}; "
            f"set optimized_metric=auto ({logged[0]}) or one of those"
        )
    return metric


def check_accelerator(cfg: DictConfig) -> None:
    """A GPU recipe (trainer=gpu, ddp, ddp_bf16) on a machine without a CUDA GPU: one line naming the
    trainers that run here, not Lightning's "No supported gpu backend found!" traceback."""
    import torch

    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise UserError(
            f"trainer.accelerator={accelerator} (this recipe's trainer is for GPUs) but this machine has no CUDA "
            "GPU; add trainer=default (a GPU where there is one, else the CPU) or trainer=cpu, and for a quick "
            "run on the CPU debug=smoke"
        )


def _check_arguments(cfg: DictConfig, group: str) -> None:
    """Every key of cfg.<group> is an argument of its _target_ (a typo or +model.foo=1 is named)."""
    import inspect

    from hydra.utils import get_class

    node = cfg.get(group)
    if node is None or "_target_" not in node:
        return
    try:
        parameters = inspect.signature(get_class(node._target_)).parameters
    except (ImportError, ValueError, TypeError):
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    unknown = sorted(k for k in node if not k.startswith("_") and k not in parameters)
    if unknown:
        known = sorted(k for k in parameters if k != "self")
        raise UserError(
            f"{group}.{unknown[0]} is not a setting of {node._target_.rsplit('.', 1)[-1]}; "
            f"its settings: {', '.join(known)}"
        )


def processes_per_node(cfg: DictConfig) -> int:
    """Training processes on this machine: one per device when trainer.devices is a count."""
    devices = cfg.trainer.get("devices")
    return devices if isinstance(devices, int) and not isinstance(devices, bool) and devices > 0 else 1


def trainer_strategy(cfg: DictConfig):
    """trainer.strategy, except that ddp in one process is the single-device strategy: DDP's wrapper
    over one process only adds work (its gradient buckets' copies, the division by a world of one;
    SSAMBA-tiny's pretraining step 100.4 ms with it, 96.8 ms without, on an H100)."""
    chosen, devices = cfg.trainer.get("strategy", "auto"), cfg.trainer.get("devices")
    count = len(devices) if isinstance(devices, (list, tuple)) or OmegaConf.is_list(devices) else devices
    if chosen == "ddp" and count == 1 and cfg.trainer.get("num_nodes", 1) == 1:
        log.info("trainer.strategy=ddp on one device: the single-device strategy (no DDP wrapper)")
        return "auto"
    return chosen


def check_devices(cfg: DictConfig, trainer: L.Trainer) -> None:
    """Before any process is launched: the global batch must split across the devices."""
    if cfg.data.get("batch_size"):
        per_device_batch(cfg.data.batch_size, trainer.world_size)


def device_name(trainer: L.Trainer) -> str:
    """What the training runs on, in words: "cuda:0 (NVIDIA H200)" or "cpu"."""
    device = trainer.strategy.root_device
    if device.type == "cuda":
        import torch

        return f"{device} ({torch.cuda.get_device_name(device)})" + (
            f" x {trainer.world_size}" if trainer.world_size > 1 else ""
        )
    return str(device) + (f" x {trainer.world_size} processes" if trainer.world_size > 1 else "")


def existing_checkpoint(path) -> str:
    """path, once it is known to be a checkpoint that loads safely (weights_only, memory-mapped, so
    cheap): anything else is one line before a run folder fills, not torch's traceback."""
    if not path or not Path(str(path)).is_file():
        raise MissingInput(f"ckpt_path={path}: no such checkpoint; pass the path of a .ckpt file")
    from src.models.pretrained import read_checkpoint

    read_checkpoint(path, mmap=True)
    return str(path)


def resume_path(cfg: DictConfig, trainer: L.Trainer) -> str | None:
    """ckpt_path as given; "last" resumes from this run folder's last.ckpt, and without one names the
    run folders that have one; a SLURM requeue resumes from it if it exists, else starts over."""
    if OmegaConf.is_missing(cfg, "ckpt_path"):
        raise UserError("ckpt_path=??? is not a checkpoint; pass a .ckpt path, ckpt_path=last, or leave it out")
    path = cfg.get("ckpt_path")
    requeued = int(os.environ.get("SLURM_RESTART_COUNT", "0")) > 0
    if path == "last" or (path is None and requeued):
        last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
        if last.exists():
            log.info(f"resuming from {last}")
            return str(last)
        if path is None:  # requeued before its first checkpoint
            log.info("no last.ckpt yet: starting from scratch")
            return None
        runs = sorted(
            Path(cfg.paths.log_dir).glob(f"{cfg.task_name}/runs/*/checkpoints/last.ckpt"),
            key=lambda p: p.stat().st_mtime,
            reverse=True,
        )
        where = "; ".join(f"hydra.run.dir={p.parent.parent}" for p in runs[:3])
        raise UserError(
            f"ckpt_path=last found no {last}: it resumes in the run folder of the run that stopped, so pass that "
            "folder too: " + (where or f"no run under {Path(cfg.paths.log_dir) / cfg.task_name / 'runs'} has one")
        )
    return existing_checkpoint(path) if path else None


def check_data(cfg: DictConfig, ckpt_path: str | None, datamodule, resuming: bool) -> None:
    """The data a checkpoint was trained on (its "data" record) against this run's datamodule: the
    class names in order and the normalisation must be the same, and to resume a training the
    training data too (the fingerprint). Each mismatch a UserError naming both sides and the fix;
    data_check=false accepts them. A checkpoint that records nothing (older ones) passes."""
    if not ckpt_path or not cfg.get("data_check", True):
        return
    from src.models.pretrained import read_checkpoint

    saved = read_checkpoint(ckpt_path, mmap=True).get("data") or {}
    accept = "or data_check=false to accept it"
    if "mean" in saved and hasattr(datamodule, "mean"):
        ours = (float(datamodule.mean), float(datamodule.std))
        if not all(abs(a - b) <= 1e-6 * max(1.0, abs(b)) for a, b in zip(ours, (saved["mean"], saved["std"]))):
            raise UserError(
                f"ckpt_path={ckpt_path} was trained on data normalised with mean {saved['mean']:.6g}, std "
                f"{saved['std']:.6g}, but this run has data.mean={ours[0]:.6g} data.std={ours[1]:.6g}; pass "
                f"data.mean={saved['mean']:.6g} data.std={saved['std']:.6g}, {accept}"
            )
    if "classes" in saved and hasattr(datamodule, "classes") and list(saved["classes"]) != list(datamodule.classes):
        ours = list(datamodule.classes)
        first = next(
            (i for i, (a, b) in enumerate(zip(saved["classes"], ours)) if a != b), min(len(ours), len(saved["classes"]))
        )
        raise UserError(
            f"ckpt_path={ckpt_path} was trained on {len(saved['classes'])} classes and this run's data has "
            f"{len(ours)} (first difference at output {first}: {saved['classes'][first : first + 1]} vs "
            f"{ours[first : first + 1]}); evaluate on the data it was trained on (its classes.json), {accept}"
        )
    if resuming and saved.get("fingerprint") and hasattr(datamodule, "fingerprint"):
        if saved["fingerprint"] != datamodule.fingerprint():
            raise UserError(
                f"ckpt_path={ckpt_path} was trained on other data (fingerprint {saved['fingerprint']}, this "
                f"run's {datamodule.fingerprint()}: the stores or manifests were rebuilt or changed); resume on "
                f"the data it was trained on, {accept}"
            )


def finished_run(cfg: DictConfig, ckpt_path: str | None) -> dict | None:
    """The summary (metrics.json) of this run folder when ckpt_path=last would resume a training that
    ended with the same length (max_epochs, max_steps): there is no training left to do, at most a
    phase after it that was stopped (phases_left). None otherwise."""
    summary_path = Path(cfg.paths.output_dir) / "metrics.json"
    if not ckpt_path or not summary_path.exists() or Path(ckpt_path).name != "last.ckpt":
        return None
    try:
        summary = json.loads(summary_path.read_text())
    except ValueError:
        return None
    length = {k: cfg.trainer.get(k) for k in ("max_epochs", "max_steps")}
    phases = summary.get("phases") or {"fit": "finished" if summary.get("finished") else "stopped"}
    if phases.get("fit") == "finished" and all(summary.get(k) == v for k, v in length.items()):
        return summary
    return None


def phases_left(cfg: DictConfig, summary: dict) -> list[str]:
    """The phases cfg asks for after training that a finished training's summary has not finished."""
    phases = summary.get("phases") or {}
    return [
        p
        for p in ("test",)
        if cfg.get(p) and phases.get(p, "finished" if summary.get("finished") else None) != "finished"
    ]


@contextmanager
def phase(cfg: DictConfig, trainer: L.Trainer, phases: dict, name: str, metrics: dict | None = None):
    """Record in `phases` whether the Lightning call inside finished or was stopped; a stop (a signal:
    SIGTERMException) is written to metrics.json before it propagates, so the summary never says
    finished for a run that was not."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    try:
        yield
    except SIGTERMException:
        phases[name] = "stopped"
        so_far = {k: float(v) for k, v in trainer.callback_metrics.items()}  # what a resume may not log again
        write_run_summary(cfg, trainer, {**so_far, **(metrics or {})}, phases, quiet=True)
        from src.utils.callbacks import CheckpointOnSignal

        for callback in trainer.callbacks:  # submitit's requeue, which ends the process, comes last
            if isinstance(callback, CheckpointOnSignal):
                callback.requeue()
        raise
    finished = trainer.state.status == "finished" and not trainer.interrupted
    phases[name] = "finished" if finished else "stopped"


def best_checkpoint(trainer: L.Trainer) -> str | None:
    """The best checkpoint by the monitored metric (the model_checkpoint callback's), if any."""
    return next((c.best_model_path for c in trainer.checkpoint_callbacks if getattr(c, "best_model_path", None)), None)


def nonfinite_losses(trainer: L.Trainer) -> list[dict]:
    """The NaN or infinite validation and test losses of this run (NonFiniteEvalLoss's record)."""
    from src.utils.callbacks import NonFiniteEvalLoss

    return [e for c in trainer.callbacks if isinstance(c, NonFiniteEvalLoss) for e in c.events]


def last_checkpoint(trainer: L.Trainer) -> str | None:
    """The last.ckpt of the run's LastCheckpoint callback, once it has been written."""
    from src.utils.callbacks import LastCheckpoint

    paths = [c.path for c in trainer.callbacks if isinstance(c, LastCheckpoint)]
    return next((str(p) for p in paths if p.exists()), None)


@rank_zero_only
def write_run_summary(
    cfg: DictConfig, trainer: L.Trainer, metrics: dict, phases: dict | None = None, quiet: bool = False
) -> dict:
    """<output>/metrics.json: final metrics, each phase's outcome (phases: {"fit": "finished" or
    "stopped", "test": ...}; `finished` only when every phase the config asks for finished; without
    phases, whether the trainer's last call finished), and where the checkpoints and logs are.
    Returns what the file holds now (a resumed run's metrics with those of the runs before it);
    None on the processes other than rank 0. quiet: write it without printing where things are (a
    record between phases)."""
    if phases is None:
        finished = trainer.state.status == "finished" and not trainer.interrupted
    else:
        asked = [p for p, wanted in (("fit", cfg.get("train")), ("test", cfg.get("test"))) if wanted]
        finished = all(phases.get(p) == "finished" for p in asked)
    summary = {
        **metrics,
        "finished": finished,
        **({"phases": dict(phases)} if phases is not None else {}),
        "max_epochs": cfg.trainer.get("max_epochs"),
        "max_steps": cfg.trainer.get("max_steps"),
        "optimized_metric": cfg.get("optimized_metric"),
        "fold": cfg.data.get("fold"),
        "device": device_name(trainer),
        "precision": str(trainer.precision),
        "global_step": trainer.global_step,
        "best_checkpoint": best_checkpoint(trainer),
        "last_checkpoint": last_checkpoint(trainer),
        "nonfinite_losses": nonfinite_losses(trainer),
        "tensorboard": next((lg.log_dir for lg in trainer.loggers if hasattr(lg, "log_dir")), None),
        "output_dir": cfg.paths.output_dir,
    }
    path = Path(cfg.paths.output_dir) / "metrics.json"
    # a resumed run keeps what the file held before: a metric it did not compute again stays, and a
    # run that only tested (after a stop during test) keeps the training's step and checkpoints
    untrained = {"global_step": 0, "best_checkpoint": None, "last_checkpoint": None, "tensorboard": None}
    summary = {k: v for k, v in summary.items() if k not in untrained or v != untrained[k]}
    try:
        before = json.loads(path.read_text()) if path.exists() else {}
    except ValueError:
        before = {}
    # the non-finite losses of every process that worked in this folder, resumed ones included
    summary["nonfinite_losses"] = before.get("nonfinite_losses", []) + summary["nonfinite_losses"]
    summary = {**untrained, **before, **summary}
    write_json(path, summary)
    if quiet:
        return summary
    curves = _plot_curves(cfg) if summary["tensorboard"] else None
    export = Path(cfg.paths.output_dir) / "encoder"
    lines = [f"run folder:       {cfg.paths.output_dir}"]
    lines += [f"best checkpoint:  {summary['best_checkpoint']}"] if summary["best_checkpoint"] else []
    lines += [f"last checkpoint:  {summary['last_checkpoint']}"] if summary["last_checkpoint"] else []
    lines += [f"encoder export:   {export}"] if (export / "config.json").exists() else []
    tensorboard = Path(sys.executable).parent / "tensorboard"  # the venv's, which works without activating it
    lines += [f"tensorboard:      {tensorboard} --logdir {summary['tensorboard']}"] if summary["tensorboard"] else []
    lines += [f"curves:           {curves}"] if curves else []
    lines += [f"{k}: {v:.4f}" for k, v in sorted(metrics.items()) if k.startswith("test/")]
    print("\n".join(lines))
    return summary


def _plot_curves(cfg: DictConfig) -> Path | None:
    """<run>/curves.png from the run's TensorBoard log; a plotting failure is a warning, not a failed run."""
    try:
        from src.utils.curves import plot_run  # matplotlib and tensorboard, only now

        return plot_run(Path(cfg.paths.output_dir), cfg.get("optimized_metric"))
    except Exception as e:  # the run itself succeeded
        log.warning(f"could not draw the training curves: {e}")
        return None


def write_rank_record(cfg: DictConfig, trainer: L.Trainer, ckpt_path: str | None) -> None:
    """<output>/ranks/rank<N>.json from every rank: who ran, in which environment, resumed from what."""
    record = {
        "global_rank": trainer.global_rank,
        "world_size": trainer.world_size,
        "cluster_environment": type(trainer.strategy.cluster_environment).__name__
        if getattr(trainer.strategy, "cluster_environment", None) is not None
        else None,
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "slurm_procid": os.environ.get("SLURM_PROCID"),
        "slurm_restart_count": int(os.environ.get("SLURM_RESTART_COUNT", "0")),
        "resumed_from": ckpt_path,
        "global_step": trainer.global_step,
    }
    write_json(Path(cfg.paths.output_dir) / "ranks" / f"rank{trainer.global_rank}.json", record)
