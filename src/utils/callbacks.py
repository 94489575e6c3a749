"""Callbacks of this project."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException

from src.utils.errors import UserError
from src.utils.io import write_json
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


class StopOnNonFiniteLoss(L.Callback):
    """A NaN or infinite training loss stops the run before its update reaches the weights: the
    weights are saved to <dirpath>/before_nonfinite.ckpt and the run ends with one line (a UserError).

    With optimizers that take a skip flag on the device (fused Adam / AdamW, what CUDA training
    uses: `found_inf`, as torch's GradScaler sets it) the check costs no host sync: the flag is set
    from the loss on the device (the maximum over DDP processes, so all skip together), the
    optimizer skips that step, and the flag is read at the next step's start, when it has long been
    copied to the host. Elsewhere (the CPU's optimizers) the loss is checked before its backward."""

    def __init__(self, dirpath: str):
        self.dirpath = dirpath
        self._host = None  # the flag and the loss, copied to the host without waiting
        self._pending = None  # (the copy's event or None, the step) until the flag is read

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        loss = loss.detach().float().mean()
        if not all(getattr(o, "_step_supports_amp_scaling", False) for o in trainer.optimizers):
            if not torch.isfinite(loss):  # a host sync; the CPU's optimizers cannot skip on the device
                self._stop(trainer, loss.item(), trainer.global_step)
            return
        # with accumulated micro-batches, each flag is read before the next micro-batch: a bad one
        # stops the run before the step, whatever the later ones give
        found = (~torch.isfinite(loss)).float()  # () on the device
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(found, op=torch.distributed.ReduceOp.MAX)  # all skip, or none
        for optimizer in trainer.optimizers:
            optimizer.found_inf = found  # the fused step reads it and leaves the weights as they are
        if self._host is None:
            self._host = torch.empty(2, pin_memory=loss.is_cuda)
        self._host.copy_(torch.stack([found, loss]), non_blocking=loss.is_cuda)
        event = torch.cuda.Event() if loss.is_cuda else None
        if event is not None:
            event.record()
        self._pending = (event, trainer.global_step)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._check_pending(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        self._check_pending(trainer)

    def _check_pending(self, trainer) -> None:
        if self._pending is None:
            return
        event, step = self._pending
        self._pending = None
        if event is not None:
            event.synchronize()  # the step's forward: done long before the host gets here
        if self._host[0] != 0:
            self._stop(trainer, self._host[1].item(), step)

    def _stop(self, trainer, loss: float, step: int) -> None:
        path = Path(self.dirpath) / "before_nonfinite.ckpt"
        trainer.save_checkpoint(path)
        raise UserError(
            f"the training loss became {loss} at step {step}; "
            f"the weights before it are in {path}. Lower the learning rate (model.optimizer.lr), clip gradients "
            "(trainer.gradient_clip_val=1.0) or look for broken inputs"
        )


class Throughput(L.Callback):
    """Training speed as the whole run sees it (data loading, DDP and logging included): samples/s
    and ms per step over the steps after `warmup_steps`, and the peak GPU memory. Logged as perf/*
    and, by rank 0 at the end of fit, written to `out` as JSON."""

    def __init__(self, warmup_steps: int = 10, out: str | None = None):
        self.warmup_steps, self.out = warmup_steps, out
        self._start = self._samples = self._steps = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup_steps and self._start is None:
            _synchronize(pl_module)
            self._start, self._samples, self._steps = time.perf_counter(), 0, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._start is not None:
            self._samples += _batch_size(batch) * trainer.world_size
            self._steps += 1

    def on_train_end(self, trainer, pl_module) -> None:
        if not self._steps:
            log.warning(f"throughput: the run ended before step {self.warmup_steps + 1}; nothing measured")
            return
        _synchronize(pl_module)
        seconds = time.perf_counter() - self._start
        cuda = pl_module.device.type == "cuda"
        result = {
            "samples_per_s": self._samples / seconds,
            "ms_per_step": 1000 * seconds / self._steps,
            "steps_timed": self._steps,
            "devices": trainer.world_size,
            "precision": str(trainer.precision),
            "peak_mib": torch.cuda.max_memory_allocated(pl_module.device) / 2**20 if cuda else None,
            "card": torch.cuda.get_device_name(pl_module.device) if cuda else "cpu",
        }
        log.info(f"throughput: {result['samples_per_s']:.1f} samples/s, {result['ms_per_step']:.1f} ms per step")
        if trainer.is_global_zero and self.out:
            write_json(self.out, result)


def _batch_size(batch) -> int:
    tensor = next(iter(batch.values())) if isinstance(batch, dict) else batch[0]
    return tensor.shape[0]


def _synchronize(pl_module) -> None:
    if pl_module.device.type == "cuda":
        torch.cuda.synchronize(pl_module.device)
