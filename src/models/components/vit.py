"""The SSAST transformer baseline: the same tokenizer, then DeiT blocks (timm names, so SSAST
checkpoints convert by renaming prefixes). Attention runs through torch's fused
scaled_dot_product_attention, or explicitly as softmax(QK^T)V like the original, for benchmarks."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from src.models.components.encoder import DropPath
from src.models.components.patching import PatchEncoder

SSAST_SIZES = {"tiny": (192, 3), "small": (384, 6), "base": (768, 12)}  # width, heads
ATTENTION = ("sdpa", "explicit")


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
    def __init__(
        self,
        embed_dim: int = 192,
        num_heads: int = 3,
        depth: int = 12,
        mlp_ratio: float = 4.0,
        input_fdim: int = 128,
        input_tdim: int = 1024,
        fshape: int = 16,
        tshape: int = 16,
        fstride: int = 16,
        tstride: int = 16,
        drop_path_rate: float = 0.0,
        attention: str = "sdpa",
        pos_resize: str = "official",
        mask_token: bool = False,
    ):
        super().__init__(embed_dim, 2, input_fdim, input_tdim, fshape, tshape, fstride, tstride, mask_token, pos_resize)
        self.depth = depth
        rates = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.ModuleList(
            TransformerBlock(embed_dim, num_heads, mlp_ratio, rates[i], attention) for i in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.apply(_init_vit_weights)

    def set_attention(self, attention: str) -> None:
        if attention not in ATTENTION:
            raise ValueError(f"attention must be one of {ATTENTION}, got {attention!r}")
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


def build_ssast(size: str = "tiny", **overrides) -> SSASTEncoder:
    if size not in SSAST_SIZES:
        raise ValueError(f"unknown SSAST size {size!r}; choose one of {sorted(SSAST_SIZES)}")
    width, heads = SSAST_SIZES[size]
    return SSASTEncoder(**{"embed_dim": width, "num_heads": heads, **overrides})
