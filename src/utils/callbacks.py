"""Callbacks of this project."""

from __future__ import annotations

import time

import lightning as L

from src.utils.pylogger import RankedLogger

log = RankedLogger(__name__)


class ProgressLog(L.Callback):
    """Plain progress lines in the log file (the bar is for terminals; SLURM logs want lines)."""

    def __init__(self, every_n_steps: int = 50):
        self.every_n_steps = every_n_steps
        self._start = time.monotonic()

    def on_train_start(self, trainer, pl_module) -> None:
        self._start = time.monotonic()
        log.info(f"training: {trainer.num_training_batches} batches per epoch, up to {trainer.max_epochs} epochs")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.every_n_steps and (trainer.global_step % self.every_n_steps == 0) and trainer.global_step:
            log.info(
                f"epoch {trainer.current_epoch} step {trainer.global_step} {_metrics(trainer, 'train/')}"
                f" ({time.monotonic() - self._start:.0f} s)"
            )

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            step = f"epoch {trainer.current_epoch} step {trainer.global_step}"
            log.info(f"validation after {step}: {_metrics(trainer, 'val/')}")


def _metrics(trainer, prefix: str) -> str:
    values = {k: v for k, v in trainer.callback_metrics.items() if k.startswith(prefix)}
    return " ".join(f"{k}={float(v):.4f}" for k, v in sorted(values.items()))
