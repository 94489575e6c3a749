"""Callbacks of this project."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch.profiler import ProfilerActivity, profile

from src.utils.errors import UserError
from src.utils.io import write_json, write_text
from src.utils.profiling import device_time, idle_words, kernel_markdown, kernel_table
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


class StepProgressBar(TQDMProgressBar):
    """The terminal's bar, showing the training step's metrics (`step_metrics`, logged with on_step)
    read from the logged values only when the bar refreshes (every refresh_rate steps). The modules
    log no training metric with prog_bar=True: Lightning turns those into Python numbers after every
    batch, a host sync per step that keeps the host from queueing the next step while the GPU runs."""

    def __init__(self, refresh_rate: int = 10, step_metrics: tuple[str, ...] = ("train/loss", "train/acc")):
        super().__init__(refresh_rate=refresh_rate)
        self.step_metrics = tuple(step_metrics)

    def get_metrics(self, trainer, pl_module) -> dict:
        shown = super().get_metrics(trainer, pl_module)
        for name in self.step_metrics:
            value = trainer.callback_metrics.get(f"{name}_step")
            if value is not None:
                shown[name] = float(value)
        return shown


def _metrics(trainer, prefix: str) -> str:
    values = {k: v for k, v in trainer.callback_metrics.items() if k.startswith(prefix)}
    return " ".join(f"{k}={float(v):.4f}" for k, v in sorted(values.items()))


class CheckpointOnSignal(L.Callback):
    """A stop asked for by a signal: SIGTERM (a kill, the end of a time limit), SIGUSR1 (Lightning's
    SLURM guidance, `--signal=SIGUSR1@90`), SIGUSR2 (submitit's pre-emption warning) or SIGINT
    (Ctrl-C; a second Ctrl-C stops at once). Training finishes the current batch (or validation
    batch), saves <dirpath>/last.ckpt and stops, so the next run resumes there with ckpt_path=last;
    a stop during test saves nothing (the weights tested are the best checkpoint's, not the run's
    last) and ckpt_path=last runs the test again. After SIGUSR2 the previous handler (submitit's
    requeue) runs once saved and recorded (requeue). Under DDP the processes agree on a stop during
    training every `sync_every` optimizer steps (an all_reduce whose result the host waits for: once
    a step, it kept the host from queueing the next step while the GPU ran this one), so a stop
    comes at most that many steps after the signal."""

    # Lightning's own SIGTERM handler is kept out: it broadcasts from rank 0 inside the handler, a
    # collective that can meet another collective on the other ranks (a DDP hang at an epoch's end).
    # Lightning installs it after the setup hooks, so the handlers are taken back when a loop starts.
    SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT)

    def __init__(self, dirpath: str, sync_every: int = 10):
        if isinstance(sync_every, bool) or not isinstance(sync_every, int) or sync_every < 1:
            raise UserError(
                f"callbacks.signal_checkpoint.sync_every={sync_every!r}: use a whole number of steps, 1 or more"
            )
        self.dirpath, self.sync_every = dirpath, sync_every
        self.received: int | None = None
        self.pending_requeue = None  # submitit's USR2 handler, once the stop is saved
        self._after_validation = False  # one process: a stop held until the validation under way ends
        self._previous: dict = {}
        self._trainer = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        self._trainer = trainer
        if threading.current_thread() is threading.main_thread() and not self._previous:
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._on_signal)

    def _take_signals_back(self) -> None:
        """Ours again, over the handlers Lightning installed after setup (its SIGTERM handler would
        broadcast inside the handler); the previous ones (submitit's) stay those setup found."""
        if self._previous and threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                if signal.getsignal(signum) != self._on_signal:
                    signal.signal(signum, self._on_signal)

    def on_sanity_check_start(self, trainer, pl_module) -> None:
        self._take_signals_back()

    def on_train_start(self, trainer, pl_module) -> None:
        self._take_signals_back()

    def on_validation_start(self, trainer, pl_module) -> None:
        self._take_signals_back()

    def on_test_start(self, trainer, pl_module) -> None:
        self._take_signals_back()

    def teardown(self, trainer, pl_module, stage: str) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    def _on_signal(self, signum, frame) -> None:
        """Records the stop: after this training batch, once this validation ends, or after this
        test batch. Under DDP no flag of Lightning's is set here and no collective runs (in a signal
        handler it could meet another collective on the other ranks): the processes agree on the
        stop where they all are at once (_agree: a training batch's end, a validation's end, a test
        batch's end) and raise it together."""
        if signum == signal.SIGINT and self.received == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: now
        first, self.received = self.received is None, signum
        trainer = self._trainer
        launcher = trainer.strategy.launcher
        if first and signum == signal.SIGTERM and launcher is not None:
            launcher.kill(signum)  # to the processes this one started (a local multi-device run), as Lightning does
        name = signal.Signals(signum).name
        distributed = _distributed(trainer)
        agreed = " (where every process agrees)" if distributed else ""
        if trainer.state.fn == TrainerFn.FITTING and (trainer.validating or trainer.sanity_checking):
            self._after_validation = True
            log.info(f"received {name}: stopping once this validation ends{agreed}")
        else:
            if not distributed:
                trainer._signal_connector.received_sigterm = True  # Lightning stops after this batch
            what = "the test after this batch" if trainer.testing else "after this batch"
            log.info(f"received {name}: stopping {what}{agreed}")

    def _agree(self, trainer, pl_module) -> bool:
        """Whether any process has received a stop (one all_reduce, where every process is)."""
        flag = torch.tensor([float(self.received is not None)], device=pl_module.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        """Under DDP: every process learns of a stop after the same batch, every sync_every steps,
        and raises it there."""
        if not _distributed(trainer) or trainer.global_step % self.sync_every:
            return
        if self._agree(trainer, pl_module):
            trainer._signal_connector.received_sigterm = True

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        """A stop raised for the training batch before a validation waits for the validation's end
        (Lightning would stop it at this batch); every process holds it alike."""
        if trainer.state.fn == TrainerFn.FITTING and trainer.received_sigterm:
            trainer._signal_connector.received_sigterm = False
            self._after_validation = True

    def on_validation_end(self, trainer, pl_module) -> None:
        """A stop asked for during training's validation is taken once it ends (Lightning would resume
        a validation stopped half-way with its metrics from the other half only); under DDP every
        process agrees on it here."""
        if trainer.state.fn != TrainerFn.FITTING:
            return
        stop = self._agree(trainer, pl_module) if _distributed(trainer) else self._after_validation
        self._after_validation = False
        if stop:
            trainer._signal_connector.received_sigterm = True  # stops at the next batch boundary

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        """A stop asked for during test, taken at the same batch by every process (a process that
        stopped alone would leave the others hanging in the next collective)."""
        if _distributed(trainer) and self._agree(trainer, pl_module):
            trainer._signal_connector.received_sigterm = True

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException):
            return
        if trainer.state.fn == TrainerFn.FITTING:
            path = Path(self.dirpath) / "last.ckpt"
            trainer.save_checkpoint(path)
            log.info(f"stopped by a signal at step {trainer.global_step}: saved {path}; resume with ckpt_path=last")
        requeue = self._previous.get(signal.SIGUSR2)
        if self.received == signal.SIGUSR2 and callable(requeue):
            self.pending_requeue = requeue  # after the run's summary is written: submitit's handler exits

    def requeue(self) -> None:
        """Hand over to submitit's USR2 handler, which requeues the job and ends the process: the
        entry point calls it once metrics.json records the stop (entry.phase)."""
        requeue, self.pending_requeue = self.pending_requeue, None
        if requeue is None:
            return
        owner = getattr(requeue, "__self__", None)
        if owner is not None and hasattr(owner, "has_timed_out"):
            # submitit tells a time limit from a pre-emption by elapsed time alone, and with
            # timeout_min <= 10 counts every signal as a timeout (of max_num_timeout): ask SLURM
            timed_out = slurm_timed_out()
            if timed_out is not None:
                owner.has_timed_out = lambda: timed_out
        requeue(signal.SIGUSR2, None)


def _distributed(trainer) -> bool:
    return trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized()


def slurm_timed_out() -> bool | None:
    """Whether this SLURM job's warning signal is its time limit (the time left is at most the
    warning's delay, $SSAMBA_SIGNAL_DELAY_S, which hydra/launcher=slurm exports, plus a minute)
    rather than a pre-emption; None when SLURM does not say."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return None
    try:
        out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    left = _slurm_duration_s(out.stdout.strip())
    if out.returncode != 0 or left is None:
        return None
    return left <= float(os.environ.get("SSAMBA_SIGNAL_DELAY_S", "120")) + 60


def _slurm_duration_s(text: str) -> float | None:
    """Seconds of squeue's [D-]HH:MM:SS / MM:SS; None for UNLIMITED or anything else."""
    days, _, clock = text.rpartition("-")
    parts = clock.split(":")
    if not text or not all(p.isdigit() for p in parts) or (days and not days.isdigit()) or len(parts) > 3:
        return None
    seconds = 0
    for p in parts:
        seconds = 60 * seconds + int(p)
    return seconds + 86400 * int(days or 0)


class LastCheckpoint(L.Callback):
    """<dirpath>/last.ckpt, the checkpoint a run resumes from (ckpt_path=last), written so that a
    kill loses at most `every_minutes` of training: every `every_n_train_steps` optimizer steps
    (None: not by steps), once `every_minutes` have passed since the last write (checked after each
    optimizer step; under DDP rank 0's clock decides, shared every `sync_every` steps so that every
    process saves at the same step), at every epoch's end (after its validation), and when training
    ends. One file, overwritten atomically (AtomicCheckpointIO). Not a Checkpoint: Lightning would run
    it after the progress bar, whose rank-0-only metric syncs would then meet this save's barrier
    on the other ranks (a DDP hang at an epoch's end). The best checkpoint's callback saves when
    validation ends (save_on_train_epoch_end: false), so what this writes at the epoch's end knows
    that epoch's best."""

    FILE = "last.ckpt"

    def __init__(self, dirpath: str, every_n_train_steps: int | None = None, every_minutes: float | None = 10.0,
                 sync_every: int = 10):  # fmt: skip
        for name, value in (("every_n_train_steps", every_n_train_steps), ("every_minutes", every_minutes)):
            if value is not None and (isinstance(value, bool) or value <= 0):
                raise UserError(f"callbacks.last_checkpoint.{name}={value!r}: use a positive number, or null for none")
        self.dirpath, self.every_n, self.every_minutes, self.sync_every = (
            dirpath,
            every_n_train_steps,
            every_minutes,
            sync_every,
        )
        self._clock = time.monotonic()
        self._saved_at = None  # (global step, epochs completed) of the last write
        self._after_validation = False  # a write that is due once the validation under way ends

    @property
    def path(self) -> Path:
        return Path(self.dirpath) / self.FILE

    def on_train_start(self, trainer, pl_module) -> None:
        self._clock = time.monotonic()
        self._saved_at = self._position(trainer)  # a resumed run does not write what it resumed from

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.fit_loop._should_accumulate():  # mid-accumulation: no optimizer step yet
            return
        step = trainer.global_step
        due = bool(self.every_n) and step % self.every_n == 0
        if not due and self.every_minutes is not None:
            if trainer.world_size == 1:
                due = time.monotonic() - self._clock >= 60 * self.every_minutes
            elif step % self.sync_every == 0:  # the same decision in every process, at a few steps' cost
                due = trainer.strategy.broadcast(time.monotonic() - self._clock >= 60 * self.every_minutes, src=0)
        if due and _validation_follows(trainer):
            self._after_validation = True  # a checkpoint between a batch and its validation resumes past it
        elif due:
            self._save(trainer)

    def on_validation_end(self, trainer, pl_module) -> None:
        if not self._after_validation or trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        self._after_validation = False
        if not trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:  # else on_train_epoch_end saves
            self._save(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._after_validation = False
        self._save(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        self._save(trainer)

    def _position(self, trainer) -> tuple[int, int, int]:
        progress = trainer.fit_loop.epoch_progress.current
        return trainer.global_step, progress.processed, progress.completed

    def _save(self, trainer) -> None:
        if trainer.fast_dev_run or trainer.sanity_checking or self._saved_at == self._position(trainer):
            return  # a debug run (fast_dev_run) writes no checkpoints, as Lightning's own callbacks
        trainer.save_checkpoint(self.path)
        self._saved_at, self._clock = self._position(trainer), time.monotonic()


def _validation_follows(trainer) -> bool:
    """Whether Lightning validates right after the training batch that just ended."""
    loop = trainer.fit_loop.epoch_loop
    return trainer.fit_loop._data_fetcher is not None and loop._should_check_val_fx(trainer.fit_loop._data_fetcher)


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


class NonFiniteEvalLoss(L.Callback):
    """A validation or test loss that is NaN or infinite (a broken clip in that split, or weights
    gone bad) does not pass silently: one warning naming the stage and step, and the run's
    metrics.json lists every such event under "nonfinite_losses" (entry.write_run_summary)."""

    def __init__(self):
        self.events: list[dict] = []

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._check(trainer, "val")

    def on_test_end(self, trainer, pl_module) -> None:
        self._check(trainer, "test")

    def _check(self, trainer, stage: str) -> None:
        loss = trainer.callback_metrics.get(f"{stage}/loss")
        if loss is None or torch.isfinite(loss).all():
            return
        event = {"stage": stage, "step": trainer.global_step, "epoch": trainer.current_epoch, "loss": float(loss)}
        self.events.append(event)
        log.warning(
            f"the {stage} loss is {float(loss)} at step {trainer.global_step}: a clip of the {stage} split may hold "
            "NaN or inf features, or the weights went bad; its metrics are not to be trusted"
        )


class Throughput(L.Callback):
    """Training speed as the whole run sees it (data loading, DDP and logging included): samples/s
    and ms per step over the steps after `warmup_steps`, and the peak GPU memory. Logged as perf/*
    and, by rank 0 at the end of fit, written to `out` as JSON. The clock stops when the last
    step's work ends (on CUDA, an event recorded after each step, read at the end: no sync a step),
    not when fit ends: what runs once the last step is done (the epoch's end, last.ckpt's save) is
    no step's time."""

    def __init__(self, warmup_steps: int = 10, out: str | None = None):
        self.warmup_steps, self.out = warmup_steps, out
        self._start = self._end = self._samples = self._steps = None
        self._events = None  # CUDA: (after the warm-up, after the latest step)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup_steps and self._start is None:
            _synchronize(pl_module)
            self._start, self._samples, self._steps = time.perf_counter(), 0, 0
            if pl_module.device.type == "cuda":
                self._events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                self._events[0].record()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._start is not None:
            self._samples += _batch_size(batch) * trainer.world_size
            self._steps += 1
            if self._events is not None:
                self._events[1].record()  # when the GPU is done with this step's work
            else:
                self._end = time.perf_counter()

    def on_train_end(self, trainer, pl_module) -> None:
        if not self._steps:
            log.warning(f"throughput: the run ended before step {self.warmup_steps + 1}; nothing measured")
            return
        if self._events is not None:
            self._events[1].synchronize()
            seconds = self._events[0].elapsed_time(self._events[1]) / 1000
        else:
            seconds = self._end - self._start
        cuda = pl_module.device.type == "cuda"
        result = {
            "samples_per_s": self._samples / seconds,
            "ms_per_step": 1000 * seconds / self._steps,
            "steps_timed": self._steps,
            "devices": trainer.world_size,
            "precision": str(trainer.precision),
            "peak_mib": torch.cuda.max_memory_allocated(pl_module.device) / 2**20 if cuda else None,
            "card": _card(pl_module),
        }
        log.info(f"throughput: {result['samples_per_s']:.1f} samples/s, {result['ms_per_step']:.1f} ms per step")
        for logger in trainer.loggers:
            logger.log_metrics(
                {f"perf/{k}": result[k] for k in ("samples_per_s", "ms_per_step")}, step=trainer.global_step
            )
        if trainer.is_global_zero and self.out:
            write_json(self.out, result)


class StepProfile(L.Callback):
    """What the GPU runs in `steps` training steps from step `start_step` on, as the whole loop runs
    them (data, graphs, optimizer, metrics, logging): torch.profiler over those steps, then per
    kernel (copies and fills included) its time and launches a step, the steps' wall time and how
    much of it the GPU was busy; the rest is the GPU waiting on the host, split by the gaps' length
    (under 10 us: launch latency, inside CUDA graphs too; 100 us and over: the host is late), with
    the host op running during each long gap. Rank 0 writes `out` (JSON) and a markdown table beside
    it. The profiler slows the host: time the loop with Throughput, in a run without this callback."""

    def __init__(self, start_step: int = 20, steps: int = 5, out: str | None = None, top: int = 30):
        if start_step < 0 or steps < 1:
            raise UserError(f"StepProfile needs start_step >= 0 and steps >= 1 (got {start_step}, {steps})")
        self.start_step, self.steps, self.out, self.top = start_step, steps, out, top
        self._profiler = self._start = None
        self._done = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.start_step and self._profiler is None and not self._done:
            cuda = pl_module.device.type == "cuda"
            _synchronize(pl_module)
            self._profiler = profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else []))
            self._profiler.__enter__()
            self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._profiler is None:
            return
        self._done += 1
        if self._done == self.steps:
            self._finish(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        if self._profiler is not None:  # the run ended inside the profiled steps
            self._finish(trainer, pl_module)
        elif not self._done:
            log.warning(f"step profile: the run ended before step {self.start_step}; nothing profiled")

    def _finish(self, trainer, pl_module) -> None:
        _synchronize(pl_module)
        wall_ms = 1e3 * (time.perf_counter() - self._start) / self._done
        self._profiler.__exit__(None, None, None)
        prof, self._profiler = self._profiler, None
        kernels = kernel_table(prof, self._done)
        busy_us, idle = device_time(prof, self._done)
        result = {
            "steps": self._done,
            "from_step": self.start_step,
            "card": _card(pl_module),
            "wall_ms": wall_ms,
            "busy_ms": busy_us / 1e3 / self._done,
            "device_ms": sum(k["us"] for k in kernels) / 1e3,
            "launches": sum(k["launches"] for k in kernels),
            "idle": idle,
            "kernels": kernels,
        }
        line = (
            f"step profile, steps {self.start_step}-{self.start_step + self._done - 1}: wall {wall_ms:.2f} ms a step "
            f"(profiled), GPU busy {result['busy_ms']:.2f} ms, {result['launches']:.0f} launches"
        )
        gaps = idle_words(result["idle"]["gaps_us"])
        log.info(f"{line}; idle a step in gaps {gaps}")
        if trainer.is_global_zero and self.out:
            write_json(self.out, result)
            lines = [line, "", f"GPU idle a step, by the gaps' length: {gaps}.", ""]
            if result["idle"]["long_gaps_by_host_op"]:
                lines += ["What the host ran during the long gaps (the innermost op at each gap's middle):", ""]
                lines += ["| host op | idle us / step |", "| --- | --- |"]
                lines += [f"| `{r['op'][:90]}` | {r['us']:.0f} |" for r in result["idle"]["long_gaps_by_host_op"]]
                lines += [""]
            lines += kernel_markdown(kernels, self.top, per="step")
            write_text(Path(self.out).with_suffix(".md"), "\n".join(lines) + "\n")


def _batch_size(batch) -> int:
    tensor = next(iter(batch.values())) if isinstance(batch, dict) else batch[0]
    return tensor.shape[0]


def _card(pl_module) -> str:
    return torch.cuda.get_device_name(pl_module.device) if pl_module.device.type == "cuda" else "cpu"


def _synchronize(pl_module) -> None:
    if pl_module.device.type == "cuda":
        torch.cuda.synchronize(pl_module.device)
