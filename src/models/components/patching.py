"""The tokenizer both encoders share (SSAMBA and the SSAST baseline).

A (B, 1, F, T) fbank is cut into (fshape x tshape) patches by a strided Conv2d; tokens are in
frequency-major order (index = f * t_dim + t), as in the official code. Prefix tokens (cls, and
SSAST's distillation token) go first; a learned absolute positional embedding is added to all.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from src.utils.errors import UserError

POS_RESIZE_RULES = ("official", "fixed")


# the ranges a config's numbers may take: at least 1 (0 for a rate), at most a size no model of
# this project reaches, so that a mistyped value is refused before anything is allocated
LIMITS = {
    "embed_dim": (1, 8192),
    "num_mel_bins": (1, 1024),
    "target_length": (1, 1_000_000),
    "fshape": (1, 1024),
    "tshape": (1, 1024),
    "fstride": (1, 1024),
    "tstride": (1, 1024),
    "depth": (1, 512),
    "d_state": (1, 256),
    "d_conv": (1, 64),
    "expand": (1, 16),
    "num_heads": (1, 256),
    "norm_eps": (1e-12, 1.0),
    "drop_path_rate": (0.0, 0.99),
    "mlp_ratio": (0.01, 64.0),
}
TYPES = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,)}


def check_fields(config) -> None:
    """Every field of an encoder config of its declared type and inside LIMITS: a UserError naming
    the field otherwise (a bad override, or a config.json that is damaged or not this project's)."""
    for f in fields(config):
        value, kinds = getattr(config, f.name), TYPES.get(str(f.type), ())
        if kinds and (not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds)):
            raise UserError(
                f"encoder.{f.name}={value!r} is not {'a' if f.type != 'int' else 'a whole'} "
                f"{'number' if f.type in ('int', 'float') else f.type}"
            )
        low, high = LIMITS.get(f.name, (None, None))
        if low is not None and not low <= value <= high:
            raise UserError(f"encoder.{f.name}={value} is outside {low}..{high}")


def patch_grid(num_mel_bins: int, frames: int, fshape: int, tshape: int, fstride: int, tstride: int):
    """(f_dim, t_dim): how many patches fit along frequency and time."""
    if num_mel_bins < fshape or frames < tshape:
        raise UserError(
            f"input of {num_mel_bins} mel bins x {frames} frames is smaller than one {fshape}x{tshape} patch"
        )
    return (num_mel_bins - fshape) // fstride + 1, (frames - tshape) // tstride + 1


def resize_pos_embed(pos_embed: Tensor, num_prefix: int, src_grid, dst_grid, rule: str = "official") -> Tensor:
    """Adapt a (1, P + f*t, D) positional embedding to another patch grid.

    The official rule (SSAST / SSAMBA fine-tuning): along time, centre-crop if the new grid is
    shorter, else bilinearly interpolate; then the same along frequency. It has two bugs that
    only bite for grids other than 8 frequency rows: the time interpolation hard-codes 8 rows,
    and the frequency crop slices `t_dim` rows instead of `f_dim`. rule="fixed" corrects both.
    Prefix-token embeddings are kept as they are.
    """
    if rule not in POS_RESIZE_RULES:
        raise ValueError(f"pos-embed resize rule must be one of {POS_RESIZE_RULES}, got {rule!r}")
    (src_f, src_t), (f_dim, t_dim) = tuple(src_grid), tuple(dst_grid)
    if (src_f, src_t) == (f_dim, t_dim):
        return pos_embed
    official = rule == "official"
    dim = pos_embed.shape[-1]
    prefix, patches = pos_embed[:, :num_prefix], pos_embed[:, num_prefix:]
    grid = patches.transpose(1, 2).reshape(1, dim, src_f, src_t)  # (1, D, f, t)
    if t_dim < src_t:
        start = src_t // 2 - t_dim // 2
        grid = grid[:, :, :, start : start + t_dim]
    else:
        grid = F.interpolate(grid, size=(8 if official else src_f, t_dim), mode="bilinear")
    if f_dim < src_f:
        start = src_f // 2 - f_dim // 2
        grid = grid[:, :, start : start + (t_dim if official else f_dim), :]
    else:
        grid = F.interpolate(grid, size=(f_dim, t_dim), mode="bilinear")
    if grid.shape[-2:] != (f_dim, t_dim):
        raise UserError(
            f"the official positional-embedding rule cannot map a {src_f}x{src_t} patch grid to "
            f"{f_dim}x{t_dim} (it hard-codes 8 frequency rows and crops {t_dim} rows); "
            "set pos_resize=fixed in the encoder config"
        )
    return torch.cat([prefix, grid.reshape(1, dim, f_dim * t_dim).transpose(1, 2)], dim=1)


class PatchEmbed(nn.Module):
    def __init__(self, embed_dim: int, fshape: int, tshape: int, fstride: int, tstride: int):
        super().__init__()
        self.proj = nn.Conv2d(1, embed_dim, kernel_size=(fshape, tshape), stride=(fstride, tstride))

    def forward(self, x: Tensor) -> Tensor:
        """(B, 1, F, T) -> (B, f_dim * t_dim, D), frequency-major."""
        return self.proj(x).flatten(2).transpose(1, 2)


@dataclass
class PatchConfig:
    """The tokenizer's settings, shared by every backbone's config. target_length: fbank frames per
    input (the data config's `target_length`); num_mel_bins: fbank rows."""

    embed_dim: int = 192
    num_mel_bins: int = 128
    target_length: int = 1024
    fshape: int = 16
    tshape: int = 16
    fstride: int = 16
    tstride: int = 16
    pos_resize: str = "official"  # official | fixed: resize_pos_embed's rule
    mask_token: bool = False  # the SSL mask embedding

    def __post_init__(self):
        check_fields(self)
        if self.pos_resize not in POS_RESIZE_RULES:
            raise UserError(f"pos_resize must be one of {POS_RESIZE_RULES}, got {self.pos_resize!r}")
        patch_grid(self.num_mel_bins, self.target_length, self.fshape, self.tshape, self.fstride, self.tstride)

    def to_dict(self) -> dict:
        """What exports and checkpoints save: the backbone and every field."""
        return {"backbone": self.backbone, **asdict(self)}


class PatchEncoder(nn.Module):
    """Patch embedding, prefix tokens, positional and mask embeddings; subclasses add the blocks."""

    def __init__(self, config: PatchConfig, num_prefix_tokens: int):
        super().__init__()
        self.config = config
        self.embed_dim = config.embed_dim
        self.num_prefix_tokens = num_prefix_tokens
        self.patch_embed = PatchEmbed(config.embed_dim, config.fshape, config.tshape, config.fstride, config.tstride)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.embed_dim))
        if num_prefix_tokens == 2:  # SSAST's DeiT distillation token
            self.dist_token = nn.Parameter(torch.zeros(1, 1, config.embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_prefix_tokens + self.num_patches, config.embed_dim))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if num_prefix_tokens == 2:
            nn.init.trunc_normal_(self.dist_token, std=0.02)
        mask_embed = nn.init.xavier_normal_(torch.zeros(1, 1, config.embed_dim))
        self.mask_embed = nn.Parameter(mask_embed) if config.mask_token else None

    @property
    def patch_shape(self) -> tuple[int, int]:
        return self.config.fshape, self.config.tshape

    @property
    def patch_stride(self) -> tuple[int, int]:
        return self.config.fstride, self.config.tstride

    @property
    def input_shape(self) -> tuple[int, int]:
        return self.config.num_mel_bins, self.config.target_length

    @property
    def grid(self) -> tuple[int, int]:
        return self.grid_for(*self.input_shape)

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    def grid_for(self, num_mel_bins: int, frames: int):
        return patch_grid(num_mel_bins, frames, *self.patch_shape, *self.patch_stride)

    def embed(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """(B, 1, F, T) fbank -> (B, P + L, D) tokens with positions; mask (B, L) True = masked."""
        if x.dim() != 4 or x.shape[1] != 1:
            raise ValueError(f"expected a (batch, 1, mel bins, frames) fbank, got shape {tuple(x.shape)}")
        tokens = self.patch_embed(x)  # (B, L, D)
        if mask is not None:
            if self.mask_embed is None:
                raise ValueError("this encoder was built without a mask embedding; set mask_token=True")
            if mask.shape != tokens.shape[:2]:
                raise ValueError(f"mask shape {tuple(mask.shape)} does not match the {tuple(tokens.shape[:2])} patches")
            tokens = torch.where(mask.unsqueeze(-1), self.mask_embed.to(tokens.dtype), tokens)
        prefix = [self.cls_token] + ([self.dist_token] if self.num_prefix_tokens == 2 else [])
        prefix = torch.cat(prefix, dim=1).expand(tokens.shape[0], -1, -1).to(tokens.dtype)
        tokens = torch.cat([prefix, tokens], dim=1)  # (B, P + L, D)
        grid = self.grid_for(x.shape[2], x.shape[3])
        pos = resize_pos_embed(self.pos_embed, self.num_prefix_tokens, self.grid, grid, self.config.pos_resize)
        return tokens + pos.to(tokens.dtype)

    @torch.no_grad()
    def resize_input(self, target_length: int, fstride: int | None = None, tstride: int | None = None):
        """Rebuild for another input length or patch stride, as fine-tuning does: the patch kernel is
        copied into a conv with the new stride and the positional embedding is cut/interpolated."""
        old_grid = self.grid
        config = replace(
            self.config,
            target_length=target_length,
            fstride=fstride or self.config.fstride,
            tstride=tstride or self.config.tstride,
        )
        new_grid = patch_grid(config.num_mel_bins, target_length, *self.patch_shape, config.fstride, config.tstride)
        old = self.patch_embed.proj
        new = PatchEmbed(self.embed_dim, *self.patch_shape, config.fstride, config.tstride)
        new = new.to(old.weight.device, old.weight.dtype)
        new.proj.weight.copy_(old.weight)
        new.proj.bias.copy_(old.bias)
        pos = resize_pos_embed(self.pos_embed.data, self.num_prefix_tokens, old_grid, new_grid, config.pos_resize)
        self.patch_embed = new
        self.pos_embed = nn.Parameter(pos.clone())
        self.config = config
        return self
