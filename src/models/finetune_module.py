"""Fine-tuning: the encoder, pooled, under a LayerNorm + Linear head (the official mlp_head).

`FinetuneModule` does the work; one thin subclass per task names its loss, metric and defaults,
taken from the official recipes (official_ssamba.md 3.3) and SUPERB for SID / ER / KS1.
The encoder starts from an SSL checkpoint or export (its patch kernel copied into the fine-tuning
stride, its positional embedding cut or interpolated, as the official code does), from scratch,
or frozen as a linear probe.
"""

from __future__ import annotations

import logging

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification import MulticlassAccuracy, MultilabelAveragePrecision

from src.models.components import build_encoder
from src.models.export import encoder_from_checkpoint, load_strict
from src.models.optim import apply_warmup, make_optimizer

log = logging.getLogger(__name__)


class FinetuneModule(L.LightningModule):
    LOSS = "ce"  # "ce": cross-entropy on argmax(target); "bce": BCE with (soft) multi-hot targets
    MULTILABEL = False  # metric: mAP if multi-label, else accuracy
    NUM_CLASSES: int | None = None

    def __init__(
        self,
        encoder: dict,
        num_classes: int | None = None,
        pretrained: str | None = None,
        input_tdim: int = 1024,
        input_fdim: int = 128,
        fstride: int = 10,
        tstride: int = 10,
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
        """encoder: build_encoder kwargs, used when not starting from `pretrained` (a .ckpt of
        SSLModule or an export folder), whose own encoder config then wins. num_classes: None
        takes the count from the datamodule, else the task's NUM_CLASSES. lr_schedule: MultiStepLR
        per epoch with milestones range(start, 1000, step) and gamma (official). loss: "ce" or
        "bce"; None keeps the task's recipe (LOSS)."""
        super().__init__()
        if pooling not in ("mean", "cls"):
            raise ValueError(f"pooling must be 'mean' or 'cls', got {pooling!r}")
        if loss not in (None, "ce", "bce"):
            raise ValueError(f"loss must be 'ce' or 'bce', got {loss!r}")
        self.loss_name = loss or self.LOSS
        self.save_hyperparameters(logger=False)
        if pretrained:
            config, state = encoder_from_checkpoint(pretrained)
            config.pop("mask_token", None)
            self.encoder = build_encoder(**config)
            dropped = load_strict(self.encoder, state, pretrained, allow_unexpected=("mask_embed",))
            log.info("loaded the encoder from %s (not used for fine-tuning: %s)", pretrained, dropped or "nothing")
        else:
            self.encoder = build_encoder(**encoder)
        self.encoder.resize_input(input_fdim, input_tdim, fstride, tstride)
        # checkpoints describe the encoder they hold (so they load without the pretrained file)
        self.hparams.encoder = dict(self.encoder.config)
        self.hparams.pretrained, self.hparams.pretrained_from = None, pretrained
        if freeze_encoder:
            self.encoder.requires_grad_(False)
        self.head: nn.Module | None = None
        self.optimizer_cfg = {"name": "adam", "lr": 1e-4, "weight_decay": 5e-7, "betas": (0.95, 0.999)}
        self.optimizer_cfg.update(optimizer or {})
        self.lr_schedule = {"start": 1000, "step": 1, "gamma": 1.0, **(lr_schedule or {})}
        self.metric_name = "mAP" if self.MULTILABEL else "acc"
        self.losses = nn.ModuleDict({f"{s}_loss": MeanMetric() for s in ("train", "val", "test")})
        self.best = MaxMetric()
        self.num_prefix_tokens = self.encoder.num_prefix_tokens
        if num_classes:
            self._build_head(num_classes)

    def _build_head(self, num_classes: int) -> None:
        self.hparams.num_classes = num_classes  # saved in checkpoints, so they rebuild the same head
        dim = self.encoder.embed_dim
        self.head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, num_classes))
        make = (
            (lambda: MultilabelAveragePrecision(num_labels=num_classes, average="macro"))
            if self.MULTILABEL
            else (lambda: MulticlassAccuracy(num_classes=num_classes, average="micro"))
        )
        self.scores = nn.ModuleDict({f"{s}_score": make() for s in ("train", "val", "test")})

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        n = getattr(datamodule, "num_classes", None)
        if self.head is None:
            self._build_head(n or self.NUM_CLASSES)
        elif n is not None and n != self.hparams.num_classes:
            raise ValueError(
                f"the model has {self.hparams.num_classes} classes but the data has {n}; fix model.num_classes"
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
        target = (batch["target"] > 0.5).int() if self.MULTILABEL else batch["target"].argmax(-1)
        preds = torch.sigmoid(logits) if self.MULTILABEL else logits
        self.scores[f"{stage}_score"](preds.detach().float(), target)
        on_step = stage == "train"
        self.log(f"{stage}/loss", self.losses[f"{stage}_loss"], on_step=on_step, on_epoch=True, prog_bar=True)
        self.log(
            f"{stage}/{self.metric_name}", self.scores[f"{stage}_score"], on_step=False, on_epoch=True, prog_bar=True
        )
        return loss

    def on_train_start(self) -> None:
        self.best.reset()

    def on_train_batch_start(self, batch, batch_idx) -> None:
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
        lr = self.optimizer_cfg["lr"]
        groups = [{"params": head, "lr": lr * self.hparams.head_lr_mult}]
        if encoder:
            groups.insert(0, {"params": encoder, "lr": lr})
        optimizer = make_optimizer(groups, **self.optimizer_cfg)
        s = self.lr_schedule
        milestones = list(range(s["start"], 1000, s["step"]))
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=s["gamma"])
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}


class KS2Module(FinetuneModule):
    """Speech Commands v2, 35 words. Official recipe: BCE on mixup-soft labels, accuracy."""

    LOSS, NUM_CLASSES = "bce", 35


class SC30Module(FinetuneModule):
    """Speech Commands v1, the 30-word task of SSAMBA's scripts: BCE, accuracy."""

    LOSS, NUM_CLASSES = "bce", 30


class KS1Module(FinetuneModule):
    """SUPERB keyword spotting (v1, 10 words + unknown + silence): cross-entropy, accuracy."""

    LOSS, NUM_CLASSES = "ce", 12


class ESC50Module(FinetuneModule):
    """ESC-50 environmental sounds, 50 classes, 5-fold CV: cross-entropy, accuracy."""

    LOSS, NUM_CLASSES = "ce", 50


class AudioSetModule(FinetuneModule):
    """AudioSet (AS-20K / AS-2M), 527 labels: BCE, mean average precision."""

    LOSS, NUM_CLASSES, MULTILABEL = "bce", 527, True


class SIDModule(FinetuneModule):
    """VoxCeleb1 speaker identification, 1251 speakers: cross-entropy, accuracy."""

    LOSS, NUM_CLASSES = "ce", 1251


class ERModule(FinetuneModule):
    """IEMOCAP emotion recognition, 4 classes, leave-one-session-out: cross-entropy, accuracy."""

    LOSS, NUM_CLASSES = "ce", 4


class US8KModule(FinetuneModule):
    """UrbanSound8K, 10 classes, 10-fold CV: cross-entropy, accuracy."""

    LOSS, NUM_CLASSES = "ce", 10
