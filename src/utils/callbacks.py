"""Callbacks of this project."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities.exceptions import SIGTERMException

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


class CheckpointOnSignal(L.Callback):
    """SIGTERM (a kill, the end of a time limit) or SIGUSR2 (submitit's pre-emption warning): finish
    the current batch, save <dirpath>/last.ckpt, then stop, so the next run resumes there with
    ckpt_path=last. After SIGUSR2 the previous handler (submitit's requeue) runs once saved."""

    def __init__(self, dirpath: str):
        self.dirpath = dirpath
        self._usr2 = False
        self._previous = None
        self._trainer = None

    def on_fit_start(self, trainer, pl_module) -> None:
        self._trainer = trainer
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.getsignal(signal.SIGUSR2)
            signal.signal(signal.SIGUSR2, self._on_usr2)

    def _on_usr2(self, signum, frame) -> None:
        self._usr2 = True
        self._trainer._signal_connector.received_sigterm = True  # Lightning stops after this batch

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException):
            return
        path = Path(self.dirpath) / "last.ckpt"
        trainer.save_checkpoint(path)
        log.info(f"stopped by a signal at step {trainer.global_step}: saved {path}; resume with ckpt_path=last")
        if self._usr2 and callable(self._previous):
            self._previous(signal.SIGUSR2, None)
