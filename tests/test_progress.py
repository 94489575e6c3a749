"""The progress bar shows the training step's metrics without a host sync a step: the modules log
no training metric to Lightning's bar (which reads every one back after every batch), and
StepProgressBar reads the logged step values only when it refreshes. Under DDP the processes agree
on a signal's stop every few steps, not after every batch (an all_reduce the host waits for)."""

import types

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from src.models.ssl_module import SSLModule
from src.utils import callbacks
from src.utils.callbacks import CheckpointOnSignal, StepProgressBar
from src.utils.errors import UserError
from tests.test_ssl import SMALL_ENCODER


def test_the_bar_shows_the_logged_step_metrics_when_it_refreshes():
    trainer = types.SimpleNamespace(
        loggers=[],
        progress_bar_metrics={"val/acc": 0.25},
        callback_metrics={"train/loss_step": torch.tensor(2.5), "train/loss_epoch": torch.tensor(3.0)},
    )
    shown = StepProgressBar(step_metrics=("train/loss", "train/acc")).get_metrics(trainer, None)
    assert shown == {"val/acc": 0.25, "train/loss": 2.5}  # train/acc was not logged: not shown


def test_ssl_training_puts_no_step_metric_on_lightnings_bar_and_ours_shows_them(tmp_path):
    recipe = {"name": "adamw", "lr": 1e-4, "weight_decay": 0.0, "betas": [0.95, 0.999]}
    module = SSLModule(SMALL_ENCODER, mask_patches=20, val_mask_patches=20, optimizer=recipe)
    batches = [{"fbank": torch.randn(2, 1, 128, 160)} for _ in range(3)]
    bar = StepProgressBar(refresh_rate=1)
    trainer = L.Trainer(
        max_steps=3, logger=False, enable_checkpointing=False, callbacks=[bar], default_root_dir=tmp_path
    )
    trainer.fit(module, DataLoader(batches, batch_size=None))
    assert not any(k.startswith("train/") for k in trainer.progress_bar_metrics)
    shown = bar.get_metrics(trainer, module)
    assert isinstance(shown["train/loss"], float) and isinstance(shown["train/acc"], float)


def test_under_ddp_a_stop_is_agreed_every_few_steps_not_after_every_batch(monkeypatch, tmp_path):
    callback = CheckpointOnSignal(str(tmp_path), sync_every=10)
    monkeypatch.setattr(callbacks, "_distributed", lambda trainer: True)
    asked = []

    def agree(trainer, pl_module):  # rank 1 got the signal at step 14: every process learns it at 20
        asked.append(trainer.global_step)
        return trainer.global_step >= 14

    callback._agree = agree
    trainer = types.SimpleNamespace(global_step=0, _signal_connector=types.SimpleNamespace(received_sigterm=False))
    for step in range(1, 21):
        trainer.global_step = step
        callback.on_train_batch_end(trainer, None, None, None, step - 1)
        assert trainer._signal_connector.received_sigterm == (step == 20), step
    assert asked == [10, 20]
    for bad in (0, True, 2.5):
        with pytest.raises(UserError, match="sync_every"):
            CheckpointOnSignal(str(tmp_path), sync_every=bad)
