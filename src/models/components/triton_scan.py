"""Both scan directions of a bimamba-v2 mixer in one Triton launch, without flips (inference).

The two parameter sets of the mixer ("fwd" and "bwd") each scan the sequence in their own
direction. Instead of flipping inputs and outputs, the kernel walks time backwards for a set whose
`reverse` flag is set. Long sequences are cut into chunks scanned in parallel:

    pass 1  every chunk from a zero state -> its final state and its total step size
    carry   walk the chunks in scan order -> the state entering each chunk
    pass 2  every chunk again from its entering state, writing y = (C.h + D u) * silu(z)

Sequences of at most one chunk run pass 2 alone. Forward only: training uses mamba-ssm's fused
kernels (which have a backward). The math is scan.selective_scan's, with softplus(delta + bias).
Runs under TRITON_INTERPRET=1 on a CPU for tests.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor


@triton.jit
def _softplus(x):
    return tl.where(x > 20.0, x, tl.log(1.0 + tl.exp(x)))


@triton.jit
def _chunk_scan_kernel(
    u_ptr, dt_ptr, b_ptr, c_ptr, z_ptr, a_ptr, d_ptr, bias_ptr, rev_ptr,
    h0_ptr, out_ptr, hend_ptr, dtsum_ptr,
    batch, dim, length, chunk_len, n_chunks,
    D_STATE: tl.constexpr, BLOCK_D: tl.constexpr,
    HAS_H0: tl.constexpr, WRITE_OUT: tl.constexpr, WRITE_END: tl.constexpr,
):  # fmt: skip
    pid_sb = tl.program_id(0)  # parameter set * batch + batch index
    pid_d = tl.program_id(1)
    pid_c = tl.program_id(2)  # chunk, in scan order
    s = pid_sb // batch
    b = pid_sb % batch
    rev = tl.load(rev_ptr + s)
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    d_ok = d < dim
    n = tl.arange(0, D_STATE)
    A = tl.load(a_ptr + (s * dim + d[:, None]) * D_STATE + n[None, :], mask=d_ok[:, None], other=0.0)
    Dp = tl.load(d_ptr + s * dim + d, mask=d_ok, other=0.0)
    bias = tl.load(bias_ptr + s * dim + d, mask=d_ok, other=0.0)
    row = (pid_sb * dim + d).to(tl.int64) * length  # (BLOCK_D,) start of each channel's sequence
    z_row = (b * dim + d).to(tl.int64) * length
    bc_row = (pid_sb * D_STATE + n).to(tl.int64) * length  # (N,)
    state_at = ((pid_sb * n_chunks + pid_c) * dim + d[:, None]).to(tl.int64) * D_STATE + n[None, :]
    if HAS_H0:
        h = tl.load(h0_ptr + state_at, mask=d_ok[:, None], other=0.0)
    else:
        h = tl.zeros((BLOCK_D, D_STATE), dtype=tl.float32)
    dt_total = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for i in tl.range(0, chunk_len):
        k = pid_c * chunk_len + i
        ok = k < length
        t = tl.where(rev == 1, length - 1 - k, k)
        t = tl.where(ok, t, 0)
        u = tl.load(u_ptr + row + t, mask=d_ok & ok, other=0.0).to(tl.float32)
        dt = _softplus(tl.load(dt_ptr + row + t, mask=d_ok & ok, other=0.0).to(tl.float32) + bias)
        dt = tl.where(ok, dt, 0.0)  # steps past the end keep the state
        Bt = tl.load(b_ptr + bc_row + t, mask=ok, other=0.0).to(tl.float32)
        h = tl.exp(dt[:, None] * A) * h + (dt * u)[:, None] * Bt[None, :]
        dt_total += dt
        if WRITE_OUT:
            Ct = tl.load(c_ptr + bc_row + t, mask=ok, other=0.0).to(tl.float32)
            zt = tl.load(z_ptr + z_row + t, mask=d_ok & ok, other=0.0).to(tl.float32)
            y = (tl.sum(h * Ct[None, :], axis=1) + Dp * u) * (zt * tl.sigmoid(zt))
            tl.store(out_ptr + row + t, y.to(out_ptr.dtype.element_ty), mask=d_ok & ok)
    if WRITE_END:
        tl.store(hend_ptr + state_at, h, mask=d_ok[:, None])
        tl.store(dtsum_ptr + (pid_sb * n_chunks + pid_c) * dim + d, dt_total, mask=d_ok)


@triton.jit
def _carry_kernel(
    hend_ptr, dtsum_ptr, a_ptr, h0_ptr, batch, dim, n_chunks, D_STATE: tl.constexpr, BLOCK_D: tl.constexpr
):
    """h0[c] = exp(A * dtsum[c-1]) * h0[c-1] + hend[c-1], in scan order."""
    pid_sb = tl.program_id(0)
    pid_d = tl.program_id(1)
    s = pid_sb // batch
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    d_ok = d < dim
    n = tl.arange(0, D_STATE)
    A = tl.load(a_ptr + (s * dim + d[:, None]) * D_STATE + n[None, :], mask=d_ok[:, None], other=0.0)
    h = tl.zeros((BLOCK_D, D_STATE), dtype=tl.float32)
    for c in tl.range(0, n_chunks):
        at = ((pid_sb * n_chunks + c) * dim + d[:, None]).to(tl.int64) * D_STATE + n[None, :]
        tl.store(h0_ptr + at, h, mask=d_ok[:, None])
        dtsum = tl.load(dtsum_ptr + (pid_sb * n_chunks + c) * dim + d, mask=d_ok, other=0.0)
        h = tl.exp(dtsum[:, None] * A) * h + tl.load(hend_ptr + at, mask=d_ok[:, None], other=0.0)


def bidirectional_scan(
    u: Tensor,
    delta: Tensor,
    B: Tensor,
    C: Tensor,
    z: Tensor,
    A: Tensor,
    D: Tensor,
    delta_bias: Tensor,
    reverse: Tensor,
    chunk: int = 128,
    single_chunk_max: int = 2048,
    block_d: int = 8,
) -> Tensor:
    """Gated selective scans of S parameter sets over the same sequence, in one launch per pass.

    u, delta: (S, batch, D, L); B, C: (S, batch, N, L); z: (batch, D, L); A: (S, D, N) real;
    D, delta_bias: (S, D); reverse: (S,) int32 (1: scan from the last step to the first).
    Returns (S, batch, D, L) in u's dtype: silu(z) * (C.h + D u) of each set, delta_softplus on."""
    sets, batch, dim, length = u.shape
    d_state = A.shape[-1]
    u, delta, B, C, z = (x.contiguous() for x in (u, delta, B, C, z))
    A, D, delta_bias = A.float().contiguous(), D.float().contiguous(), delta_bias.float().contiguous()
    out = torch.empty_like(u)
    if length <= single_chunk_max:
        chunk, n_chunks = length, 1
    else:
        n_chunks = triton.cdiv(length, chunk)
    grid = (sets * batch, triton.cdiv(dim, block_d), n_chunks)
    common = dict(D_STATE=d_state, BLOCK_D=block_d, num_warps=1)
    if n_chunks == 1:
        _chunk_scan_kernel[grid](
            u, delta, B, C, z, A, D, delta_bias, reverse, u, out, u, u,
            batch, dim, length, chunk, 1, HAS_H0=False, WRITE_OUT=True, WRITE_END=False, **common,
        )  # fmt: skip
        return out
    states = torch.empty(sets * batch, n_chunks, dim, d_state, device=u.device, dtype=torch.float32)
    dtsum = torch.empty(sets * batch, n_chunks, dim, device=u.device, dtype=torch.float32)
    h0 = torch.empty_like(states)
    _chunk_scan_kernel[grid](
        u, delta, B, C, z, A, D, delta_bias, reverse, u, out, states, dtsum,
        batch, dim, length, chunk, n_chunks, HAS_H0=False, WRITE_OUT=False, WRITE_END=True, **common,
    )  # fmt: skip
    _carry_kernel[(sets * batch, triton.cdiv(dim, block_d))](
        states, dtsum, A, h0, batch, dim, n_chunks, D_STATE=d_state, BLOCK_D=block_d, num_warps=1
    )
    _chunk_scan_kernel[grid](
        u, delta, B, C, z, A, D, delta_bias, reverse, h0, out, u, u,
        batch, dim, length, chunk, n_chunks, HAS_H0=True, WRITE_OUT=True, WRITE_END=False, **common,
    )  # fmt: skip
    return out
