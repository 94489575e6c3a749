"""The bimamba-v2 mixer from in_proj's input to out_proj's input as one autograd Function on the
Triton kernels: mamba-ssm's mamba_inner_fn, for both directions at once, in_proj included.

    hidden: (B, L, d)   in_weight: (2E, d)   in_bias: (2E,) or None   conv_weight: (S, E, K)
    conv_bias: (S, E)   x_proj: (S, R' + 2N, E)   dt_proj: (S, E, R')   A: (S, N, E)   D, dt_bias: (S, E)
    ->   y: (B, L, E), the sum over sets

in the layout BiMambaMixer.kernel_weights gives them (dt_rank padded to R' with zero rows of x_proj
and zero columns of dt_proj, for alignment).
Forward: xz = [x | z] = in_proj(hidden); u = silu(conv(x)) per set; x_dbl = [dt | B | C] = u x_proj^T;
delta = dt dt_proj^T; every set's gated scan; the sets summed. For the backward it keeps hidden,
x_dbl and the scan's state every ckpt_every steps, and recomputes xz, u and delta (in_proj's matmul,
a conv and a thin matmul): no (B, L, 2E) or (S, B, L, E) tensor is stored. xz is the largest
activation a layer would keep (twice the sum over sets out_proj keeps); its recompute is one
matmul of d x 2E.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from src.kernels.conv_triton import conv_backward, conv_forward, reverse_mask
from src.kernels.scan_triton import default_tilings, scan_backward, scan_forward, sum_sets


def _weight_grad(grad_out: Tensor, inp: Tensor) -> Tensor:
    """sum over rows of grad_out^T inp: (S, M, O), (S, M, I) -> (S, O, I). One mm per set: for these
    thin outputs and long sums cuBLAS splits the sum for mm, not always for bmm (dt_proj's gradient at
    batch 64: 0.36 ms as one bmm, 0.07 ms as two mm on an H100)."""
    return torch.stack([torch.mm(g.t(), x) for g, x in zip(grad_out, inp)])


class BiMambaInner(torch.autograd.Function):
    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(
        ctx, hidden, in_weight, in_bias, conv_weight, conv_bias, x_proj, dt_proj, A, D, dt_bias, reverse, keep
    ):  # fmt: skip
        batch, length, _ = hidden.shape
        sets, d_state, dim = A.shape
        dt_rank = dt_proj.shape[2]  # R', padded
        rev = reverse_mask(reverse)

        xz = F.linear(hidden, in_weight, in_bias)  # (B, L, 2E), in the autocast dtype where autocast is on
        x, z = xz[..., :dim], xz[..., dim:]  # (B, L, E) views
        u = conv_forward(x, conv_weight, conv_bias, rev)  # (S, B, L, E)
        tilings = default_tilings(sets, batch, dim, length, u.dtype)
        x_dbl = torch.bmm(u.view(sets, -1, dim), x_proj.transpose(1, 2))  # (S, B*L, R' + 2N)
        delta = torch.bmm(x_dbl[..., :dt_rank], dt_proj.transpose(1, 2))  # (S, B*L, E)
        B, C = _states_in(x_dbl, d_state, batch, length)  # (S, B, L, N) views
        y, ckpt = scan_forward(
            u, delta.view(u.shape), A, B, C, D, z, dt_bias, reverse, True, tilings[0], checkpoints=keep
        )  # (S, B, L, E)
        if keep:
            weights = (in_weight, in_bias, conv_weight, conv_bias, x_proj, dt_proj, A, D, dt_bias)
            ctx.save_for_backward(hidden, *weights, x_dbl, ckpt)
            ctx.config = (reverse, rev, tilings[1])
        return sum_sets(y)  # (B, L, E)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, dy):
        hidden, in_weight, in_bias, conv_weight, conv_bias, x_proj, dt_proj, A, D, dt_bias, x_dbl, ckpt = (
            ctx.saved_tensors
        )
        reverse, rev, tiling = ctx.config
        batch, length, _ = hidden.shape
        sets, d_state, dim = A.shape
        dt_rank = dt_proj.shape[2]
        dy = dy.contiguous()

        # recompute what the forward did not keep (autocast as in the forward: custom_bwd)
        xz = F.linear(hidden, in_weight, in_bias)  # (B, L, 2E)
        x, z = xz[..., :dim], xz[..., dim:]
        u = conv_forward(x, conv_weight, conv_bias, rev)  # (S, B, L, E)
        dt = x_dbl[..., :dt_rank]  # (S, B*L, R')
        delta = torch.bmm(dt, dt_proj.transpose(1, 2))  # (S, B*L, E)
        B, C = _states_in(x_dbl, d_state, batch, length)

        dxz = torch.empty_like(xz)
        dx_dbl = torch.empty_like(x_dbl)  # (S, B*L, R' + 2N) = [ddt | dB | dC]
        dB, dC = _states_in(dx_dbl, d_state, batch, length)
        du, ddelta, dA, _, _, dD, _, d_dt_bias = scan_backward(
            dy.expand(sets, *dy.shape), ckpt, u, delta.view(u.shape), A, B, C, D, z, dt_bias, reverse, True,
            tiling, dz=dxz[..., dim:], dB=dB, dC=dC,
        )  # fmt: skip
        # through delta = dt dt_proj^T and x_dbl = [dt | B | C] = u x_proj^T
        ddelta = ddelta.view(sets, -1, dim)  # (S, B*L, E)
        torch.bmm(ddelta, dt_proj, out=dx_dbl[..., :dt_rank])  # written in place, ldc = R' + 2N
        du = du.view(sets, -1, dim).baddbmm_(dx_dbl, x_proj)  # (S, B*L, E)
        d_dt_proj = _weight_grad(ddelta, dt)  # (S, E, R'), zero past R
        d_x_proj = _weight_grad(dx_dbl, u.view(sets, -1, dim))  # (S, R' + 2N, E)
        _, d_conv_weight, d_conv_bias = conv_backward(
            x, conv_weight, conv_bias, rev, du.view(u.shape), dx=dxz[..., :dim]
        )
        # through xz = hidden in_weight^T + in_bias (in_weight in xz's dtype: kernel_weights cast it)
        rows = dxz.view(-1, dxz.shape[-1])  # (B*L, 2E)
        d_hidden = torch.mm(rows, in_weight).view(hidden.shape)  # (B, L, d)
        d_in_weight = torch.mm(rows.t(), hidden.reshape(rows.shape[0], -1).to(rows.dtype))  # (2E, d)
        d_in_bias = None if in_bias is None else rows.sum(0)
        grads = (d_conv_weight, d_conv_bias, d_x_proj, d_dt_proj, dA.transpose(1, 2), dD, d_dt_bias)
        return (d_hidden, d_in_weight, d_in_bias, *grads, None, None)


def _states_in(x_dbl: Tensor, d_state: int, batch: int, length: int) -> tuple[Tensor, Tensor]:
    """B and C, (S, B, L, N) views of x_dbl's last 2N columns."""
    sets, _, width = x_dbl.shape
    rows = x_dbl.view(sets, batch, length, width)
    return rows[..., width - 2 * d_state : width - d_state], rows[..., width - d_state :]


def bimamba_inner_triton(
    hidden: Tensor,
    in_weight: Tensor,
    in_bias: Tensor | None,
    conv_weight: Tensor,
    conv_bias: Tensor,
    x_proj: Tensor,
    dt_proj: Tensor,
    A: Tensor,
    D: Tensor,
    dt_bias: Tensor,
    reverse: tuple[bool, ...],
) -> Tensor:
    """The sum over sets of each set's gated scan; shapes in the module docstring."""
    inputs = (hidden, in_weight, in_bias, conv_weight, conv_bias, x_proj, dt_proj, A, D, dt_bias)
    keep = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs)
    return BiMambaInner.apply(*inputs, tuple(reverse), keep)
