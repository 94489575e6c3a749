"""Optimiser pieces both LightningModules use: the official warm-up and Adam/AdamW from plain dicts
(plain values, not partials, so checkpoints stay loadable with weights_only=True)."""

from __future__ import annotations

import math
import warnings

import torch

from src.utils.errors import UserError

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}


def make_optimizer(param_groups, name: str, lr: float, weight_decay: float = 0.0, betas=(0.9, 0.999)):
    """Adam or AdamW as a recipe's model.optimizer names it (configs/model/*.yaml hold the values;
    weight_decay and betas default to torch's); on CUDA parameters its fused kernel (one launch per
    step for every tensor, where the default foreach implementation launches per group of tensors
    and per operation)."""
    if name not in OPTIMIZERS:
        raise UserError(f"unknown optimizer {name!r}; choose one of {sorted(OPTIMIZERS)}")
    if lr < 0:
        raise UserError(f"the learning rate is {lr}; set model.optimizer.lr to a positive value")
    if lr == 0:
        warnings.warn("the learning rate is 0: the weights will not change (model.optimizer.lr)", stacklevel=2)
    param_groups = list(param_groups)
    params = [p for g in param_groups for p in (g["params"] if isinstance(g, dict) else [g])]
    fused = bool(params) and all(p.is_cuda for p in params)
    return OPTIMIZERS[name](param_groups, lr=lr, weight_decay=weight_decay, betas=tuple(betas), fused=fused or None)


def reseed_step(base_seed: int, step: int, rank: int) -> None:
    """The global RNGs from (seed, step, rank), before a training step: drop path and dropout draw
    the same in a run resumed from a checkpoint as in the uninterrupted run (Lightning does not
    restore the RNGs, and every start reseeds them)."""
    torch.manual_seed((base_seed * 1_000_003 + 7_919 * rank + step) % 2**63)


def warmup_factor(step: int, warmup_steps: int, staircase: bool = True) -> float:
    """Official warm-up: lr = step / warmup_steps * lr, updated every 50 steps (a staircase that
    starts at 0); staircase=False ramps every step and starts at 1 / warmup_steps."""
    if warmup_steps <= 0 or step >= warmup_steps:
        return 1.0
    if staircase:
        return (step // 50 * 50) / warmup_steps
    return (step + 1) / warmup_steps


def apply_warmup(optimizer, step: int, warmup_steps: int, staircase: bool = True) -> None:
    """Scale every group's lr from its `base_lr` while warming up (call before each step)."""
    if warmup_steps <= 0 or step > warmup_steps:
        return
    factor = warmup_factor(step, warmup_steps, staircase)
    for group in optimizer.param_groups:
        lr = group["lr"]
        if "base_lr" not in group:
            group["base_lr"] = float(lr)  # read once; a tensor lr would alias it
        if isinstance(lr, torch.Tensor):  # a capturable optimizer's (CUDA graphs): written in place
            lr.fill_(group["base_lr"] * factor)
        else:
            group["lr"] = group["base_lr"] * factor


def cosine_factor(step: int, total_steps: int, warmup_steps: int) -> float:
    """Linear warm-up then cosine decay to zero."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return 0.5 * (1 + math.cos(math.pi * progress))


def optimizer_settings(optimizer: dict | None) -> dict:
    """A module's model.optimizer, which the recipe's YAML sets (its one home); a module built
    without one can run but not train."""
    if not optimizer:
        raise UserError(
            "model.optimizer is not set: give {name, lr, ...} as configs/model/ssl.yaml and finetune.yaml do"
        )
    return dict(optimizer)
