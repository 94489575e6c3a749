"""The bimamba-v2 mixer from in_proj's output to out_proj's input as one autograd Function on the
Triton kernels: mamba-ssm's mamba_inner_fn, for both directions at once.

    xz: (B, L, 2E) = [x | z]   conv_weight: (S, E, K)   conv_bias: (S, E)   x_proj: (S, R + 2N, E)
    dt_proj: (S, E, R)   A: (S, E, N)   D, dt_bias: (S, E)   ->   y: (B, L, E) = scale * sum over sets

Forward: u = silu(conv(x)) per set; [dt | B | C] = u x_proj^T; delta = dt dt_proj^T; every set's
gated scan; the sets summed. For the backward it keeps xz, [dt | B | C] and the scan's state every
64 steps, and recomputes u and delta (a conv and a thin matmul): no (S, B, L, E) tensor is stored.
`scale` (1/2 when the mixer averages the directions) goes into C's rows of x_proj and into D, so
each set's y comes out already scaled: exact, as scaling by a power of two is.
"""

from __future__ import annotations

import torch
from torch import Tensor

from src.models.components.conv_triton import conv_backward, conv_forward, reverse_mask
from src.models.components.scan_triton import default_tilings, scan_backward, scan_forward

ALIGN = 8  # x_proj's dt rows are padded to a multiple of this, so B's and C's rows start 16-byte aligned


def _projection(x_proj: Tensor, dt_rank: int, scale: float, dtype: torch.dtype) -> Tensor:
    """(S, R + 2N, E) -> (S, R' + 2N, E) in dtype: zero rows after dt's up to R' = a multiple of
    ALIGN, C's rows times scale."""
    sets, rows, dim = x_proj.shape
    pad = -dt_rank % ALIGN
    out = x_proj.new_zeros(sets, rows + pad, dim, dtype=dtype)
    out[:, :dt_rank] = x_proj[:, :dt_rank]
    n = (rows - dt_rank) // 2
    out[:, dt_rank + pad : dt_rank + pad + n] = x_proj[:, dt_rank : dt_rank + n]
    out[:, dt_rank + pad + n :] = x_proj[:, dt_rank + n :] * scale
    return out


def _weight_grad(grad_out: Tensor, inp: Tensor) -> Tensor:
    """sum over rows of grad_out^T inp: (S, M, O), (S, M, I) -> (S, O, I) in fp32. One mm per set:
    for these thin outputs and long sums cuBLAS splits the sum for mm, not always for bmm (dt_proj's
    gradient at batch 64: 0.36 ms as one bmm, 0.07 ms as two mm on an H100)."""
    return torch.stack([torch.mm(g.t(), x) for g, x in zip(grad_out, inp)]).float()


class BiMambaInner(torch.autograd.Function):
    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, xz, conv_weight, conv_bias, x_proj, dt_proj, A, D, dt_bias, reverse, dt_rank, scale, keep):
        batch, length, two_e = xz.shape
        sets, dim, d_state = A.shape[0], two_e // 2, A.shape[2]
        dtype = xz.dtype
        x, z = xz[..., :dim], xz[..., dim:]  # (B, L, E) views
        conv_w, conv_b = conv_weight.float().contiguous(), conv_bias.float().contiguous()
        w_x = _projection(x_proj, dt_rank, scale, dtype)  # (S, R' + 2N, E)
        w_dt = dt_proj.to(dtype)  # (S, E, R)
        A_t = A.float().transpose(1, 2).contiguous()  # (S, N, E): channels contiguous, as the scan reads it
        D_s, bias = (D.float() * scale).contiguous(), dt_bias.float().contiguous()
        tilings = default_tilings(sets, batch, dim, length)
        rev = reverse_mask(reverse)

        u = conv_forward(x, conv_w, conv_b, rev)  # (S, B, L, E)
        x_dbl = torch.bmm(u.view(sets, -1, dim), w_x.transpose(1, 2))  # (S, B*L, R' + 2N)
        delta = torch.bmm(x_dbl[..., :dt_rank], w_dt.transpose(1, 2))  # (S, B*L, E)
        B, C = _states_in(x_dbl, d_state, batch, length)  # (S, B, L, N) views
        y, ckpt = scan_forward(
            u, delta.view(u.shape), A_t, B, C, D_s, z, bias, reverse, True, tilings[0], checkpoints=keep
        )  # (S, B, L, E)
        if keep:
            ctx.save_for_backward(xz, conv_w, conv_b, w_x, w_dt, A_t, D_s, bias, x_dbl, ckpt)
            ctx.config = (reverse, rev, dt_rank, scale, tilings[1])
        return y.sum(0)  # (B, L, E)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, dy):
        xz, conv_w, conv_b, w_x, w_dt, A_t, D_s, bias, x_dbl, ckpt = ctx.saved_tensors
        reverse, rev, dt_rank, scale, tiling = ctx.config
        batch, length, two_e = xz.shape
        sets, d_state, dim = A_t.shape
        x, z = xz[..., :dim], xz[..., dim:]
        dy = dy.contiguous()

        # recompute what the forward did not keep
        u = conv_forward(x, conv_w, conv_b, rev)  # (S, B, L, E)
        dt = x_dbl[..., :dt_rank]  # (S, B*L, R)
        delta = torch.bmm(dt, w_dt.transpose(1, 2))  # (S, B*L, E)
        B, C = _states_in(x_dbl, d_state, batch, length)

        dxz = torch.empty_like(xz)
        du, ddelta, dA_t, dB, dC, dD_s, _, dbias = scan_backward(
            dy.expand(sets, *dy.shape), ckpt, u, delta.view(u.shape), A_t, B, C, D_s, z, bias, reverse, True,
            tiling, dz=dxz[..., dim:],
        )  # fmt: skip
        # through delta = dt w_dt^T and [dt | B | C] = u w_x^T
        ddelta = ddelta.view(sets, -1, dim)  # (S, B*L, E)
        dx_dbl = torch.zeros_like(x_dbl)  # (S, B*L, R' + 2N)
        dx_dbl[..., :dt_rank] = torch.bmm(ddelta, w_dt)
        b_at = x_dbl.shape[-1] - 2 * d_state
        dx_dbl[..., b_at : b_at + d_state] = dB.view(sets, -1, d_state)
        dx_dbl[..., b_at + d_state :] = dC.view(sets, -1, d_state)
        du = du.view(sets, -1, dim).baddbmm_(dx_dbl, w_x)  # (S, B*L, E)
        d_w_dt = _weight_grad(ddelta, dt)  # (S, E, R)
        d_w_x = _weight_grad(dx_dbl, u.view(sets, -1, dim))  # (S, R' + 2N, E)
        d_x_proj = torch.cat(
            [d_w_x[:, :dt_rank], d_w_x[:, b_at : b_at + d_state], d_w_x[:, b_at + d_state :] * scale], 1
        )
        _, d_conv_w, d_conv_b = conv_backward(x, conv_w, conv_b, rev, du.view(u.shape), dx=dxz[..., :dim])
        # scan_backward gives A's gradient as (S, E, N), A's own layout
        return dxz, d_conv_w, d_conv_b, d_x_proj, d_w_dt, dA_t, dD_s * scale, dbias, None, None, None, None


def _states_in(x_dbl: Tensor, d_state: int, batch: int, length: int) -> tuple[Tensor, Tensor]:
    """B and C, (S, B, L, N) views of x_dbl's last 2N columns."""
    sets, _, width = x_dbl.shape
    rows = x_dbl.view(sets, batch, length, width)
    return rows[..., width - 2 * d_state : width - d_state], rows[..., width - d_state :]


def bimamba_inner_triton(
    xz: Tensor,
    conv_weight: Tensor,
    conv_bias: Tensor,
    x_proj: Tensor,
    dt_proj: Tensor,
    A: Tensor,
    D: Tensor,
    dt_bias: Tensor,
    reverse: tuple[bool, ...],
    dt_rank: int,
    scale: float = 1.0,
) -> Tensor:
    """scale * the sum over sets of each set's gated scan; shapes in the module docstring."""
    if xz.stride(-1) != 1:
        xz = xz.contiguous()
    keep = torch.is_grad_enabled() and any(
        t.requires_grad for t in (xz, conv_weight, conv_bias, x_proj, dt_proj, A, D, dt_bias)
    )
    return BiMambaInner.apply(
        xz, conv_weight, conv_bias, x_proj, dt_proj, A, D, dt_bias, tuple(reverse), dt_rank, scale, keep
    )
