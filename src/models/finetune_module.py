"""Fine-tuning: the encoder, pooled, under a LayerNorm + Linear head (the official mlp_head).

One module serves every task: the class count and whether the labels are multi-label come from the
prepared data (classes.json); a task's experiment (configs/experiment/<task>.yaml) names only its
loss and the recipe's numbers (docs/official.md §8, SUPERB for SID / ER / KS1). The metric is mAP for
multi-label data, else accuracy. The encoder starts from an SSL checkpoint or export (its patch
kernel copied into the fine-tuning stride, its positional embedding cut or interpolated, as the
official code does), from scratch, or frozen as a linear probe.
"""

from __future__ import annotations

import logging

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification import MulticlassAccuracy, MultilabelAveragePrecision

from src.models.components import as_config, build_encoder
from src.models.optim import apply_warmup, make_optimizer, optimizer_settings, reseed_step
from src.models.pretrained import (
    build_pretrained,
    check_backbone,
    check_fits,
    data_record,
    read_pretrained,
)
from src.models.resume import restore_best, save_best
from src.utils.errors import UserError

log = logging.getLogger(__name__)


class FinetuneModule(L.LightningModule):
    def __init__(
        self,
        encoder: dict,
        num_classes: int | None = None,
        multilabel: bool | None = None,
        pretrained: str | None = None,
        fstride: int | None = None,
        tstride: int | None = None,
        pooling: str = "mean",
        freeze_encoder: bool = False,
        head_lr_mult: float = 1.0,
        optimizer: dict | None = None,
        lr_schedule: dict | None = None,
        warmup_steps: int = 0,
        staircase_warmup: bool = True,
        loss: str | None = None,
        compile: bool = False,
    ):
        """encoder: the encoder config (a recipe for encoder_config, or a saved config dict); from
        scratch it is built as it says, from `pretrained` (a .ckpt of this project or an export
        folder) the pretrained encoder's own config wins but for the input: the encoder config's
        target_length (the data's) and patch stride (encoder.fstride, encoder.tstride: the stride
        has one home, the encoder config). fstride, tstride: only what checkpoints written before
        that still name; they must agree with the encoder config. num_classes, multilabel:
        None takes them from the datamodule (the prepared data's classes.json). optimizer: {name, lr,
        weight_decay, betas}, from configs/model/finetune.yaml (the module holds no values of its
        own). lr_schedule: MultiStepLR per epoch with milestones range(start, 1000, step) and gamma
        (official); None: a constant rate.
        loss: "ce" (cross-entropy on argmax(target)) or "bce" (BCE with soft or multi-hot
        targets); None: bce for multi-label data, else ce."""
        super().__init__()
        if pooling not in ("mean", "cls"):
            raise UserError(f"model.pooling must be 'mean' or 'cls', got {pooling!r}")
        if loss not in (None, "ce", "bce"):
            raise UserError(f"model.loss must be 'ce' or 'bce', got {loss!r}")
        self.save_hyperparameters(logger=False)
        config = as_config(encoder)
        for name, value in (("fstride", fstride), ("tstride", tstride)):
            if value is not None and value != getattr(config, name):
                raise UserError(
                    f"model.{name}={value} but encoder.{name}={getattr(config, name)}: the patch stride "
                    f"is the encoder config's; set encoder.{name} and leave model.{name} out"
                )
        if pretrained:
            pretrained_config, state, _ = read_pretrained(pretrained)
            check_backbone(pretrained_config, config, f"model.pretrained={pretrained}")
            self.encoder = build_pretrained(pretrained_config, state, pretrained)
            log.info("loaded the pretrained encoder from %s", pretrained)
        else:
            self.encoder = build_encoder(config)
        self.encoder.resize_input(config.target_length, config.fstride, config.tstride)
        # checkpoints describe the encoder they hold (so they load without the pretrained file)
        self.hparams.encoder = self.encoder.config.to_dict()
        self.hparams.pretrained, self.hparams.pretrained_from = None, pretrained
        if freeze_encoder:
            self.encoder.requires_grad_(False)
        self.head: nn.Module | None = None
        # nan_strategy="disable": the default's NaN check is a host sync per step (StopOnNonFiniteLoss
        # stops a NaN loss instead)
        self.losses = nn.ModuleDict({f"{s}_loss": MeanMetric(nan_strategy="disable") for s in ("train", "val", "test")})
        self.best = MaxMetric()
        self.num_prefix_tokens = self.encoder.num_prefix_tokens
        self._rng_seed = torch.initial_seed() % 2**31  # drop path's draws, from (seed, step): see reseed_step
        if num_classes:
            self._build_head(num_classes, bool(multilabel))

    def _build_head(self, num_classes: int, multilabel: bool) -> None:
        # saved in checkpoints, so they rebuild the same head and metric without the data
        self.hparams.num_classes, self.hparams.multilabel = num_classes, multilabel
        self.loss_name = self.hparams.loss or ("bce" if multilabel else "ce")
        self.metric_name = "mAP" if multilabel else "acc"
        dim = self.encoder.embed_dim
        self.head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, num_classes))
        make = (
            # validate_args=False: checking the values of every batch would sync the GPU each step
            (lambda: MultilabelAveragePrecision(num_labels=num_classes, average="macro", validate_args=False))
            if multilabel
            else (lambda: MulticlassAccuracy(num_classes=num_classes, average="micro", validate_args=False))
        )
        self.scores = nn.ModuleDict({f"{s}_score": make() for s in ("train", "val", "test")})

    def validation_metrics(self, datamodule) -> list[str]:
        """What validation logs, the one to monitor first: accuracy, or mAP on multi-label data."""
        multilabel = self.hparams.multilabel
        if multilabel is None:
            multilabel = getattr(datamodule, "multilabel", False)
        name = "mAP" if multilabel else "acc"
        return [f"val/{name}", f"val/{name}_best", "val/loss"]

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        n, multilabel = getattr(datamodule, "num_classes", None), getattr(datamodule, "multilabel", None)
        if self.head is None:
            if n is None:
                raise UserError("no datamodule tells the number of classes; set model.num_classes")
            self._build_head(n, bool(multilabel))
        elif n is not None and (n, bool(multilabel)) != (self.hparams.num_classes, self.hparams.multilabel):
            raise UserError(
                f"the model has {self.hparams.num_classes} classes (multilabel={self.hparams.multilabel}) but the "
                f"data has {n} (multilabel={bool(multilabel)}); fix model.num_classes / model.multilabel or the data"
            )
        if self.hparams.compile and stage == "fit":
            self.encoder = torch.compile(self.encoder)

    def forward(self, spec: Tensor) -> Tensor:
        """(B, 1, F, T) -> (B, C) logits."""
        tokens = self.encoder(spec)
        pooled = tokens[:, self.num_prefix_tokens :].mean(1) if self.hparams.pooling == "mean" else tokens[:, 0]
        return self.head(pooled)

    def loss(self, logits: Tensor, target: Tensor) -> Tensor:
        if self.loss_name == "bce":
            return F.binary_cross_entropy_with_logits(logits, target)
        return F.cross_entropy(logits, target.argmax(-1))

    def _step(self, batch: dict, stage: str) -> Tensor:
        logits = self(batch["fbank"])
        loss = self.loss(logits, batch["target"])
        self.losses[f"{stage}_loss"](loss.detach())
        multilabel = self.hparams.multilabel
        target = (batch["target"] > 0.5).int() if multilabel else batch["target"].argmax(-1)
        preds = torch.sigmoid(logits) if multilabel else logits
        self.scores[f"{stage}_score"].update(preds.detach().float(), target)  # epoch value only: no batch value
        on_step = stage == "train"
        # per step not on the bar: Lightning would read it back every batch (StepProgressBar shows it)
        self.log(f"{stage}/loss", self.losses[f"{stage}_loss"], on_step=on_step, on_epoch=True, prog_bar=not on_step)
        self.log(
            f"{stage}/{self.metric_name}", self.scores[f"{stage}_score"], on_step=False, on_epoch=True, prog_bar=True
        )
        return loss

    def on_train_batch_start(self, batch, batch_idx) -> None:
        reseed_step(self._rng_seed, self.global_step, self.global_rank)
        apply_warmup(self.optimizers(), self.global_step, self.hparams.warmup_steps, self.hparams.staircase_warmup)

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._step(batch, "test")

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        self.best(self.scores["val_score"].compute())
        self.log(f"val/{self.metric_name}_best", self.best.compute(), sync_dist=True, prog_bar=True)

    def configure_optimizers(self):
        head = list(self.head.parameters())
        encoder = [p for p in self.encoder.parameters() if p.requires_grad]
        settings = optimizer_settings(self.hparams.optimizer)
        lr = settings["lr"]
        # named groups: the learning-rate monitor logs lr-Adam/encoder and lr-Adam/head
        groups = [{"params": head, "lr": lr * self.hparams.head_lr_mult, "name": "head"}]
        if encoder:
            groups.insert(0, {"params": encoder, "lr": lr, "name": "encoder"})
        optimizer = make_optimizer(groups, **settings)
        s = self.hparams.lr_schedule
        if s is None:
            return {"optimizer": optimizer}
        milestones = list(range(s["start"], 1000, s["step"]))
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=s["gamma"])
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["data"] = data_record(self._trainer)
        checkpoint["rng_seed"] = self._rng_seed
        save_best(self.best, checkpoint)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        check_fits(self, checkpoint["state_dict"], f"ckpt_path={getattr(self._trainer, 'ckpt_path', None)}")
        self._rng_seed = checkpoint.get("rng_seed", self._rng_seed)
        restore_best(self.best, checkpoint)
