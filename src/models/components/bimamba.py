"""Bidirectional Mamba mixer, "bimamba v2" as Vim and SSAMBA define it.

One in_proj, out_proj and z gate are shared; the forward and the reversed sequence each have their
own conv1d, x_proj, dt_proj, A_log and D (the reversed ones end in `_b`). Parameter names equal
the official ones, so an official checkpoint converts by renaming prefixes only.

The stretch from in_proj's input to out_proj's is src.kernels' bimamba_inner: it computes in the
(B, L, E) layout in_proj produces, the two parameter sets stacked in front, (2, B, L, E): no
transposes, and no flips (the reversed set runs an anti-causal conv and a right-to-left scan).
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn as nn
from torch import Tensor

from src.kernels import bimamba_inner
from src.utils.devices import autocast_dtype

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

        # initialisation as Mamba + Vim's _init_weights leave it (docs/official.md §3)
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

    def forward(self, hidden_states: Tensor, reverse: bool = False) -> Tensor:
        """(B, L, d_model) -> (B, L, d_model). reverse=True gives flip(mixer(flip(x))) (the official
        layer-pair flipping) without flipping: each parameter set runs the other way."""
        # set 0 holds conv1d, x_proj, ... and reads forward; set 1 holds the `_b` ones and reads backward
        backwards = (reverse, not reverse)
        # in_proj runs inside: the Triton path recomputes its output in the backward rather than keep it
        weights = self.kernel_weights(autocast_dtype(hidden_states.device.type, hidden_states.dtype))  # xz's dtype
        y = bimamba_inner(hidden_states, *weights, backwards)  # (B, L, E)
        return self.out_proj(y)  # (B, L, d_model)

    def kernel_weights(self, dtype: torch.dtype) -> tuple[Tensor, ...]:
        """in_proj's weight and bias, and both sets' parameters stacked, as the kernels read them:
            in_proj weight (2E, d), bias (2E,) or None                       dtype
            conv weight (2, E, K), conv bias (2, E)                          fp32
            x_proj (2, R' + 2N, E): zero rows after dt's up to R', a multiple
              of 8 (B's and C's columns of x_dbl start 16-byte aligned)      dtype
            dt_proj (2, E, R'): zero columns after R (delta = dt dt_proj^T
              sums over 16-byte rows: cuBLAS's aligned kernels)              dtype
            A = -exp(A_log) (2, N, E), channels contiguous; D, dt bias (2, E)  fp32
        With divide_out, C's rows and D are halved: each set's y comes out halved, the average is a sum
        (exact: halving is). dtype is in_proj's output's (autocast's where it is on): in_proj's weight is
        cast here, once for all the forwards that share the stacking. Differentiable; under no_grad kept
        until a parameter changes, as inference on short inputs is bound by kernel launches. A change is
        a new version of a parameter, or a switch between train() and eval(): CUDA's fused Adam updates
        parameters in place without bumping their versions, and validation after a training epoch must
        see the new weights. With gradients, within weights_stacked_once, stacked once for every forward
        run in it (autograd sums their gradients)."""
        if torch.is_grad_enabled():
            once = self.__dict__.get("_stacked_once")
            if once is None:
                return self._stack_weights(dtype)
            if dtype not in once:
                once[dtype] = self._stack_weights(dtype)
            return once[dtype]
        key = (dtype, *((p.data_ptr(), p._version) for p in self.parameters()))
        if getattr(self, "_weights_cache", (None,))[0] != key:
            self._weights_cache = (key, self._stack_weights(dtype))
        return self._weights_cache[1]

    def train(self, mode: bool = True):
        self._weights_cache = (None,)  # the weights may have changed since they were stacked
        return super().train(mode)

    def _stack_weights(self, dtype: torch.dtype) -> tuple[Tensor, ...]:
        R, N, scale = self.dt_rank, self.d_state, 0.5 if self.divide_out else 1.0
        x_proj = torch.stack([self.x_proj.weight, self.x_proj_b.weight]).to(dtype)  # (2, R + 2N, E)
        pad = x_proj.new_zeros(2, -R % 8, self.d_inner)
        dt_proj = torch.stack([self.dt_proj.weight, self.dt_proj_b.weight]).to(dtype)  # (2, E, R)
        if self.conv1d.bias is None:
            conv_bias = self.A_log.new_zeros(2, self.d_inner)
        else:
            conv_bias = torch.stack([self.conv1d.bias, self.conv1d_b.bias]).float()
        in_bias = None if self.in_proj.bias is None else self.in_proj.bias.to(dtype)
        return (
            self.in_proj.weight.to(dtype),  # (2E, d)
            in_bias,  # (2E,)
            torch.stack([self.conv1d.weight, self.conv1d_b.weight]).squeeze(2).float(),  # (2, E, K)
            conv_bias,  # (2, E)
            torch.cat([x_proj[:, :R], pad, x_proj[:, R : R + N], x_proj[:, R + N :] * scale], dim=1),
            torch.cat([dt_proj, pad.transpose(1, 2)], dim=2),  # (2, E, R')
            -torch.exp(torch.stack([self.A_log, self.A_b_log]).float()).transpose(1, 2).contiguous(),  # (2, N, E)
            torch.stack([self.D, self.D_b]).float() * scale,  # (2, E)
            torch.stack([self.dt_proj.bias, self.dt_proj_b.bias]).float(),  # (2, E)
        )


@contextlib.contextmanager
def weights_stacked_once(module: nn.Module):
    """Every BiMambaMixer in module stacks its weights (kernel_weights) once for all the forwards run
    within, not once a forward: the SSL step's two encoder passes share them, which spares a step
    half of the small kernels that stack the weights and their gradients (a dozen each way a layer)."""
    mixers = [m for m in module.modules() if isinstance(m, BiMambaMixer)]
    for mixer in mixers:
        mixer.__dict__["_stacked_once"] = {}  # kept out of state_dict and the module tree
    try:
        yield
    finally:
        for mixer in mixers:
            mixer.__dict__.pop("_stacked_once", None)


def _s4d_real_A_log(d_inner: int, d_state: int) -> Tensor:
    return torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(d_inner, 1)  # (E, N)


def _inverse_softplus_dt(d_inner: int, dt_min: float, dt_max: float, floor: float) -> Tensor:
    """Bias whose softplus is log-uniform in [dt_min, dt_max] (Mamba's dt init)."""
    dt = torch.exp(torch.rand(d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(min=floor)
    return dt + torch.log(-torch.expm1(-dt))
