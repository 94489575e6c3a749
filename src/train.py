"""Train (pretrain or fine-tune) from a Hydra config:  python -m src.train experiment=<name> [overrides]

Examples:
    python -m src.train experiment=pretrain_demo
    python -m src.train experiment=ks2 model.pretrained=logs/pretrain/runs/<run>/encoder
    python -m src.train experiment=ks2 encoder=ssast trainer=ddp_bf16 trainer.devices=4
    python -m src.train -m experiment=esc50          # all five folds, then their mean
"""

from __future__ import annotations

import hydra
import lightning as L
import rootutils
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.plugins.environments import SLURMEnvironment
from omegaconf import DictConfig, OmegaConf

# PROJECT_ROOT (which configs/paths reads) and the project on the import path, before the project's
# imports: the file run by its path works from a plain checkout, not only after `pip install -e .`
rootutils.setup_root(__file__, indicator=".project-root", pythonpath=True)

from src.utils import entry
from src.utils.checkpoints import AtomicCheckpointIO
from src.utils.instantiators import instantiate_group
from src.utils.pylogger import RankedLogger
from src.utils.threads import set_threads
from src.utils.utils import extras, get_metric_value, lower_is_better, print_config, task_wrapper, user_errors_exit

log = RankedLogger(__name__)
# SLURM / submitit asks for GPUs only when the trainer uses them
# (auto asks for none: a login node cannot tell what the job's node has; trainer=gpu asks for them)
# the best checkpoint's and early stopping's direction for the monitored metric
OmegaConf.register_new_resolver("metric_mode", lambda metric: "min" if lower_is_better(metric) else "max", replace=True)
OmegaConf.register_new_resolver(
    "gpus_for", lambda accelerator, devices: 0 if accelerator in ("cpu", "auto") else devices, replace=True
)


@task_wrapper
def train(cfg: DictConfig) -> tuple[dict, dict]:
    entry.check_settings(cfg)  # before anything is built
    entry.check_fresh_start(cfg)  # (the Hydra callback RunFolderGuard checked before .hydra/ was written)
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    threads = set_threads(cfg.get("threads", "auto"), entry.processes_per_node(cfg))
    log.info(f"torch threads: {threads} (threads={cfg.get('threads', 'auto')})")
    log.info(f"data: {cfg.data._target_}")
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.check()  # a missing dataset stops here, with how to get it
    log.info(f"model: {cfg.model._target_} ({cfg.encoder.backbone}-{cfg.encoder.size})")
    model = hydra.utils.instantiate(cfg.model)
    log.info(f"monitored: {entry.resolve_metric(cfg, model, datamodule)} (optimized_metric)")  # before the callbacks
    callbacks = instantiate_group(cfg.get("callbacks"))
    loggers = instantiate_group(cfg.get("logger"))
    if not loggers:  # nothing to monitor the learning rate into
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    plugins = [AtomicCheckpointIO()]  # checkpoints written beside their target, then renamed
    if SLURMEnvironment.detect():  # one task per device; submitit, not Lightning, handles requeue
        plugins.append(SLURMEnvironment(auto_requeue=False))
    trainer: L.Trainer = hydra.utils.instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=plugins, strategy=entry.trainer_strategy(cfg)
    )
    entry.check_devices(cfg, trainer)
    log.info(f"device: {entry.device_name(trainer)}, precision {trainer.precision}")
    print_config(cfg)  # after the checks: an error above is not buried under the config
    for logger in trainer.loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    with entry.run_folder(cfg):  # one training at a time in a run folder
        ckpt_path = entry.resume_path(cfg, trainer)
        entry.check_data(cfg, ckpt_path, datamodule, resuming=True)
        done = entry.finished_run(cfg, ckpt_path)
        if done is not None and entry.phases_left(cfg, done) == []:  # ckpt_path=last on a finished run
            log.info(
                f"{cfg.paths.output_dir} finished its training at step {done.get('global_step')} "
                "(metrics.json); nothing to resume. To train it further, raise trainer.max_epochs or "
                "trainer.max_steps"
            )
            return {k: v for k, v in done.items() if isinstance(v, float)}, {"cfg": cfg, "trainer": trainer}
        phases, metrics, best = dict((done or {}).get("phases") or {}), {}, None
        if done is not None:  # trained to the end before a stop during test: test only
            log.info(f"{cfg.paths.output_dir} finished its training; running what is left: test")
            best = done.get("best_checkpoint")
        elif cfg.get("train"):
            # a checkpoint that does not fit the model stops in the modules' on_load_checkpoint (a UserError)
            with entry.phase(cfg, trainer, phases, "fit"):
                trainer.fit(model=model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
            metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
            best = entry.best_checkpoint(trainer)
            entry.write_rank_record(cfg, trainer, ckpt_path)
            if cfg.get("test"):  # the training's outcome on disk before the test: a kill there loses only the test
                entry.write_run_summary(cfg, trainer, metrics, phases, quiet=True)
        if cfg.get("test"):
            if not best:
                log.warning("no best checkpoint: testing the current weights")
            with entry.phase(cfg, trainer, phases, "test", metrics):
                trainer.test(model=model, datamodule=datamodule, ckpt_path=best, weights_only=True)
            metrics.update({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")})
        summary = entry.write_run_summary(cfg, trainer, metrics, phases) or {}
        # a resumed run's metrics include those it did not log again (a validation before the stop)
        metrics = {**{k: v for k, v in summary.items() if "/" in k and isinstance(v, float)}, **metrics}
    return metrics, {"cfg": cfg, "datamodule": datamodule, "model": model, "trainer": trainer}


@hydra.main(version_base="1.3", config_path="../configs", config_name="train.yaml")
@user_errors_exit
def main(cfg: DictConfig) -> float | None:
    extras(cfg)
    metrics, _ = train(cfg)
    if not entry.launching_process():  # the other DDP processes: rank 0 reports the run's metric
        return None
    return get_metric_value(metrics, cfg.get("optimized_metric"))


if __name__ == "__main__":
    main()
