"""The depthwise conv + silu that feeds each set's scan, in Triton, in the (B, L, E) layout.

    x: (B, L, E), shared   weight: (S, E, K)   bias: (S, E)   ->   u: (S, B, L, E)
    u_s[t] = silu(bias_s + sum_k weight_s[k] x[t + shift_k]),   shift_k = k - (K - 1)

A set whose `reverse` bit is set uses shift_k = (K - 1) - k: the anti-causal conv, which is what the
causal conv of the flipped sequence reads, without flipping. Each pass is one launch over (batch,
time tiles, channel blocks): the forward writes u; the backward recomputes each set's
pre-activation from x where it needs it and writes the gradient of x and per-program sums for the
weight and bias gradients (_conv_grad_kernel).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

# launch shapes from a sweep on an H100 at (64, 513, 384), two sets: the forward's tile (0.063 ms
# against 0.092 for 32 x 64); the backward's tile (it holds 2K - 1 shifted copies of x and 3K sums
# a thread) and the tiles a program walks, whose weight and bias sums it reduces over time once
# (0.380 ms, against 0.411 for the two kernels before it, and no fp32 (S, B, L, E) gradient)
TILE_T, BLOCK_E = 16, 128
GRAD_TILE_T, GRAD_BLOCK_E, GRAD_WARPS, GRAD_TILES = 8, 64, 4, 8


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
def _set_grad(xs, w_ptr, bias_ptr, du_ptr, t, d, length, dim, s, dx, dw, dbias, STEP: tl.constexpr, K: tl.constexpr):
    """Set s's part of a tile of _conv_grad_kernel (STEP +1 causal, -1 anti-causal): dx plus its
    taps' terms; dw (K sums) and dbias plus its terms at the tile's own times."""
    d_ok = d < dim
    w = ()
    for k in tl.static_range(K):
        w = w + (tl.load(w_ptr + (s * dim + d) * K + k, mask=d_ok, other=0.0)[None, :],)
    bias = tl.load(bias_ptr + s * dim + d, mask=d_ok, other=0.0)[None, :]
    for k in tl.static_range(K):
        p = t + STEP * (K - 1 - k)  # x[t] meets u at p through tap k
        pre = bias
        for i in tl.static_range(K):
            pre = pre + w[i] * xs[K - 1 + STEP * (i - k)]  # x[p + STEP * (i - (K - 1))]
        m = ((p >= 0) & (p < length))[:, None] & d_ok[None, :]
        du = tl.load(du_ptr + p[:, None] * dim + d[None, :], mask=m, other=0.0).to(tl.float32)
        sig = tl.sigmoid(pre)
        g = tl.where(m, du * sig * (1.0 + pre * (1.0 - sig)), 0.0)
        dx += w[k] * g
        if k == K - 1:  # p = t: the weight and bias sums
            summed = ()
            for i in tl.static_range(K):
                summed = summed + (dw[i] + g * xs[K - 1 + STEP * (i - (K - 1))],)
            dw, dbias = summed, dbias + g
    return dx, dw, dbias


@triton.jit
def _conv_grad_kernel(
    x_ptr, w_ptr, bias_ptr, du_ptr, dx_ptr, dw_ptr, dbias_ptr, length, dim, sx_b, sx_l, sdx_b, sdx_l,
    SETS: tl.constexpr, REV0: tl.constexpr, REV1: tl.constexpr,
    TT: tl.constexpr, BE: tl.constexpr, K: tl.constexpr, TILES: tl.constexpr,
):  # fmt: skip
    """One pass over TILES time tiles of (batch, channel block). Per tile, x at the 2K - 1 shifts
    -(K-1)..K-1 (one load each, kept in registers) gives every set's pre-activation at the tile's
    times shifted by each tap, hence g_s = du_s * silu'(pre_s) there, and
        dx[t] = sum_s sum_k weight_s[k] g_s[t - shift_k]        (x[t] feeds u_s at t - shift_k)
    is written at once, with no g in memory; per program, the sums that give the weight and bias
    gradients, sum_t g_s[t] x[t + shift_k] and sum_t g_s[t], are reduced over time at the end.
    du: (S, B, L, E) contiguous, S = SETS <= 2; REV0, REV1: whether set 0, 1 is anti-causal."""
    b = tl.program_id(0)
    d = tl.program_id(2) * BE + tl.arange(0, BE)
    d_ok = d < dim
    x_ptr += b.to(tl.int64) * sx_b
    dx_ptr += b.to(tl.int64) * sdx_b
    du0 = du_ptr + b.to(tl.int64) * length * dim
    du1 = du_ptr + (tl.num_programs(0) + b).to(tl.int64) * length * dim
    dw0, dw1 = (), ()
    for _ in tl.static_range(K):
        dw0, dw1 = dw0 + (tl.zeros((TT, BE), dtype=tl.float32),), dw1 + (tl.zeros((TT, BE), dtype=tl.float32),)
    dbias0, dbias1 = tl.zeros((TT, BE), dtype=tl.float32), tl.zeros((TT, BE), dtype=tl.float32)
    for j in range(TILES):
        t = (tl.program_id(1) * TILES + j) * TT + tl.arange(0, TT)
        xs = ()  # xs[K - 1 + o] = x[t + o]
        for o in tl.static_range(-(K - 1), K):
            ok = ((t + o >= 0) & (t + o < length))[:, None] & d_ok[None, :]
            xs = xs + (tl.load(x_ptr + (t + o)[:, None] * sx_l + d[None, :], mask=ok, other=0.0).to(tl.float32),)
        dx = tl.zeros((TT, BE), dtype=tl.float32)
        dx, dw0, dbias0 = _set_grad(
            xs, w_ptr, bias_ptr, du0, t, d, length, dim, 0, dx, dw0, dbias0, -1 if REV0 else 1, K
        )
        if SETS == 2:
            dx, dw1, dbias1 = _set_grad(
                xs, w_ptr, bias_ptr, du1, t, d, length, dim, 1, dx, dw1, dbias1, -1 if REV1 else 1, K
            )
        m = (t < length)[:, None] & d_ok[None, :]
        tl.store(dx_ptr + t[:, None] * sdx_l + d[None, :], dx.to(dx_ptr.dtype.element_ty), mask=m)
    part = (b * tl.num_programs(1) + tl.program_id(1)) * SETS * dim + d  # dw: (programs, S, E, K)
    for i in tl.static_range(K):
        tl.store(dw_ptr + part * K + i, tl.sum(dw0[i], axis=0), mask=d_ok)
        if SETS == 2:
            tl.store(dw_ptr + (part + dim) * K + i, tl.sum(dw1[i], axis=0), mask=d_ok)
    tl.store(dbias_ptr + part, tl.sum(dbias0, axis=0), mask=d_ok)
    if SETS == 2:
        tl.store(dbias_ptr + part + dim, tl.sum(dbias1, axis=0), mask=d_ok)


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
    if sets > 2:
        raise ValueError(f"the conv kernels take one or two parameter sets, got {sets}")
    grad_grid = (batch, triton.cdiv(length, GRAD_TILE_T * GRAD_TILES), triton.cdiv(dim, GRAD_BLOCK_E))
    programs = batch * grad_grid[1]
    dw = torch.empty(programs, sets, dim, width, device=x.device, dtype=torch.float32)
    dbias = torch.empty(programs, sets, dim, device=x.device, dtype=torch.float32)
    if dx is None:
        dx = torch.empty(batch, length, dim, device=x.device, dtype=x.dtype)
    if du.stride() != (batch * length * dim, length * dim, dim, 1):
        du = du.contiguous()
    _conv_grad_kernel[grad_grid](
        x, weight, bias, du, dx, dw, dbias, length, dim, x.stride(0), x.stride(1), dx.stride(0), dx.stride(1),
        SETS=sets, REV0=bool(rev_mask & 1), REV1=bool(rev_mask & 2), TT=GRAD_TILE_T, BE=GRAD_BLOCK_E, K=width,
        TILES=GRAD_TILES, num_warps=GRAD_WARPS,
    )  # fmt: skip
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
