"""The SSAMBA audio encoder: patch tokens -> bidirectional Mamba blocks -> norm.

Every user of the encoder (SSL, fine-tuning, embeddings, benchmarks) calls this one forward.
The official code's quirks are flags (docs/official.md §2, §3, §8); the
`official` preset reproduces them so released checkpoints give the same outputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn
from torch import Tensor

from src.kernels import add_norm
from src.models.components.bimamba import BiMambaMixer
from src.models.components.layers import DropPath
from src.models.components.patching import PatchConfig, PatchEncoder
from src.utils.errors import UserError


@dataclass
class SSAMBAConfig(PatchConfig):
    """Everything that defines an SSAMBA encoder; the defaults are SSAMBA-tiny with the official
    quirks. pair_flip: the official `if_bidirectional` stack: layers run in pairs, the second of a
    pair on the reversed sequence, and their outputs and residuals are summed. double_final_norm:
    the official forwards apply norm_f twice to the output."""

    backbone: ClassVar[str] = "ssamba"
    depth: int = 24
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    norm: str = "layernorm"  # layernorm | rmsnorm
    norm_eps: float = 1e-5
    drop_path_rate: float = 0.1
    residual_in_fp32: bool = False
    divide_out: bool = True
    pair_flip: bool = True
    double_final_norm: bool = True
    backward_dt_init: str = "zero"  # zero (official) | mamba

    def __post_init__(self):
        super().__post_init__()
        if self.pair_flip and self.depth % 2:
            raise UserError(f"pair_flip needs an even depth, got {self.depth}")
        if self.norm not in ("layernorm", "rmsnorm"):
            raise UserError(f"norm must be 'layernorm' or 'rmsnorm', got {self.norm!r}")


SSAMBA_SIZES = {name: SSAMBAConfig(embed_dim=width) for name, width in (("tiny", 192), ("small", 384), ("base", 768))}
QUIRKS = {
    # what the released SSAMBA checkpoints were trained with
    "official": dict(pair_flip=True, double_final_norm=True, backward_dt_init="zero", pos_resize="official"),
    # the same blocks without the quirks: plain bimamba-v2 stack, one final norm, symmetric init
    "clean": dict(pair_flip=False, double_final_norm=False, backward_dt_init="mamba", pos_resize="fixed"),
}


def make_norm(kind: str, dim: int, eps: float) -> nn.Module:
    if kind == "layernorm":
        return nn.LayerNorm(dim, eps=eps)
    if kind == "rmsnorm":
        return nn.RMSNorm(dim, eps=eps)
    raise UserError(f"norm must be 'layernorm' or 'rmsnorm', got {kind!r}")


def norm_step(
    hidden: Tensor,
    residual: Tensor | None,
    norm: nn.Module,
    drop_path: DropPath,
    residual_in_fp32: bool,
    out_dtype=None,
) -> tuple[Tensor, Tensor]:
    """The residual stream's step: residual + drop_path(hidden) (hidden alone for the first layer),
    then norm: src.kernels' add_norm with this norm's weights. Returns (normed, residual)."""
    scale = drop_path.scales(hidden) if residual is not None else None
    rms = isinstance(norm, nn.RMSNorm)
    bias = getattr(norm, "bias", None)
    return add_norm(hidden, residual, norm.weight, bias, norm.eps, rms, scale, residual_in_fp32, out_dtype)


class MambaBlock(nn.Module):
    """Add -> norm -> mixer, with the residual stream carried separately (Vim's Block)."""

    def __init__(self, dim: int, mixer: BiMambaMixer, norm: nn.Module, drop_path: float, residual_in_fp32: bool):
        super().__init__()
        self.mixer = mixer
        self.norm = norm
        self.drop_path = DropPath(drop_path)
        self.residual_in_fp32 = residual_in_fp32

    def forward(self, hidden: Tensor, residual: Tensor | None, reverse: bool = False):
        """reverse=True: this block as if run on the flipped sequence, results in the original order."""
        normed, residual = norm_step(hidden, residual, self.norm, self.drop_path, self.residual_in_fp32)
        return self.mixer(normed, reverse=reverse), residual


class SSAMBAEncoder(PatchEncoder):
    def __init__(self, config: SSAMBAConfig):
        super().__init__(config, num_prefix_tokens=1)
        depth, dim = config.depth, config.embed_dim
        # Vim's schedule: layer i gets [0, linspace(0, rate, depth)...][i]; the final add gets `rate`
        rates = [0.0] + torch.linspace(0, config.drop_path_rate, depth).tolist()
        self.layers = nn.ModuleList(
            MambaBlock(
                dim,
                BiMambaMixer(
                    dim,
                    d_state=config.d_state,
                    d_conv=config.d_conv,
                    expand=config.expand,
                    divide_out=config.divide_out,
                    backward_dt_init=config.backward_dt_init,
                    n_layer=depth,
                ),
                make_norm(config.norm, dim, config.norm_eps),
                drop_path=rates[i],
                residual_in_fp32=config.residual_in_fp32,
            )
            for i in range(depth)
        )
        self.drop_path = DropPath(config.drop_path_rate)
        self.norm_f = make_norm(config.norm, dim, config.norm_eps)

    def forward(self, x: Tensor, mask: Tensor | None = None, return_hidden: bool = False):
        """x: (B, 1, F, T) fbank; mask: (B, L) bool, True = replaced by the mask embedding.

        Returns tokens (B, 1 + L, D) with the cls token first; with return_hidden also the list of
        the residual stream after every layer (every pair with pair_flip), each (B, 1 + L, D)."""
        hidden, residual = self.embed(x, mask), None  # (B, 1 + L, D)
        states = []
        if self.config.pair_flip:
            for fwd, bwd in zip(self.layers[0::2], self.layers[1::2]):
                # the second layer of a pair reads the sequence reversed (official if_bidirectional)
                hidden_f, residual_f = fwd(hidden, residual)
                hidden_b, residual_b = bwd(hidden, residual, reverse=True)
                hidden, residual = hidden_f + hidden_b, residual_f + residual_b
                if return_hidden:
                    states.append(residual + hidden)
        else:
            for layer in self.layers:
                hidden, residual = layer(hidden, residual)
                if return_hidden:
                    states.append(residual + hidden)
        out, _ = norm_step(hidden, residual, self.norm_f, self.drop_path, False, out_dtype=self.norm_f.weight.dtype)
        if self.config.double_final_norm:
            out = self.norm_f(out)
        return (out, states) if return_hidden else out
