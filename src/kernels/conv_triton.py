"""The depthwise conv + silu that feeds each set's scan, in Triton, in the (B, L, E) layout.

    x: (B, L, E), shared   weight: (S, E, K)   bias: (S, E)   ->   u: (S, B, L, E), S <= 2
    causal set:        u_s[t] = silu(pre_s[t]),  pre_s[t] = bias_s + sum_k weight_s[k] x[t - (K - 1) + k]
    anti-causal set:   the same with x[t + (K - 1) - k]

The anti-causal conv is what the causal conv of the flipped sequence reads, without flipping. A
program owns BE channels of one batch element and `steps` steps of time; it walks them forward T
steps at a time (a tile's loads issued before the tile before it is computed), loading
each row of x, and of du, once. A thread keeps the last K values of x in registers: at the newest
step j they are the inputs of the causal set's pre-activation at j and of the anti-causal set's at
j - (K - 1), so every pre-activation is computed once, from registers. The backward keeps, per set,
the last K values of g_s = du_s * silu'(pre_s) as well, which are what x's gradient at t = j - (K - 1)
reads,
    dx[t] = sum_k weight_c[k] g_c[t + (K - 1) - k] + sum_k weight_a[k] g_a[t - (K - 1) + k],
and adds the weight and bias gradients' terms g_s[p] x[...] and g_s[p] into per-program sums, added
over programs by atomics at the end (or, under torch.use_deterministic_algorithms, written per
program and summed afterwards in a fixed order). A program starts its walk
K - 1 steps before its first step and ends it K - 1 after its last, so that its windows hold what
its first and last outputs read (beyond the sequence: zeros, the conv's padding).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor

from src.kernels.fast_math import sigmoid


@dataclass(frozen=True)
class ConvLaunch:
    """How a conv kernel is launched: block_e channels a program over num_warps warps (two a thread
    load and store bf16 pairs), tile_t steps loaded together, and at most `steps` steps a program."""

    block_e: int
    num_warps: int
    tile_t: int
    steps: int


# from benchmarks/conv.py's sweeps on an H100 at (64, 384, 513), CUDA graphs of the calls (docs/benchmarks.md)
FORWARD = ConvLaunch(block_e=128, num_warps=2, tile_t=8, steps=64)
BACKWARD = ConvLaunch(block_e=128, num_warps=2, tile_t=4, steps=128)


@triton.jit
def _shifted(window, new, K: tl.constexpr):
    """The window of the last K values moved on by one step: (w[1], ..., w[K-1], new)."""
    moved = ()
    for q in tl.static_range(1, K):
        moved = moved + (window[q],)
    return moved + (new,)


@triton.jit
def _tap(window, k: tl.constexpr, REV: tl.constexpr, K: tl.constexpr):
    """What tap k of a set reads from the x window (x[j - (K-1)], ..., x[j]): the causal set's
    pre-activation at j reads x[j - (K-1) + k], the anti-causal one's at j - (K-1) reads x[j - k].
    The same index, mirrored, finds in a set's g window the g that tap k carries to x's gradient."""
    if REV:
        return window[K - 1 - k]
    return window[k]


@triton.jit
def _pre(xw, w, bias, REV: tl.constexpr, K: tl.constexpr):
    acc = bias
    for k in tl.static_range(K):
        acc = acc + w[k] * _tap(xw, k, REV, K)
    return acc


@triton.jit
def _set_params(w_ptr, bias_ptr, s, d, dim, K: tl.constexpr):
    """Set s's K weights and its bias at channels d, fp32 (BE,) each."""
    ok = d < dim
    w = ()
    for k in tl.static_range(K):
        w = w + (tl.load(w_ptr + (s * dim + d) * K + k, mask=ok, other=0.0),)
    return w, tl.load(bias_ptr + s * dim + d, mask=ok, other=0.0)


@triton.jit
def _load_rows(ptr, j0, lag, length, stride, d, d_ok, T: tl.constexpr):
    """Rows j0 - lag, ..., j0 + T - 1 - lag of a (L, E) slice, fp32, zero outside [0, length)."""
    rows = ()
    for i in tl.static_range(T):
        t = j0 + i - lag
        rows = rows + (tl.load(ptr + t * stride + d, mask=d_ok & (t >= 0) & (t < length), other=0.0).to(tl.float32),)
    return rows


@triton.jit
def _start(length, steps, BE: tl.constexpr, K: tl.constexpr):
    """This program's batch element, channels, first step, end (exclusive) and zeroed x window."""
    b = tl.program_id(0)
    d = tl.program_id(1) * BE + tl.arange(0, BE)
    t0 = tl.program_id(2) * steps
    t_end = tl.minimum(t0 + steps, length)
    xw = ()
    for _ in tl.static_range(K):
        xw = xw + (tl.zeros((BE,), dtype=tl.float32),)
    return b, d, t0, t_end, xw


@triton.jit
def _store_u(u_ptr, xw, w, bias, p, t0, t_end, dim, d, REV: tl.constexpr, K: tl.constexpr, FAST: tl.constexpr):
    """A set's u at its pre-activation's step p, when p is one of this program's steps."""
    pre = _pre(xw, w, bias, REV, K)
    u = (pre * sigmoid(pre, FAST)).to(u_ptr.dtype.element_ty)
    tl.store(u_ptr + p * dim + d, u, mask=(d < dim) & (p >= t0) & (p < t_end))


@triton.jit
def _conv_fwd_kernel(
    x_ptr, w_ptr, bias_ptr, u_ptr, length, dim, steps, sx_b, sx_l,
    SETS: tl.constexpr, REV0: tl.constexpr, REV1: tl.constexpr,
    BE: tl.constexpr, T: tl.constexpr, K: tl.constexpr, FAST: tl.constexpr,
):  # fmt: skip
    """u (S, B, L, E) contiguous. At step j: u_0 at j - (K-1) * REV0, u_1 at j - (K-1) * REV1."""
    b, d, t0, t_end, xw = _start(length, steps, BE, K)
    d_ok = d < dim
    x_ptr += b.to(tl.int64) * sx_b
    u0 = u_ptr + b.to(tl.int64) * length * dim
    u1 = u_ptr + (tl.num_programs(0) + b).to(tl.int64) * length * dim
    w0, bias0 = _set_params(w_ptr, bias_ptr, 0, d, dim, K)
    w1, bias1 = _set_params(w_ptr, bias_ptr, SETS - 1, d, dim, K)
    j_first = t0 - (K - 1)  # K - 1 steps early: the window of the first outputs
    xs = _load_rows(x_ptr, j_first, 0, length, sx_l, d, d_ok, T)
    for j0 in tl.range(j_first, t_end + K - 1, T):
        tile = xs
        xs = _load_rows(x_ptr, j0 + T, 0, length, sx_l, d, d_ok, T)  # the next tile's, before this one's stores
        for i in tl.static_range(T):
            j = j0 + i
            xw = _shifted(xw, tile[i], K)
            _store_u(u0, xw, w0, bias0, j - (K - 1) * REV0, t0, t_end, dim, d, REV0, K, FAST)
            if SETS == 2:
                _store_u(u1, xw, w1, bias1, j - (K - 1) * REV1, t0, t_end, dim, d, REV1, K, FAST)


@triton.jit
def _set_grad(xw, gw, w, bias, du, p, t0, t_end, dx, dw, dbias, REV: tl.constexpr, K: tl.constexpr, FAST: tl.constexpr):
    """One set at one step: g at its pre-activation's step p (du: the loaded du there, zero outside
    the sequence) into its g window; x's gradient at j - (K-1) from the window; the weight and bias
    sums when p is one of this program's steps."""
    pre = _pre(xw, w, bias, REV, K)
    sig = sigmoid(pre, FAST)
    g = du * sig * (1.0 + pre * (1.0 - sig))
    gw = _shifted(gw, g, K)
    for k in tl.static_range(K):
        dx += w[k] * _tap(gw, K - 1 - k, REV, K)
    mine = (p >= t0) & (p < t_end)
    g_mine = tl.where(mine, g, 0.0)
    summed = ()
    for k in tl.static_range(K):
        summed = summed + (dw[k] + g_mine * _tap(xw, k, REV, K),)
    return gw, dx, summed, dbias + g_mine


@triton.jit
def _put(dw_ptr, dbias_ptr, at, dw, dbias, ok, ATOMIC: tl.constexpr, K: tl.constexpr):
    """A set's weight and bias sums at channel rows `at`: added (ATOMIC) or stored."""
    for k in tl.static_range(K):
        if ATOMIC:
            tl.atomic_add(dw_ptr + at * K + k, dw[k], mask=ok, sem="relaxed")
        else:
            tl.store(dw_ptr + at * K + k, dw[k], mask=ok)
    if ATOMIC:
        tl.atomic_add(dbias_ptr + at, dbias, mask=ok, sem="relaxed")
    else:
        tl.store(dbias_ptr + at, dbias, mask=ok)


@triton.jit
def _conv_grad_kernel(
    x_ptr, w_ptr, bias_ptr, du_ptr, dx_ptr, dw_ptr, dbias_ptr, length, dim, steps, sx_b, sx_l, sdx_b, sdx_l,
    SETS: tl.constexpr, REV0: tl.constexpr, REV1: tl.constexpr,
    BE: tl.constexpr, T: tl.constexpr, K: tl.constexpr, FAST: tl.constexpr, ATOMIC: tl.constexpr,
):  # fmt: skip
    """du: (S, B, L, E) contiguous; dx: (B, L, E) with unit last stride; dw and dbias fp32, summed
    over programs by atomics (ATOMIC) or a row a program (see the end)."""
    b, d, t0, t_end, xw = _start(length, steps, BE, K)
    d_ok = d < dim
    x_ptr += b.to(tl.int64) * sx_b
    dx_ptr += b.to(tl.int64) * sdx_b
    du0 = du_ptr + b.to(tl.int64) * length * dim
    du1 = du_ptr + (tl.num_programs(0) + b).to(tl.int64) * length * dim
    w0, bias0 = _set_params(w_ptr, bias_ptr, 0, d, dim, K)
    w1, bias1 = _set_params(w_ptr, bias_ptr, SETS - 1, d, dim, K)
    gw0, gw1, dw0, dw1 = xw, xw, xw, xw  # K zeros each
    dbias0, dbias1 = xw[0], xw[0]
    lag0, lag1 = (K - 1) * REV0, (K - 1) * REV1  # set s's pre-activation at step j is at p = j - lag_s
    j_first = t0 - (K - 1)
    xs = _load_rows(x_ptr, j_first, 0, length, sx_l, d, d_ok, T)
    dus0 = _load_rows(du0, j_first, lag0, length, dim, d, d_ok, T)
    dus1 = dus0
    if SETS == 2:
        dus1 = _load_rows(du1, j_first, lag1, length, dim, d, d_ok, T)
    for j0 in tl.range(j_first, t_end + K - 1, T):
        tile, tile0, tile1 = xs, dus0, dus1
        xs = _load_rows(x_ptr, j0 + T, 0, length, sx_l, d, d_ok, T)
        dus0 = _load_rows(du0, j0 + T, lag0, length, dim, d, d_ok, T)
        if SETS == 2:
            dus1 = _load_rows(du1, j0 + T, lag1, length, dim, d, d_ok, T)
        for i in tl.static_range(T):
            j = j0 + i
            xw = _shifted(xw, tile[i], K)
            dx = tl.zeros((BE,), dtype=tl.float32)
            gw0, dx, dw0, dbias0 = _set_grad(
                xw, gw0, w0, bias0, tile0[i], j - lag0, t0, t_end, dx, dw0, dbias0, REV0, K, FAST
            )
            if SETS == 2:
                gw1, dx, dw1, dbias1 = _set_grad(
                    xw, gw1, w1, bias1, tile1[i], j - lag1, t0, t_end, dx, dw1, dbias1, REV1, K, FAST
                )
            t = j - (K - 1)
            tl.store(dx_ptr + t * sdx_l + d, dx.to(dx_ptr.dtype.element_ty), mask=d_ok & (t >= t0) & (t < t_end))
    if ATOMIC:  # dw (S, E, K), dbias (S, E): every program adds into them
        at = d
    else:  # dw (programs, S, E, K), dbias (programs, S, E): a row a (batch, time chunk) program
        at = (b * tl.num_programs(2) + tl.program_id(2)) * SETS * dim + d
    _put(dw_ptr, dbias_ptr, at, dw0, dbias0, d_ok, ATOMIC, K)
    if SETS == 2:
        _put(dw_ptr, dbias_ptr, at + dim, dw1, dbias1, d_ok, ATOMIC, K)


def _launch(x: Tensor, weight: Tensor, rev_mask: int, launch: ConvLaunch) -> tuple[tuple[int, int, int], int, dict]:
    """The grid (batch, channel blocks, time chunks), the steps a chunk takes, and the kernels' flags."""
    batch, length, dim = x.shape
    sets, _, width = weight.shape
    if sets > 2:
        raise ValueError(f"the conv kernels take one or two parameter sets, got {sets}")
    chunks = triton.cdiv(length, launch.steps)
    steps = triton.cdiv(triton.cdiv(length, chunks), launch.tile_t) * launch.tile_t
    grid = (batch, triton.cdiv(dim, launch.block_e), triton.cdiv(length, steps))
    flags = dict(SETS=sets, REV0=bool(rev_mask & 1), REV1=bool(rev_mask & 2), BE=launch.block_e, T=launch.tile_t)
    fast = os.environ.get("TRITON_INTERPRET") != "1"  # inline PTX (fast_math.py)
    return grid, steps, dict(flags, K=width, FAST=fast, num_warps=launch.num_warps)


def conv_forward(x: Tensor, weight: Tensor, bias: Tensor, rev_mask: int) -> Tensor:
    """u (S, B, L, E) in x's dtype from x (B, L, E) (unit last stride), weight (S, E, K) and bias
    (S, E) fp32 contiguous; bit s of rev_mask set: set s is anti-causal."""
    batch, length, dim = x.shape
    grid, steps, flags = _launch(x, weight, rev_mask, FORWARD)
    u = torch.empty(weight.shape[0], batch, length, dim, device=x.device, dtype=x.dtype)
    _conv_fwd_kernel[grid](x, weight, bias, u, length, dim, steps, x.stride(0), x.stride(1), **flags)
    return u


def conv_backward(
    x: Tensor, weight: Tensor, bias: Tensor, rev_mask: int, du: Tensor, dx: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of x, weight and bias from du (S, B, L, E); dx may be given as a (B, L, E) view to
    write into (unit last stride, e.g. a slice of dxz)."""
    batch, length, dim = x.shape
    sets, _, width = weight.shape
    grid, steps, flags = _launch(x, weight, rev_mask, BACKWARD)
    atomic = not torch.are_deterministic_algorithms_enabled()
    if atomic:  # every program adds into one, zeroed by one fill
        sums = torch.zeros(sets * dim * (width + 1), device=x.device, dtype=torch.float32)
        dw, dbias = sums[: sets * dim * width].view(sets, dim, width), sums[sets * dim * width :].view(sets, dim)
    else:  # a row a (batch, time chunk) program, summed below in a fixed order
        programs = batch * grid[2]
        dw = torch.empty(programs, sets, dim, width, device=x.device, dtype=torch.float32)
        dbias = torch.empty(programs, sets, dim, device=x.device, dtype=torch.float32)
    if dx is None:
        dx = torch.empty(batch, length, dim, device=x.device, dtype=x.dtype)
    if du.stride() != (batch * length * dim, length * dim, dim, 1):
        du = du.contiguous()
    _conv_grad_kernel[grid](
        x, weight, bias, du, dx, dw, dbias, length, dim, steps, x.stride(0), x.stride(1), dx.stride(0), dx.stride(1),
        ATOMIC=atomic, **flags,
    )  # fmt: skip
    return (dx, dw, dbias) if atomic else (dx, dw.sum(0), dbias.sum(0))


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
        dx, dw, dbias = conv_backward(x, weight, bias, ctx.rev_mask, du)  # made contiguous there if it is not
        return dx, dw, dbias, None


def conv1d_silu_triton(x: Tensor, weight: Tensor, bias: Tensor, reverse: tuple[bool, ...]) -> Tensor:
    """x (B, L, E), weight (S, E, K), bias (S, E) -> silu(conv) per set, (S, B, L, E) in x's dtype."""
    return Conv1dSiluTriton.apply(x, weight, bias, tuple(reverse))
