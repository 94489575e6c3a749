"""Bidirectional Mamba mixer, "bimamba v2" as Vim and SSAMBA define it.

One in_proj, out_proj and z gate are shared; the forward and the reversed sequence each have their
own conv1d, x_proj, dt_proj, A_log and D (the reversed ones end in `_b`). Parameter names equal
the official ones, so an official checkpoint converts by renaming prefixes only.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from src.models.components.scan import causal_conv1d, selective_scan, use_bidirectional_kernel

BACKWARD_DT_INITS = ("zero", "mamba")


class BiMambaMixer(nn.Module):
    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | str = "auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        divide_out: bool = True,
        backward_dt_init: str = "zero",
        n_layer: int = 24,
    ):
        """backward_dt_init: "zero" leaves dt_proj_b.bias at 0 (softplus 0.693) as the official
        code does; "mamba" gives it the same log-uniform [dt_min, dt_max] init as dt_proj.
        n_layer scales out_proj's init by 1/sqrt(n_layer) (Vim's rescale_prenorm_residual)."""
        super().__init__()
        if backward_dt_init not in BACKWARD_DT_INITS:
            raise ValueError(f"backward_dt_init must be one of {BACKWARD_DT_INITS}, got {backward_dt_init!r}")
        self.d_model = d_model
        self.d_state = d_state
        self.d_inner = expand * d_model
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.divide_out = divide_out
        d_inner = self.d_inner

        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=bias)
        # forward direction
        self.conv1d = nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner, padding=d_conv - 1, bias=conv_bias)
        self.x_proj = nn.Linear(d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, d_inner, bias=True)
        self.A_log = nn.Parameter(_s4d_real_A_log(d_inner, d_state))
        self.D = nn.Parameter(torch.ones(d_inner))
        # backward direction (reads the sequence reversed)
        self.conv1d_b = nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner, padding=d_conv - 1, bias=conv_bias)
        self.x_proj_b = nn.Linear(d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj_b = nn.Linear(self.dt_rank, d_inner, bias=True)
        self.A_b_log = nn.Parameter(_s4d_real_A_log(d_inner, d_state))
        self.D_b = nn.Parameter(torch.ones(d_inner))
        self.out_proj = nn.Linear(d_inner, d_model, bias=bias)

        # initialisation as Mamba + Vim's _init_weights leave it (official_ssamba.md 1.7)
        dt_std = self.dt_rank**-0.5
        with torch.no_grad():
            nn.init.uniform_(self.dt_proj.weight, -dt_std, dt_std)
            self.dt_proj.bias.copy_(_inverse_softplus_dt(d_inner, dt_min, dt_max, dt_init_floor))
            if backward_dt_init == "mamba":
                nn.init.uniform_(self.dt_proj_b.weight, -dt_std, dt_std)
                self.dt_proj_b.bias.copy_(_inverse_softplus_dt(d_inner, dt_min, dt_max, dt_init_floor))
            else:
                self.dt_proj_b.bias.zero_()
            for linear in (self.in_proj, self.out_proj):
                if linear.bias is not None:
                    linear.bias.zero_()
            nn.init.kaiming_uniform_(self.out_proj.weight, a=math.sqrt(5))
            self.out_proj.weight /= math.sqrt(n_layer)
        for p in (self.A_log, self.A_b_log, self.D, self.D_b):
            p._no_weight_decay = True
        # scan directions of (fwd, bwd) parameter sets: row 0 normal, row 1 reversed (a buffer, so
        # CUDA-graph capture never copies from the host)
        self.register_buffer("directions", torch.tensor([[0, 1], [1, 0]], dtype=torch.int32), persistent=False)

    def forward(self, hidden_states: Tensor, reverse: bool = False) -> Tensor:
        """(B, L, d_model) -> (B, L, d_model). reverse=True gives flip(mixer(flip(x))) (the official
        layer-pair flipping) without flipping: each parameter set scans the other way."""
        if use_bidirectional_kernel(hidden_states):
            return self._forward_one_launch(hidden_states, reverse)
        if reverse:
            return self.forward(hidden_states.flip(1)).flip(1)
        xz = self.in_proj(hidden_states).transpose(1, 2)  # (B, 2E, L)
        x, z = xz.chunk(2, dim=1)  # (B, E, L) each
        y_fwd = self._scan(x, z, self.conv1d, self.x_proj, self.dt_proj, self.A_log, self.D)
        y_bwd = self._scan(x.flip(-1), z.flip(-1), self.conv1d_b, self.x_proj_b, self.dt_proj_b, self.A_b_log, self.D_b)
        y = y_fwd + y_bwd.flip(-1)  # (B, E, L)
        if self.divide_out:
            y = y / 2
        return self.out_proj(y.transpose(1, 2))  # (B, L, d_model)

    def _forward_one_launch(self, hidden_states: Tensor, reverse: bool) -> Tensor:
        """Inference on CUDA: both directions in one Triton launch, the backward one as an
        anti-causal conv and a right-to-left scan, so nothing is flipped."""
        from src.models.components.triton_scan import bidirectional_scan

        xz = self.in_proj(hidden_states).transpose(1, 2)  # (B, 2E, L)
        x, z = xz.chunk(2, dim=1)  # (B, E, L) each
        sets = ((self.conv1d, self.x_proj, self.dt_proj), (self.conv1d_b, self.x_proj_b, self.dt_proj_b))
        us, dts, Bs, Cs = [], [], [], []
        for backwards, (conv1d, x_proj, dt_proj) in zip((reverse, not reverse), sets):
            u = _directional_conv(x, conv1d, backwards)  # (B, E, L)
            dt, B, C = x_proj(u.transpose(1, 2)).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
            us.append(u)
            dts.append(F.linear(dt, dt_proj.weight).transpose(1, 2))  # (B, E, L)
            Bs.append(B.transpose(1, 2))  # (B, N, L)
            Cs.append(C.transpose(1, 2))
        y = bidirectional_scan(
            torch.stack(us),
            torch.stack(dts),
            torch.stack(Bs),
            torch.stack(Cs),
            z,
            -torch.exp(torch.stack([self.A_log, self.A_b_log]).float()),
            torch.stack([self.D, self.D_b]),
            torch.stack([self.dt_proj.bias, self.dt_proj_b.bias]),
            self.directions[int(reverse)],
        ).sum(0)  # (B, E, L)
        if self.divide_out:
            y = y / 2
        return self.out_proj(y.transpose(1, 2))

    def _scan(self, x, z, conv1d, x_proj, dt_proj, A_log, D) -> Tensor:
        """One direction: conv -> x_proj -> (dt, B, C) -> selective scan gated by silu(z); (B, E, L)."""
        x = causal_conv1d(x, conv1d.weight, conv1d.bias)  # (B, E, L)
        x_dbl = x_proj(x.transpose(1, 2))  # (B, L, R + 2N)
        dt, B, C = x_dbl.split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.linear(dt, dt_proj.weight).transpose(1, 2)  # (B, E, L); bias goes in as delta_bias
        A = -torch.exp(A_log.float())  # (E, N)
        return selective_scan(
            x,
            dt,
            A,
            B.transpose(1, 2),  # (B, N, L)
            C.transpose(1, 2),  # (B, N, L)
            D.float(),
            z=z,
            delta_bias=dt_proj.bias.float(),
            delta_softplus=True,
        )


def _directional_conv(x: Tensor, conv1d: nn.Conv1d, backwards: bool) -> Tensor:
    """silu(depthwise conv): causal, or anti-causal (what the causal conv of a flipped sequence is,
    read back in the original order)."""
    width = conv1d.weight.shape[-1]
    weight = conv1d.weight.flip(-1) if backwards else conv1d.weight
    y = F.conv1d(x, weight.to(x.dtype), conv1d.bias.to(x.dtype), padding=width - 1, groups=x.shape[1])
    return F.silu(y[..., width - 1 :] if backwards else y[..., : x.shape[-1]])


def _s4d_real_A_log(d_inner: int, d_state: int) -> Tensor:
    return torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(d_inner, 1)  # (E, N)


def _inverse_softplus_dt(d_inner: int, dt_min: float, dt_max: float, floor: float) -> Tensor:
    """Bias whose softplus is log-uniform in [dt_min, dt_max] (Mamba's dt init)."""
    dt = torch.exp(torch.rand(d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(min=floor)
    return dt + torch.log(-torch.expm1(-dt))
