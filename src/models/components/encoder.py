"""The SSAMBA audio encoder: patch tokens -> bidirectional Mamba blocks -> norm.

Every user of the encoder (SSL, fine-tuning, embeddings, benchmarks) calls this one forward.
The official code's quirks are flags (docs/official.md §2, §3, §8); the
`official` preset reproduces them so released checkpoints give the same outputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn
from torch import Tensor

from src.kernels import add_norm, add_norm_pair
from src.models.components.bimamba import BiMambaMixer
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
    scale: Tensor | None,
    residual_in_fp32: bool,
    out_dtype=None,
) -> tuple[Tensor, Tensor]:
    """The residual stream's step: residual + scale * hidden (hidden alone for the first layer; scale:
    drop path's (B,), or None), then norm: src.kernels' add_norm with this norm's weights. Returns
    (normed, residual)."""
    scale = scale if residual is not None else None
    rms = isinstance(norm, nn.RMSNorm)
    bias = getattr(norm, "bias", None)
    return add_norm(hidden, residual, norm.weight, bias, norm.eps, rms, scale, residual_in_fp32, out_dtype)


def pair_norm_step(
    hidden_f: Tensor,
    hidden_b: Tensor | None,
    residual: Tensor | None,
    first: MambaBlock,
    second: MambaBlock,
    scales: Sequence[Tensor | None],
) -> tuple[Tensor, Tensor, Tensor]:
    """norm_step of both layers of a pair_flip pair, which read the same stream: hidden = hidden_f +
    hidden_b (the previous pair's outputs; hidden_f alone for the first pair), each layer its own
    drop-path scales and norm; the pair's residual stream is the sum of the two layers'. src.kernels'
    add_norm_pair: one kernel each way on Triton. Returns (normed_f, normed_b, residual)."""
    norm_f, norm_b = first.norm, second.norm  # one config builds both: the same kind and eps
    biases = None if getattr(norm_f, "bias", None) is None else (norm_f.bias, norm_b.bias)
    rms = isinstance(norm_f, nn.RMSNorm)
    weights = (norm_f.weight, norm_b.weight)
    scales = None if residual is None or scales[0] is None else tuple(scales)
    return add_norm_pair(hidden_f, hidden_b, residual, weights, biases, norm_f.eps, rms, scales, first.residual_in_fp32)


class MambaBlock(nn.Module):
    """Add -> norm -> mixer, with the residual stream carried separately (Vim's Block). Its drop path's
    scales come from the encoder, which draws every layer's at once."""

    def __init__(self, dim: int, mixer: BiMambaMixer, norm: nn.Module, residual_in_fp32: bool):
        super().__init__()
        self.mixer = mixer
        self.norm = norm
        self.residual_in_fp32 = residual_in_fp32

    def forward(self, hidden: Tensor, residual: Tensor | None, scale: Tensor | None = None, reverse: bool = False):
        """scale: drop path's (B,) or None. reverse=True: this block as if run on the flipped sequence,
        results in the original order."""
        normed, residual = norm_step(hidden, residual, self.norm, scale, self.residual_in_fp32)
        return self.mixer(normed, reverse=reverse), residual


class SSAMBAEncoder(PatchEncoder):
    def __init__(self, config: SSAMBAConfig):
        super().__init__(config, num_prefix_tokens=1)
        depth, dim = config.depth, config.embed_dim
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
                residual_in_fp32=config.residual_in_fp32,
            )
            for _ in range(depth)
        )
        self.norm_f = make_norm(config.norm, dim, config.norm_eps)

    def forward(self, x: Tensor, mask: Tensor | None = None, return_hidden: bool = False):
        """x: (B, 1, F, T) fbank; mask: (B, L) bool, True = replaced by the mask embedding.

        Returns tokens (B, 1 + L, D) with the cls token first; with return_hidden also the list of
        the residual stream after every layer (every pair with pair_flip), each (B, 1 + L, D)."""
        hidden, residual = self.embed(x, mask), None  # (B, 1 + L, D)
        scales = self.drop_path_scales(hidden)  # (depth + 1, B): every layer's, then the final add's
        scales = [None] * (len(self.layers) + 1) if scales is None else list(scales)
        states = []
        if self.config.pair_flip:
            hidden_b = None  # the pair's second output; the first pair reads the embedding alone
            for i, (fwd, bwd) in enumerate(zip(self.layers[0::2], self.layers[1::2])):
                # both layers read hidden + hidden_b added to the stream; the second reads the sequence
                # reversed (official if_bidirectional)
                pair_scales = scales[2 * i : 2 * i + 2]
                normed_f, normed_b, residual = pair_norm_step(hidden, hidden_b, residual, fwd, bwd, pair_scales)
                hidden, hidden_b = fwd.mixer(normed_f), bwd.mixer(normed_b, reverse=True)
                if return_hidden:
                    states.append(residual + (hidden + hidden_b))
            hidden = hidden + hidden_b
        else:
            for layer, scale in zip(self.layers, scales):
                hidden, residual = layer(hidden, residual, scale)
                if return_hidden:
                    states.append(residual + hidden)
        out_dtype = self.norm_f.weight.dtype
        out, _ = norm_step(hidden, residual, self.norm_f, scales[-1], False, out_dtype=out_dtype)
        if self.config.double_final_norm:
            out = self.norm_f(out)
        return (out, states) if return_hidden else out

    def drop_path_rates(self, device=None) -> Tensor:
        """Each layer's drop-path rate, then the final add's, (depth + 1,): Vim's schedule, layer i
        [0, linspace(0, rate, depth)...][i], the final add `rate` (linspace's last). Made on device
        (no host copy: the CUDA graph captures it)."""
        rate, depth = self.config.drop_path_rate, self.config.depth
        return torch.cat([torch.zeros(1, device=device), torch.linspace(0, rate, depth, device=device)])

    def drop_path_scales(self, hidden: Tensor) -> Tensor | None:
        """Stochastic depth for every layer and the final add at once, (depth + 1, B) fp32: keep / (1 -
        p), keep ~ Bernoulli(1 - p) per sample (timm's drop_path; one draw for all, where a draw a layer
        costs three small kernels a layer); None in eval or at rate 0."""
        if not self.training or self.config.drop_path_rate == 0:
            return None
        keep_prob = (1 - self.drop_path_rates(hidden.device))[:, None]  # (depth + 1, 1)
        return torch.bernoulli(keep_prob.expand(-1, hidden.shape[0])) / keep_prob
