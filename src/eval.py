"""Evaluate a checkpoint:  python -m src.eval experiment=<name> ckpt_path=<.ckpt>

A fine-tuned model on its test split; a pretraining checkpoint (experiment=pretrain...) on its
validation set (the masked-patch accuracy and losses).
"""

from __future__ import annotations

import hydra
import lightning as L
import rootutils
from lightning.pytorch.utilities.model_helpers import is_overridden
from omegaconf import DictConfig, OmegaConf

# PROJECT_ROOT (which configs/paths reads) and the project on the import path, before the project's
# imports: the file run by its path works from a plain checkout, not only after `pip install -e .`
rootutils.setup_root(__file__, indicator=".project-root", pythonpath=True)

from src.utils import entry
from src.utils.errors import UserError
from src.utils.instantiators import instantiate_group
from src.utils.threads import set_threads
from src.utils.utils import extras, print_config, task_wrapper, user_errors_exit


@task_wrapper
def evaluate(cfg: DictConfig) -> tuple[dict, dict]:
    entry.check_settings(cfg)  # before anything is built
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    set_threads(cfg.get("threads", "auto"), entry.processes_per_node(cfg))
    if OmegaConf.is_missing(cfg, "ckpt_path"):
        raise UserError("eval.py needs ckpt_path=<.ckpt> and the experiment=... the checkpoint was trained with")
    checkpoint = entry.existing_checkpoint(cfg.ckpt_path)
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.check()
    entry.check_data(cfg, checkpoint, datamodule, resuming=False)
    # the weights come from the checkpoint, not from the encoder export a fine-tuning starts from
    model = hydra.utils.instantiate(cfg.model, **({"pretrained": None} if "pretrained" in cfg.model else {}))
    entry.resolve_metric(cfg, model, datamodule)  # recorded in metrics.json
    trainer: L.Trainer = hydra.utils.instantiate(
        cfg.trainer, logger=instantiate_group(cfg.get("logger")) or False, strategy=entry.trainer_strategy(cfg)
    )
    print_config(cfg)
    # a fine-tuned model on the test split; a pretraining (no test step) on its validation set
    run = trainer.test if is_overridden("test_step", model) else trainer.validate
    run(model=model, datamodule=datamodule, ckpt_path=checkpoint, weights_only=True)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    entry.write_run_summary(cfg, trainer, metrics)
    return metrics, {"cfg": cfg, "model": model, "trainer": trainer}


@hydra.main(version_base="1.3", config_path="../configs", config_name="eval.yaml")
@user_errors_exit
def main(cfg: DictConfig) -> None:
    extras(cfg)
    metrics, _ = evaluate(cfg)
    print(" ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items()) if k.startswith(("test/", "val/"))))


if __name__ == "__main__":
    main()
