"""Stops a training in-process at a chosen point, for the resume matrix (tests/test_resume_matrix.py).

SignalAt sends a signal to its own process when `hook` runs at `step` (the global step, or for the
validation and test hooks the batch index); the project's handlers turn it into a stop at the next
batch boundary. With signal "KILL" it instead raises Killed right there, after the callbacks before
it have run: what survives is what a SIGKILL at that moment leaves on disk (the last periodic
last.ckpt), without ending the test process. `sanity` picks the sanity check's validation (or
not); `slurm` signals every task of the SLURM job the run is in (scancel --signal), as SLURM's own
warning does, in the job's first run only.
It is a Checkpoint only so that Lightning calls it after LastCheckpoint: a kill at an epoch's end
comes after that epoch's save.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import lightning as L
import torch
from lightning.pytorch.callbacks import Checkpoint


class Killed(BaseException):
    """Stands for SIGKILL: nothing handles it, nothing is saved."""


class SignalAt(Checkpoint):  # a Checkpoint: Lightning runs it last, after the saves of its hook
    HOOKS = (
        "on_train_batch_end",
        "on_train_epoch_end",
        "on_validation_batch_end",
        "on_test_batch_start",
        "on_test_batch_end",
    )

    def __init__(self, hook: str, step: int, sig: str = "TERM", sanity: bool = False, slurm: bool = False):
        if hook not in self.HOOKS:
            raise ValueError(f"hook must be one of {self.HOOKS}")
        self.hook, self.step, self.sig, self.sanity, self.fired = hook, step, sig, sanity, False
        self.slurm = slurm  # signal the whole SLURM job (every task), once: not in its requeued runs

    def _maybe(self, trainer, hook: str, index: int) -> None:
        if self.fired or hook != self.hook or index != self.step:
            return
        if hook == "on_validation_batch_end" and bool(trainer.sanity_checking) != self.sanity:
            return
        self.fired = True
        if self.slurm:
            if trainer.global_rank == 0 and os.environ.get("SLURM_RESTART_COUNT", "0") == "0":
                # scancel runs inside the job, so the signal may reach it too: its exit status says nothing
                subprocess.run(["scancel", f"--signal={self.sig}", os.environ["SLURM_JOB_ID"]], check=False)
                time.sleep(3)  # SLURM delivers it to every task meanwhile, before this batch is over
            return
        if self.sig == "KILL":
            raise Killed(f"killed at {hook} {index}")
        os.kill(os.getpid(), getattr(signal, f"SIG{self.sig}"))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._maybe(trainer, "on_train_batch_end", trainer.global_step)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._maybe(trainer, "on_train_epoch_end", trainer.current_epoch)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._maybe(trainer, "on_validation_batch_end", batch_idx)

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self._maybe(trainer, "on_test_batch_start", batch_idx)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._maybe(trainer, "on_test_batch_end", batch_idx)


class NanValidationLoss(L.Callback):
    """Makes the fine-tuning module's validation loss NaN, as a clip with NaN features in the
    validation split would."""

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if not trainer.sanity_checking:
            pl_module.losses["val_loss"].update(torch.tensor(float("nan")))
