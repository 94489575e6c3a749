"""The SSAST transformer baseline: the same tokenizer, then DeiT blocks (timm names, so SSAST
checkpoints convert by renaming prefixes). Attention runs through torch's fused
scaled_dot_product_attention, or explicitly as softmax(QK^T)V like the original, for benchmarks."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from src.models.components.layers import DropPath
from src.models.components.patching import PatchConfig, PatchEncoder
from src.utils.errors import UserError

ATTENTION = ("sdpa", "explicit")


@dataclass
class SSASTConfig(PatchConfig):
    """Everything that defines an SSAST encoder; the defaults are SSAST-tiny. attention: sdpa (torch's
    fused kernels) or explicit (softmax(QK^T)V, as the original)."""

    backbone: ClassVar[str] = "ssast"
    num_heads: int = 3
    depth: int = 12
    mlp_ratio: float = 4.0
    drop_path_rate: float = 0.0
    attention: str = "sdpa"

    def __post_init__(self):
        super().__post_init__()
        if self.attention not in ATTENTION:
            raise UserError(f"attention must be one of {ATTENTION}, got {self.attention!r}")
        if self.embed_dim % self.num_heads:
            raise UserError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")


SSAST_SIZES = {
    name: SSASTConfig(embed_dim=width, num_heads=heads)
    for name, width, heads in (("tiny", 192, 3), ("small", 384, 6), ("base", 768, 12))
}


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, attention: str = "sdpa"):
        super().__init__()
        if attention not in ATTENTION:
            raise ValueError(f"attention must be one of {ATTENTION}, got {attention!r}")
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.attention = attention
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        batch, length, dim = x.shape
        qkv = self.qkv(x).view(batch, length, 3, self.num_heads, dim // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # (B, H, L, Dh) each
        if self.attention == "sdpa":
            out = F.scaled_dot_product_attention(q, k, v)
        else:  # materialises the (B, H, L, L) attention matrix, as SSAST does
            out = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(batch, length, dim))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class TransformerBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, drop_path: float, attention: str):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, attention)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class SSASTEncoder(PatchEncoder):
    def __init__(self, config: SSASTConfig):
        super().__init__(config, num_prefix_tokens=2)
        rates = torch.linspace(0, config.drop_path_rate, config.depth).tolist()
        self.blocks = nn.ModuleList(
            TransformerBlock(config.embed_dim, config.num_heads, config.mlp_ratio, rate, config.attention)
            for rate in rates
        )
        self.norm = nn.LayerNorm(config.embed_dim, eps=1e-6)
        self.apply(_init_vit_weights)

    def set_attention(self, attention: str) -> None:
        self.config = replace(self.config, attention=attention)  # checks the name
        for block in self.blocks:
            block.attn.attention = attention

    def forward(self, x: Tensor, mask: Tensor | None = None, return_hidden: bool = False):
        """x: (B, 1, F, T) -> tokens (B, 2 + L, D): cls and distillation tokens first."""
        hidden = self.embed(x, mask)
        states = []
        for block in self.blocks:
            hidden = block(hidden)
            if return_hidden:
                states.append(hidden)
        out = self.norm(hidden)
        return (out, states) if return_hidden else out


def _init_vit_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
