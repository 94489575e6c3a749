"""Self-supervised pretraining: masked spectrogram patch modelling (SSAST/SSAMBA, docs/official.md §5-§7).

Masked patches are replaced by a learned mask embedding; from the encoder's outputs at those
positions a discriminative head predicts the patch among the clip's masked patches (InfoNCE) and
a generative head reconstructs it (MSE). loss = nce + gen_weight * mse.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import lightning as L
import torch
from safetensors.torch import load_file
from torch import Tensor, nn
from torchmetrics import MaxMetric, MeanMetric

from src.models.components import as_config, build_encoder
from src.models.components.bimamba import weights_stacked_once
from src.models.components.losses import info_nce, masked_mse, patchify
from src.models.components.masking import make_mask, mask_indices, most_masked
from src.models.hub import resolve
from src.models.optim import apply_warmup, cosine_factor, make_optimizer, optimizer_settings, reseed_step
from src.models.pretrained import (
    build_pretrained,
    check_backbone,
    check_fits,
    data_record,
    load_strict,
    read_pretrained,
    save_encoder,
)
from src.models.resume import restore_best, save_best
from src.utils.devices import autocast_dtype
from src.utils.errors import UserError


def prediction_head(dim: int, out: int) -> nn.Sequential:
    """Linear-ReLU-Linear, as the official cpredlayer / gpredlayer."""
    return nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, out))


class SSLModule(L.LightningModule):
    def __init__(
        self,
        encoder: dict,
        mask_patches: int = 400,
        val_mask_patches: int | None = None,
        masking: str = "official",
        nce_softmax_dim: int = -1,
        gen_weight: float = 10.0,
        two_passes: bool = True,
        optimizer: dict | None = None,
        scheduler: dict | None = None,
        warmup_steps: int = 1000,
        staircase_warmup: bool = True,
        export_dir: str | None = None,
        compile: bool = False,
        init_from: str | None = None,
        cuda_graph: bool | str = "auto",
    ):
        """encoder: the encoder config (a recipe for encoder_config, or a saved config dict).
        masking: official | official_loop | cluster | random (components/masking.py). two_passes: the
        official two encoder passes with independent masks (one per objective), or one shared pass.
        val_mask_patches: None for mask_patches (the official code always validates with 400, which
        configs/model/ssl.yaml sets). optimizer: {name, lr, weight_decay, betas} (make_optimizer);
        configs/model/ssl.yaml holds the recipe's values, the module none of its own. scheduler:
        {"name": "plateau", "factor", "patience"} (official, on val/acc at every validation),
        {"name": "cosine"}, or {"name": "none"} (None: none). compile: torch.compile
        the heads and losses (`objective`) for training. init_from: an export folder to continue SSL
        from (src/export.py, or src.models.convert of an official pretraining checkpoint): its encoder
        with the mask embedding, and the heads from heads.safetensors when it is there. cuda_graph:
        the training step's forward and backward replayed as CUDA graphs (_graphed_losses); "auto" on
        CUDA in one process without gradient accumulation, true also under DDP, false never."""
        if cuda_graph not in ("auto", True, False):
            raise UserError(f"model.cuda_graph={cuda_graph!r}: use auto, true or false")
        super().__init__()
        self.save_hyperparameters(logger=False)
        folder = resolve(init_from) if init_from else None  # a Hub repository id: its folder in the cache
        if init_from:
            saved, state, _ = read_pretrained(folder)
            check_backbone(saved, as_config(encoder), f"model.init_from={init_from}")
            self.encoder = build_pretrained(saved, state, init_from, mask_token=True).train()
            self.hparams.init_from, self.hparams.init_from_path = None, init_from
        else:
            self.encoder = build_encoder(replace(as_config(encoder), mask_token=True))
        # checkpoints describe the encoder they hold (so they load without the export)
        self.hparams.encoder = self.encoder.config.to_dict()
        self._check_mask_counts()
        dim = self.encoder.embed_dim
        patch_values = self.encoder.patch_shape[0] * self.encoder.patch_shape[1]
        self.cpredlayer = prediction_head(dim, patch_values)
        self.gpredlayer = prediction_head(dim, patch_values)
        self.scheduler_cfg = dict(scheduler or {"name": "none"})
        if init_from:
            self._load_heads(folder / "heads.safetensors")
        self.metrics = nn.ModuleDict(
            # nan_strategy="disable": the default's NaN check is a host sync per update (a NaN loss
            # stops the run through StopOnNonFiniteLoss instead)
            {
                f"{s}_{k}": MeanMetric(nan_strategy="disable")
                for s in ("train", "val")
                for k in ("loss", "nce", "mse", "acc")
            }
        )
        self.val_acc_best = MaxMetric()
        # masks are drawn from (seed, rank, step, pass): a resumed run draws the masks it would have
        self._mask_seed = torch.initial_seed() % 2**31

    def _check_mask_counts(self) -> None:
        """Both mask counts fit the input's patches, checked before training rather than at the
        first step (mask_patches) or after a whole epoch (val_mask_patches)."""
        f_dim, t_dim = self.encoder.grid_for(self.encoder.config.num_mel_bins, self.encoder.config.target_length)
        patches = f_dim * t_dim
        most = most_masked(self.hparams.masking, patches)
        for key in ("mask_patches", "val_mask_patches"):
            count = self.hparams[key]
            if count is None and key == "val_mask_patches":
                continue
            if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= most:
                raise UserError(
                    f"model.{key}={count!r}: the input has {patches} patches ({f_dim} x {t_dim} at "
                    f"target_length={self.encoder.config.target_length}); mask between 1 and {most} of them"
                )

    def _load_heads(self, path: Path) -> None:
        """The SSL heads of a converted official checkpoint (official key names: cpredlayer.0.weight, ...)."""
        if not path.exists():
            return
        state = load_file(str(path))
        for name, head in (("cpredlayer", self.cpredlayer), ("gpredlayer", self.gpredlayer)):
            load_strict(head, {k[len(name) + 1 :]: v for k, v in state.items() if k.startswith(name + ".")}, str(path))

    # ---- the objective -------------------------------------------------------------------------
    def masks(self, spec: Tensor, num_mask: int, seed: int | None = None) -> tuple[Tensor, Tensor]:
        """A masked pass's mask (B, L) bool and its masked positions (B, M)."""
        grid = self.encoder.grid_for(spec.shape[2], spec.shape[3])
        mask = make_mask(self.hparams.masking, spec.shape[0], grid, num_mask, seed, spec.device)
        return mask, mask_indices(mask, num_mask)

    def masked_outputs(self, spec: Tensor, mask: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
        """Encoder outputs at the masked positions idx and those patches' true values: (B, M, D), (B, M, P)."""
        tokens = self.encoder(spec, mask=mask)[:, self.encoder.num_prefix_tokens :]  # (B, L, D)
        hidden = tokens.gather(1, idx.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
        patches = patchify(spec, self.encoder.patch_shape, self.encoder.patch_stride)  # (B, L, P)
        target = patches.gather(1, idx.unsqueeze(-1).expand(-1, -1, patches.shape[-1]))
        return hidden, target.detach()

    def losses(self, spec: Tensor, num_mask: int, seed: int | None = None) -> dict[str, Tensor]:
        """seed: masks of the two passes from seed and seed + 1 (None: fresh random masks)."""
        return self.masked_losses(spec, *self._pass_masks(spec, num_mask, seed))

    def _pass_masks(self, spec: Tensor, num_mask: int, seed: int | None) -> tuple[Tensor, ...]:
        """(mask, idx) of the InfoNCE pass, then of the MSE pass (the same with one pass)."""
        first = self.masks(spec, num_mask, seed)
        if not self.hparams.two_passes:
            return (*first, *first)
        return (*first, *self.masks(spec, num_mask, None if seed is None else seed + 1))

    def masked_losses(self, spec: Tensor, mask_nce, idx_nce, mask_mse, idx_mse) -> dict[str, Tensor]:
        """The losses of given masks: the step that a CUDA graph captures (cuda_graph)."""
        with weights_stacked_once(self.encoder):  # the two passes share the mixers' stacked weights
            hidden_nce, target_nce = self.masked_outputs(spec, mask_nce, idx_nce)
            if self.hparams.two_passes:
                hidden_mse, target_mse = self.masked_outputs(spec, mask_mse, idx_mse)
            else:
                hidden_mse, target_mse = hidden_nce, target_nce
        return self.objective(hidden_nce, target_nce, hidden_mse, target_mse)

    def objective(self, hidden_nce: Tensor, target_nce: Tensor, hidden_mse: Tensor, target_mse: Tensor) -> dict:
        """The heads and losses on the masked positions' outputs (B, M, D) and true patches (B, M, P)."""
        nce, acc = info_nce(self.cpredlayer(hidden_nce), target_nce, self.hparams.nce_softmax_dim)
        mse = masked_mse(self.gpredlayer(hidden_mse), target_mse)
        return {"loss": nce + self.hparams.gen_weight * mse, "nce": nce, "mse": mse, "acc": acc}

    # ---- Lightning -----------------------------------------------------------------------------
    def validation_metrics(self, datamodule=None) -> list[str]:
        """What validation logs, the one to monitor first: the masked patches' accuracy."""
        return ["val/acc", "val/acc_best", "val/loss", "val/nce", "val/mse"]

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.trainer.strategy.root_device.type == "cuda":
            self._graph_wanted()  # refuses a graph that cannot work before any step runs
        if self.hparams.compile and stage == "fit":
            # the heads and losses: small ops that inductor fuses; the encoder already runs fused kernels
            self.objective = torch.compile(self.objective)

    def on_train_batch_start(self, batch, batch_idx) -> None:
        reseed_step(self._mask_seed, self.global_step, self.global_rank)
        if self.scheduler_cfg["name"] != "cosine":
            apply_warmup(self.optimizers(), self.global_step, self.hparams.warmup_steps, self.hparams.staircase_warmup)

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        spec, seed = batch["fbank"], self._step_seed(self.global_step)
        if spec.is_cuda and self._graph_wanted():
            out = self._graphed_losses(spec, self.hparams.mask_patches, seed)
        else:
            out = self.losses(spec, self.hparams.mask_patches, seed)
        self._log("train", out, on_step=True)
        return out["loss"]

    def _graph_wanted(self) -> bool:
        """model.cuda_graph for this run: auto is on in one process without gradient accumulation
        (DDP with the graph is not yet measured); true under accumulation is refused, since the
        graph's gradients live in its own memory and each replay would overwrite the last."""
        choice, trainer = self.hparams.cuda_graph, self._trainer
        accumulate = trainer.accumulate_grad_batches if trainer is not None else 1
        if choice == "auto":
            return accumulate == 1 and (trainer is None or trainer.world_size == 1)
        if choice and accumulate > 1:
            raise UserError(
                f"model.cuda_graph=true needs trainer.accumulate_grad_batches=1 (it is {accumulate}); "
                "or set model.cuda_graph=auto"
            )
        return bool(choice)

    def _graphed_losses(self, spec: Tensor, num_mask: int, seed: int) -> dict[str, Tensor]:
        """losses() with masked_losses' forward and backward replayed as CUDA graphs, captured at the
        first call (the batch's shape from then on) after make_graphed_callables' eager warm-up runs,
        which also compile and tune the Triton kernels."""
        args = (spec, *self._pass_masks(spec, num_mask, seed))
        graphed = self.__dict__.get("_graphed")  # kept out of the module tree: it holds this module
        if graphed is None:
            graphed = _MaskedLosses(self, autocast_dtype("cuda", None))
            with torch.autocast("cuda", enabled=False):  # graphs refuse autocast's cache; the step sets its own
                graphed = torch.cuda.make_graphed_callables(graphed, args, allow_unused_input=True)
            self.__dict__["_graphed"] = graphed
        loss, nce, mse, acc = graphed(*args)
        return {"loss": loss, "nce": nce, "mse": mse, "acc": acc}

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        seed = self._step_seed(-1 - batch_idx)  # the same validation masks every time
        out = self.losses(batch["fbank"], self.hparams.val_mask_patches or self.hparams.mask_patches, seed)
        self._log("val", out, on_step=False)

    def _step_seed(self, step: int) -> int:
        return (self._mask_seed * 1_000_003 + 2 * step + 7_919 * self.global_rank) % 2**62

    def _log(self, stage: str, out: dict, on_step: bool) -> None:
        for key, value in out.items():
            metric = self.metrics[f"{stage}_{key}"]
            metric(value.detach())
            # per step not on the bar: Lightning would read it back every batch (StepProgressBar shows it)
            bar = key in ("loss", "acc") and not on_step
            self.log(f"{stage}/{key}", metric, on_step=on_step, on_epoch=True, prog_bar=bar)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:  # the untrained (or resumed) weights: not a score of the run
            return
        acc = self.metrics["val_acc"].compute()
        self.val_acc_best(acc)
        self.log("val/acc_best", self.val_acc_best.compute(), sync_dist=True, prog_bar=True)

    def configure_optimizers(self):
        optimizer = make_optimizer(self.parameters(), **optimizer_settings(self.hparams.optimizer))
        name = self.scheduler_cfg["name"]
        if name == "plateau":
            # official: ReduceLROnPlateau(max) on the masked-patch accuracy after every validation, so
            # it steps as often as validation runs (every val_check_interval batches, or epochs)
            plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode="max", factor=self.scheduler_cfg["factor"], patience=self.scheduler_cfg["patience"]
            )
            every = self.trainer.val_check_interval
            by_steps = isinstance(every, int) and every > 1
            schedule = {
                "scheduler": plateau,
                "monitor": "val/acc",
                "interval": "step" if by_steps else "epoch",
                "frequency": every if by_steps else (self.trainer.check_val_every_n_epoch or 1),
                "strict": False,  # no validation data: the rate stays
            }
            return {"optimizer": optimizer, "lr_scheduler": schedule}
        if name == "cosine":
            total, warmup = self.trainer.estimated_stepping_batches, self.hparams.warmup_steps
            schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: cosine_factor(s, total, warmup))
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
        if name == "none":
            return optimizer
        raise UserError(f"unknown model.scheduler.name {name!r}; use plateau, cosine or none")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["mask_seed"] = self._mask_seed
        save_best(self.val_acc_best, checkpoint)
        checkpoint["data"] = data_record(self._trainer)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        check_fits(self, checkpoint["state_dict"], f"ckpt_path={getattr(self._trainer, 'ckpt_path', None)}")
        self._mask_seed = checkpoint.get("mask_seed", self._mask_seed)
        restore_best(self.val_acc_best, checkpoint)
        if "plateau_scheduler" in checkpoint and not checkpoint.get("lr_schedulers"):
            # checkpoints up to eb12644 kept the plateau scheduler's state under their own key
            checkpoint["lr_schedulers"] = [checkpoint.pop("plateau_scheduler")]

    def on_train_end(self) -> None:
        if self.hparams.export_dir and self.trainer.is_global_zero:
            extra = {"ssl": {"mask_patches": self.hparams.mask_patches}}
            save_encoder(self.encoder, self.hparams.export_dir, data=data_record(self.trainer), extra=extra)


class _MaskedLosses(nn.Module):
    """SSLModule.masked_losses as a module's forward, as make_graphed_callables wants (a module's
    parameters get gradients), under autocast without its weight cache (which graphs refuse)."""

    def __init__(self, module: SSLModule, autocast_dtype: torch.dtype | None):
        super().__init__()
        self.module, self.autocast_dtype = module, autocast_dtype

    def forward(self, spec, mask_nce, idx_nce, mask_mse, idx_mse):
        on = self.autocast_dtype is not None
        with torch.autocast("cuda", dtype=self.autocast_dtype or torch.float32, enabled=on, cache_enabled=False):
            out = self.module.masked_losses(spec, mask_nce, idx_nce, mask_mse, idx_mse)
        return out["loss"], out["nce"], out["mse"], out["acc"]
