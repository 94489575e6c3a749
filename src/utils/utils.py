"""Template utilities: extras before a run, the task wrapper, the optimised metric."""

from __future__ import annotations

import logging
import shutil
import sys
import warnings
from functools import wraps
from pathlib import Path

from hydra.errors import InstantiationException
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning_utilities.core.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from src.utils.errors import UserError, report, traceback_wanted
from src.utils.pylogger import RankedLogger

log = RankedLogger(__name__)


def extras(cfg: DictConfig) -> None:
    """Optional conveniences: silence warnings, require tags in multiruns. The config is printed by
    the entry points once their checks have passed (print_config), so an error is not buried under it."""
    options = cfg.get("extras") or {}
    if options.get("ignore_warnings"):
        warnings.filterwarnings("ignore")
    if options.get("enforce_tags") and not cfg.get("tags"):
        raise UserError("set tags=[...] before launching (every experiment config sets them)")


@rank_zero_only
def lower_is_better(metric: str | None) -> bool:
    """A loss is minimised; accuracy, mAP and the like are maximised."""
    return bool(metric) and "loss" in metric.rsplit("/", 1)[-1]


def print_config(cfg: DictConfig) -> None:
    if not (cfg.get("extras") or {}).get("print_config"):
        return
    shown = {k: cfg[k] for k in ("data", "encoder", "model", "trainer", "callbacks", "logger", "paths") if k in cfg}
    # a group set to null (debug presets: callbacks: null) is shown as null
    plain = {k: None if v is None else OmegaConf.to_container(v, resolve=True) for k, v in shown.items()}
    text = OmegaConf.to_yaml(OmegaConf.create(plain))
    log.info("config:\n" + text)


def _user_cause(e: BaseException) -> UserError | None:
    """The user error behind e (Hydra wraps errors raised while instantiating a config), or None."""
    while e is not None and not isinstance(e, UserError):
        e = e.__cause__
    return e


# what a run that stopped on its checks has written: Hydra's record, its log, the folder lock
NOTHING_YET = {".hydra", ".lock", "train.log", "eval.log", "pretrain.log"}


def remove_unused_run_folder(cfg: DictConfig) -> None:
    """A run that stopped on its checks leaves no run folder behind: remove the output folder when
    it holds nothing but what every start writes (never a folder with checkpoints or results)."""
    out = cfg.get("paths", {}).get("output_dir")
    if not out or not Path(out).is_dir():
        return
    entries = list(Path(out).iterdir())
    if {p.name for p in entries} <= NOTHING_YET | {f"{cfg.get('task_name')}.log"}:
        logging.shutdown()  # the log file is closed before it is removed
        for p in entries:  # only what the run wrote; the folder goes only if that leaves it empty
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
        Path(out).rmdir()


def user_errors_exit(func):
    """For the @hydra.main function: a user error prints one line to stderr and exits with 2
    (SSAMBA_TRACEBACK=1 shows the traceback instead)."""

    @wraps(func)
    def wrap(cfg: DictConfig):
        try:
            return func(cfg)
        except (UserError, InstantiationException) as e:
            cause = _user_cause(e)
            if _in_sweep():  # the sweep goes on to its next job; summary.json lists this one's error
                return _record_failure(cfg, cause or e)
            if cause is None or traceback_wanted():
                raise
            remove_unused_run_folder(cfg)
            sys.exit(report(cause))
        except Exception as e:  # a bug, not the user's: its traceback, and in a sweep the next job runs
            if _in_sweep():
                log.exception("job failed")
                return _record_failure(cfg, e)
            raise
        except SIGTERMException:  # stopped by a signal / pre-emption after saving last.ckpt
            print(f"stopped by a signal; resume with: {resume_command(cfg)}", file=sys.stderr)
            sys.exit(143)

    return wrap


def resume_command(cfg: DictConfig) -> str:
    """The command that resumes this run in its folder: the run's own overrides (a sweep job's
    included, as a single run), ckpt_path=last and hydra.run.dir; hydra.output_subdir=null keeps the
    run's .hydra/ record (which a sweep's summary reads) as the first start wrote it."""
    import shlex

    from hydra.core.hydra_config import HydraConfig

    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    own = ("ckpt_path=", "hydra.run.dir=", "hydra/launcher=", "hydra.output_subdir=")
    kept = [o for o in overrides if not o.lstrip("+~").startswith(own)]
    module = "src.eval" if cfg.get("task_name") == "eval" else "src.train"
    args = [*kept, "ckpt_path=last", f"hydra.run.dir={cfg.paths.output_dir}", "hydra.output_subdir=null"]
    return f"python -m {module} " + " ".join(shlex.quote(a) for a in args)


def _in_sweep() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _record_failure(cfg: DictConfig, error: BaseException) -> None:
    """<job folder>/failed.json: the error that ended a sweep's job (SweepSummary reads it)."""
    from src.utils.io import write_json

    message = str(error).splitlines()[0] if str(error) else ""
    print(f"error: {message or type(error).__name__} (this job failed; the sweep goes on)", file=sys.stderr)
    write_json(Path(cfg.paths.output_dir) / "failed.json", {"error": message, "type": type(error).__name__})


def task_wrapper(task_func):
    """Log the output folder whatever happens; re-raise failures after logging them."""

    @wraps(task_func)
    def wrap(cfg: DictConfig):
        try:
            return task_func(cfg=cfg)
        except (UserError, InstantiationException) as e:
            cause = _user_cause(e)
            if cause is None:
                log.exception("run failed")
            else:
                log.error(f"run stopped: {cause}")
            raise
        except Exception:
            log.exception("run failed")
            raise
        finally:
            log.info(f"output folder: {cfg.paths.output_dir}")

    return wrap


def get_metric_value(metric_dict: dict, metric_name: str | None) -> float | None:
    if not metric_name:
        return None
    if metric_name not in metric_dict:
        stage = metric_name.split("/")[0]
        if not any(k.startswith(f"{stage}/") for k in metric_dict):
            raise UserError(
                f"{metric_name} was never logged: no {stage} step ran (trainer.max_epochs=0, max_steps reached "
                f"before the first validation, or no {stage} batches); let one run, or set optimized_metric=null"
            )
        raise UserError(f"metric {metric_name!r} was not logged; set optimized_metric to one of {sorted(metric_dict)}")
    return float(metric_dict[metric_name])
