"""The depthwise conv + silu that feeds each set's scan, in Triton, in the (B, L, E) layout.

    x: (B, L, E), shared   weight: (S, E, K)   bias: (S, E)   ->   u: (S, B, L, E)
    u_s[t] = silu(bias_s + sum_k weight_s[k] x[t + shift_k]),   shift_k = k - (K - 1)

A set whose `reverse` bit is set uses shift_k = (K - 1) - k: the anti-causal conv, which is what the
causal conv of the flipped sequence reads, without flipping. The forward runs in one launch over
(batch, time tiles, channel blocks); the backward in two: the gradient of each set's pre-activation
(recomputed from x) with per-program sums for the weight and bias gradients, then the gradient of
x from it.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

TILE_T, BLOCK_E = 32, 64
GRAD_TILES = 8  # time tiles per program of the weight-gradient pass: its sums are reduced once per 8 tiles


@triton.jit
def _pre(x_ptr, w_ptr, bias, t, d, length, dim, sx_l, step, w_at, TT: tl.constexpr, BE: tl.constexpr, K: tl.constexpr):
    """bias + sum_j w[j] x[t + step * (j - (K - 1))]: the pre-activation at times t, (TT, BE)."""
    acc = tl.zeros((TT, BE), dtype=tl.float32) + bias[None, :]
    for j in tl.static_range(K):
        src = t + step * (j - (K - 1))
        ok = (src >= 0) & (src < length)
        xv = tl.load(x_ptr + src[:, None] * sx_l + d[None, :], mask=ok[:, None] & (d < dim)[None, :], other=0.0)
        acc += tl.load(w_ptr + w_at + j, mask=d < dim, other=0.0)[None, :] * xv.to(tl.float32)
    return acc


@triton.jit
def _conv_fwd_kernel(
    x_ptr, w_ptr, bias_ptr, u_ptr, sets, length, dim, rev_mask, sx_b, sx_l,
    TT: tl.constexpr, BE: tl.constexpr, K: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0)
    t = tl.program_id(1) * TT + tl.arange(0, TT)
    d = tl.program_id(2) * BE + tl.arange(0, BE)
    m = (t < length)[:, None] & (d < dim)[None, :]
    x_ptr += b.to(tl.int64) * sx_b
    for s in range(sets):
        step = 1 - 2 * ((rev_mask >> s) & 1)  # +1: causal; -1: anti-causal
        bias = tl.load(bias_ptr + s * dim + d, mask=d < dim, other=0.0)
        pre = _pre(x_ptr, w_ptr, bias, t, d, length, dim, sx_l, step, (s * dim + d) * K, TT, BE, K)
        out = u_ptr + ((s * tl.num_programs(0) + b).to(tl.int64) * length + t[:, None]) * dim + d[None, :]
        tl.store(out, (pre * tl.sigmoid(pre)).to(u_ptr.dtype.element_ty), mask=m)


@triton.jit
def _conv_grad_pre_kernel(
    x_ptr, w_ptr, bias_ptr, du_ptr, g_ptr, dw_ptr, dbias_ptr, sets, length, dim, rev_mask,
    sx_b, sx_l, sdu_s, sdu_b, sdu_l,
    TT: tl.constexpr, BE: tl.constexpr, K: tl.constexpr, TILES: tl.constexpr,
):  # fmt: skip
    """g_s = du_s * silu'(pre_s) (fp32, (S, B, L, E)) over TILES time tiles, and per program the sums
    that give the weight and bias gradients: sum_t g_s[t] x[t + shift_k] and sum_t g_s[t], kept per
    element across the tiles and reduced over time once at the end."""
    b = tl.program_id(0)
    d = tl.program_id(2) * BE + tl.arange(0, BE)
    d_ok = d < dim
    x_ptr += b.to(tl.int64) * sx_b
    program = b * tl.num_programs(1) + tl.program_id(1)
    for s in range(sets):
        step = 1 - 2 * ((rev_mask >> s) & 1)
        bias = tl.load(bias_ptr + s * dim + d, mask=d_ok, other=0.0)
        w_at = (s * dim + d) * K
        dw = ()
        for _k in tl.static_range(K):
            dw = dw + (tl.zeros((TT, BE), dtype=tl.float32),)
        dbias = tl.zeros((TT, BE), dtype=tl.float32)
        for j in range(TILES):
            t = (tl.program_id(1) * TILES + j) * TT + tl.arange(0, TT)
            m = (t < length)[:, None] & d_ok[None, :]
            pre = _pre(x_ptr, w_ptr, bias, t, d, length, dim, sx_l, step, w_at, TT, BE, K)
            sig = tl.sigmoid(pre)
            du_at = s * sdu_s + b.to(tl.int64) * sdu_b + t[:, None] * sdu_l + d[None, :]
            du = tl.load(du_ptr + du_at, mask=m, other=0.0)
            g = tl.where(m, du.to(tl.float32) * sig * (1.0 + pre * (1.0 - sig)), 0.0)
            g_at = ((s * tl.num_programs(0) + b).to(tl.int64) * length + t[:, None]) * dim + d[None, :]
            tl.store(g_ptr + g_at, g, mask=m)
            summed = ()
            for k in tl.static_range(K):
                src = t + step * (k - (K - 1))
                ok = (src >= 0) & (src < length)
                xv = tl.load(x_ptr + src[:, None] * sx_l + d[None, :], mask=ok[:, None] & d_ok[None, :], other=0.0)
                summed = summed + (dw[k] + g * xv.to(tl.float32),)
            dw = summed
            dbias += g
        part = (program * sets + s) * dim + d
        for k in tl.static_range(K):
            tl.store(dw_ptr + part * K + k, tl.sum(dw[k], axis=0), mask=d_ok)
        tl.store(dbias_ptr + part, tl.sum(dbias, axis=0), mask=d_ok)


@triton.jit
def _conv_grad_x_kernel(
    g_ptr, w_ptr, dx_ptr, sets, length, dim, rev_mask, sdx_b, sdx_l, TT: tl.constexpr, BE: tl.constexpr, K: tl.constexpr
):
    """dx[t] = sum_s sum_k weight_s[k] g_s[t - shift_k]: x[t] feeds u_s at t - shift_k through tap k."""
    b = tl.program_id(0)
    t = tl.program_id(1) * TT + tl.arange(0, TT)
    d = tl.program_id(2) * BE + tl.arange(0, BE)
    d_ok = d < dim
    dx = tl.zeros((TT, BE), dtype=tl.float32)
    for s in range(sets):
        step = 1 - 2 * ((rev_mask >> s) & 1)
        g_s = g_ptr + (s * tl.num_programs(0) + b).to(tl.int64) * length * dim
        for k in tl.static_range(K):
            p = t - step * (k - (K - 1))
            ok = (p >= 0) & (p < length)
            g = tl.load(g_s + p[:, None] * dim + d[None, :], mask=ok[:, None] & d_ok[None, :], other=0.0)
            dx += tl.load(w_ptr + (s * dim + d) * K + k, mask=d_ok, other=0.0)[None, :] * g
    m = (t < length)[:, None] & d_ok[None, :]
    dx_ptr += b.to(tl.int64) * sdx_b + t[:, None] * sdx_l + d[None, :]
    tl.store(dx_ptr, dx.to(dx_ptr.dtype.element_ty), mask=m)


def _grid(batch: int, length: int, dim: int) -> tuple[int, int, int]:
    return batch, triton.cdiv(length, TILE_T), triton.cdiv(dim, BLOCK_E)


def conv_forward(x: Tensor, weight: Tensor, bias: Tensor, rev_mask: int) -> Tensor:
    """u (S, B, L, E) in x's dtype from x (B, L, E) (unit last stride), weight (S, E, K) and bias
    (S, E) fp32 contiguous; bit s of rev_mask set: set s is anti-causal."""
    batch, length, dim = x.shape
    sets, _, width = weight.shape
    u = torch.empty(sets, batch, length, dim, device=x.device, dtype=x.dtype)
    _conv_fwd_kernel[_grid(batch, length, dim)](
        x, weight, bias, u, sets, length, dim, rev_mask, x.stride(0), x.stride(1), TT=TILE_T, BE=BLOCK_E, K=width
    )
    return u


def conv_backward(
    x: Tensor, weight: Tensor, bias: Tensor, rev_mask: int, du: Tensor, dx: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of x, weight and bias from du (S, B, L, E) (unit last stride); dx may be given as
    a (B, L, E) view to write into (unit last stride, e.g. a slice of dxz)."""
    batch, length, dim = x.shape
    sets, _, width = weight.shape
    grid = _grid(batch, length, dim)
    pre_grid = (batch, triton.cdiv(grid[1], GRAD_TILES), grid[2])
    programs = batch * pre_grid[1]
    g = torch.empty(sets, batch, length, dim, device=x.device, dtype=torch.float32)
    dw = torch.empty(programs, sets, dim, width, device=x.device, dtype=torch.float32)
    dbias = torch.empty(programs, sets, dim, device=x.device, dtype=torch.float32)
    _conv_grad_pre_kernel[pre_grid](
        x, weight, bias, du, g, dw, dbias, sets, length, dim, rev_mask, x.stride(0), x.stride(1),
        du.stride(0), du.stride(1), du.stride(2), TT=TILE_T, BE=BLOCK_E, K=width, TILES=GRAD_TILES,
    )  # fmt: skip
    if dx is None:
        dx = torch.empty(batch, length, dim, device=x.device, dtype=x.dtype)
    _conv_grad_x_kernel[grid](
        g, weight, dx, sets, length, dim, rev_mask, dx.stride(0), dx.stride(1), TT=TILE_T, BE=BLOCK_E, K=width
    )
    return dx, dw.sum(0), dbias.sum(0)


def reverse_mask(reverse) -> int:
    """The bit mask the kernels take: bit s set when set s runs backwards."""
    return sum(1 << i for i, r in enumerate(reverse) if r)


class Conv1dSiluTriton(torch.autograd.Function):
    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor, reverse: tuple[bool, ...]) -> Tensor:
        if x.stride(-1) != 1:
            x = x.contiguous()
        weight, bias = weight.float().contiguous(), bias.float().contiguous()
        ctx.save_for_backward(x, weight, bias)
        ctx.rev_mask = reverse_mask(reverse)
        return conv_forward(x, weight, bias, ctx.rev_mask)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, du: Tensor):
        x, weight, bias = ctx.saved_tensors
        dx, dw, dbias = conv_backward(x, weight, bias, ctx.rev_mask, du if du.stride(-1) == 1 else du.contiguous())
        return dx, dw, dbias, None


def conv1d_silu_triton(x: Tensor, weight: Tensor, bias: Tensor, reverse: tuple[bool, ...]) -> Tensor:
    """x (B, L, E), weight (S, E, K), bias (S, E) -> silu(conv) per set, (S, B, L, E) in x's dtype."""
    return Conv1dSiluTriton.apply(x, weight, bias, tuple(reverse))
