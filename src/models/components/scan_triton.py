"""The selective scan of a bimamba-v2 layer in Triton, forward and backward, in the layout the
projections produce: no transposes, no flips.

A layer has S parameter sets (bimamba-v2: S = 2, the forward and the backward direction) that scan
the same sequence, each in its own direction:

    u, delta: (S, B, L, E)   B, C: (S, B, L, N)   z: (B, L, E), shared   A: (S, E, N)   D, delta_bias: (S, E)
    dt_t = softplus(delta_t + delta_bias)        h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t
    y_t  = (C_t . h_t + D u_t) * silu(z_t)       -> y: (S, B, L, E)

A set whose `reverse` bit is set walks t from L - 1 down to 0: the kernels read the same memory in
the other order instead of flipping it. A program (one warp) owns 16 or 32 channels of one (set,
batch) and walks time step by step, tile_len steps at a time; a channel's N states sit in the
registers of one lane (two with 16 channels), so a step's loads of u, delta, z and its store of y
are coalesced across the warp and the sum over states stays inside a lane. Sequences are cut into
chunks only when the (set, batch, channel-block) programs are too few to fill the GPU:

    forward   pass 1   every chunk from a zero state: its final state and its sum of dt
              carry    chunk by chunk in scan order: the state entering each chunk
              pass 2   every chunk from its entering state: y, and every ckpt_every steps the
                       state the backward restarts from (never a (B, L, E, N) tensor)
    backward  pass 1   every chunk from a zero adjoint: the adjoint it sends out of its start
              carry    chunk by chunk against scan order: the adjoint entering each chunk
              pass 2   segments of ckpt_every steps from the chunk's end: the states at every
                       tile_len-th step again (into a small per-program scratch), then tile by
                       tile in reverse, the tile's states in registers, all the gradients

A short sequence is one chunk and runs pass 2 alone. The adjoint q_t = dy_t C_t + a_{t+1} q_{t+1}
(a_t = exp(dt_t A)) pairs with the state h_t at every step; the step's input x_t = dt_t B_t u_t
gives a_t h_{t-1} = h_t - x_t, so no step needs h_{t-1}. Gradients of B and C are summed over the
channels of a program, then over programs (no atomics: deterministic). Runs under
TRITON_INTERPRET=1 on a CPU for tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor

LOG2E = tl.constexpr(1.4426950408889634)


@dataclass(frozen=True)
class ScanTiling:
    """How one kernel, forward or backward, is launched: block_d channels per program (one warp);
    tile_len steps unrolled together (the backward holds a tile's states in registers); ckpt_every
    steps (a multiple of tile_len, the same for both kernels) between the states the forward keeps for
    the backward; sequences cut into chunks until there are min_programs programs; max_registers per
    thread for ptxas (None: its choice; fewer registers, more warps per SM)."""

    block_d: int = 16
    tile_len: int = 2
    ckpt_every: int = 64
    min_programs: int = 2048
    max_registers: int | None = None


def default_tilings(sets: int, batch: int, dim: int, length: int) -> tuple[ScanTiling, ScanTiling]:
    """(forward, backward) launch shapes, from benchmarks/scan.py's sweeps on an H100: 32 channels per
    program (fewer instructions per state update) when that alone makes 2048 programs, or when the
    sequence is long enough to supply 8192 programs as chunks; else 16 channels (twice the programs),
    with the backward capped at 168 registers, which buys more warps per SM than the spill-free 229."""
    if length > 4096:
        wide = ScanTiling(block_d=32, min_programs=8192)
    elif sets * batch * triton.cdiv(dim, 32) >= 2048:
        wide = ScanTiling(block_d=32)
    else:
        return ScanTiling(block_d=16), ScanTiling(block_d=16, max_registers=168)
    return wide, wide


@triton.jit
def _softplus(x):
    return tl.where(x > 20.0, x, tl.log(1.0 + tl.exp(x)))


@triton.jit
def _program(a_ptr, d_ptr, bias_ptr, batch, rev_mask, n_chunks, zero, DIM, N, BN: tl.constexpr, BD: tl.constexpr):
    """Who this program is and what it holds: set s, batch b, chunk, its scan direction, channels d
    (BD,), states n (BN,), their masks, A (BN, BD) fp32, bias and D (BD,), and where its chunk's
    (N, E) state slice sits in a (S*B, n_chunks, N, E) buffer.

    `zero` is 0, passed unspecialised, and offsets every (N, E) state access: it hides their
    alignment from the compiler, which would otherwise vectorise them across channels and so lay
    the (BN, BD) tensors out with several channels per thread and the states spread over lanes.
    Unvectorised, the layout is a channel per lane (or two lanes), its states in registers."""
    sb = tl.program_id(0)  # set * batch + batch index
    s, b = sb // batch, sb % batch
    chunk = tl.program_id(2)
    rev = (rev_mask >> s) & 1
    d = tl.program_id(1) * BD + tl.arange(0, BD)
    n = tl.arange(0, BN)
    d_ok = d < DIM
    nd_ok = (n < N)[:, None] & d_ok[None, :]
    A = tl.load(a_ptr + zero + (s * N + n[:, None]) * DIM + d[None, :], mask=nd_ok, other=0.0)
    bias = tl.load(bias_ptr + s * DIM + d, mask=d_ok, other=0.0)
    D = tl.load(d_ptr + s * DIM + d, mask=d_ok, other=0.0)
    state_at = zero + ((sb * n_chunks + chunk) * N + n[:, None]).to(tl.int64) * DIM + d[None, :]
    return sb, s, b, chunk, rev, d, n, d_ok, nd_ok, A, bias, D, state_at


@triton.jit
def _at_set_and_batch(pointers, strides, s, b):
    """The input pointers (u, delta, B, C, z, dy) moved to set s, batch b; strides holds each one's
    (set, batch) strides (z's set stride is 0: the sets share it)."""
    s, b = s.to(tl.int64), b.to(tl.int64)
    moved = ()
    for i in tl.static_range(6):
        moved = moved + (pointers[i] + s * strides[2 * i] + b * strides[2 * i + 1],)
    return moved


@triton.jit
def _load_tile(
    pointers, steps, k0, k_lo, k_hi, length, rev, d, n, d_ok, N,
    T: tl.constexpr, WITH_C: tl.constexpr, WITH_Z: tl.constexpr, WITH_DY: tl.constexpr,
):  # fmt: skip
    """The raw inputs of the T steps k0, k0 + 1, ... (in scan order; nothing read outside [k_lo, k_hi)):
    tuples of T tensors each, in their stored dtype: u, delta, dy, z (BD,) and B, C (BN,). pointers
    and steps: (u, delta, B, C, z, dy) and their strides along time. Loading a whole tile before the
    stores of the one before lets the loads overlap (the compiler may not move a load past a store
    that could alias it)."""
    u_ptr, dt_ptr, b_ptr, c_ptr, z_ptr, dy_ptr = pointers
    su_l, sdt_l, sb_l, sc_l, sz_l, sdy_l = steps
    us, dts, Bs, Cs, zs, dys = (), (), (), (), (), ()
    for i in tl.static_range(T):
        k = k0 + i
        ok = (k >= k_lo) & (k < k_hi)
        t = tl.where(rev == 1, length - 1 - k, k)
        us = us + (tl.load(u_ptr + t * su_l + d, mask=d_ok & ok, other=0.0),)
        dts = dts + (tl.load(dt_ptr + t * sdt_l + d, mask=d_ok & ok, other=0.0),)
        Bs = Bs + (tl.load(b_ptr + t * sb_l + n, mask=(n < N) & ok, other=0.0),)
        if WITH_C:
            Cs = Cs + (tl.load(c_ptr + t * sc_l + n, mask=(n < N) & ok, other=0.0),)
        if WITH_Z:
            zs = zs + (tl.load(z_ptr + t * sz_l + d, mask=d_ok & ok, other=0.0),)
        if WITH_DY:
            dys = dys + (tl.load(dy_ptr + t * sdy_l + d, mask=d_ok & ok, other=0.0),)
    return us, dts, Bs, Cs, zs, dys


@triton.jit
def _dt(raw, bias, m, SOFTPLUS: tl.constexpr):
    """dt = softplus(delta + bias), 0 where m is off (a masked step: the state passes through);
    and delta + bias itself."""
    dt_in = raw.to(tl.float32) + bias
    dt = dt_in
    if SOFTPLUS:
        dt = _softplus(dt)
    return tl.where(m, dt, 0.0), dt_in


@triton.jit(do_not_specialize=["zero"])  # see _program
def _fwd_kernel(
    u_ptr, dt_ptr, b_ptr, c_ptr, z_ptr, a_ptr, d_ptr, bias_ptr,
    y_ptr, h_start_ptr, ckpt_ptr, h_end_ptr, dt_sum_ptr,
    batch, length, chunk_len, n_chunks, n_ckpts, rev_mask, zero,
    su_s, su_b, su_l, sdt_s, sdt_b, sdt_l, sb_s, sb_b, sb_l, sc_s, sc_b, sc_l, sz_b, sz_l,
    DIM: tl.constexpr, N: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr, T: tl.constexpr, CK: tl.constexpr,
    SOFTPLUS: tl.constexpr, HAS_Z: tl.constexpr, HAS_D: tl.constexpr, HAS_H_START: tl.constexpr,
    WRITE_Y: tl.constexpr, WRITE_CKPT: tl.constexpr, WRITE_END: tl.constexpr,
):  # fmt: skip
    sb, s, b, chunk, rev, d, n, d_ok, nd_ok, A, bias, D, state_at = _program(
        a_ptr, d_ptr, bias_ptr, batch, rev_mask, n_chunks, zero, DIM, N, BN, BD
    )
    A2 = A * LOG2E  # (BN, BD): exp(dt A) = exp2(dt A2)
    if HAS_H_START:
        h = tl.load(h_start_ptr + state_at, mask=nd_ok, other=0.0)
    else:
        h = tl.zeros((BN, BD), dtype=tl.float32)
    dt_sum = tl.zeros((BD,), dtype=tl.float32)
    pointers = _at_set_and_batch(
        (u_ptr, dt_ptr, b_ptr, c_ptr, z_ptr, z_ptr),
        (su_s, su_b, sdt_s, sdt_b, sb_s, sb_b, sc_s, sc_b, 0, sz_b, 0, 0),
        s,
        b,
    )
    steps = (su_l, sdt_l, sb_l, sc_l, sz_l, 0)
    y_ptr += sb.to(tl.int64) * length * DIM  # y: (S, B, L, E) contiguous
    k_begin = chunk * chunk_len
    k_end = tl.minimum(k_begin + chunk_len, length)
    tile = _load_tile(
        pointers, steps, k_begin, k_begin, k_end, length, rev, d, n, d_ok, N, T, WRITE_Y, WRITE_Y and HAS_Z, False
    )
    for k0 in tl.range(k_begin, k_end, T):
        us, dts, Bs, Cs, zs, _ = tile  # this tile; the next one's loads go out before its stores
        tile = _load_tile(
            pointers, steps, k0 + T, k_begin, k_end, length, rev, d, n, d_ok, N, T, WRITE_Y, WRITE_Y and HAS_Z, False
        )
        if WRITE_CKPT:
            if k0 % CK == 0:  # the state entering these CK steps: the backward restarts here
                ckpt_at = zero + ((sb * n_ckpts + k0 // CK) * N + n[:, None]).to(tl.int64) * DIM + d[None, :]
                tl.store(ckpt_ptr + ckpt_at, h, mask=nd_ok)
        for i in tl.static_range(T):
            ok = k0 + i < k_end
            t = tl.where(rev == 1, length - 1 - (k0 + i), k0 + i)
            u = us[i].to(tl.float32)
            dt, _ = _dt(dts[i], bias, d_ok & ok, SOFTPLUS)
            h = tl.exp2(A2 * dt[None, :]) * h + Bs[i].to(tl.float32)[:, None] * (dt * u)[None, :]  # (BN, BD)
            if WRITE_Y:
                y = tl.sum(h * Cs[i].to(tl.float32)[:, None], axis=0)  # (BD,): a sum inside each thread
                if HAS_D:
                    y += D * u
                if HAS_Z:
                    zt = zs[i].to(tl.float32)
                    y = y * zt * tl.sigmoid(zt)
                tl.store(y_ptr + t * DIM + d, y.to(y_ptr.dtype.element_ty), mask=d_ok & ok)
            if WRITE_END:
                dt_sum += dt
    if WRITE_END:
        tl.store(h_end_ptr + state_at, h, mask=nd_ok)
        tl.store(dt_sum_ptr + (sb * n_chunks + chunk) * DIM + d, dt_sum, mask=d_ok)


@triton.jit(do_not_specialize=["zero"])
def _carry_kernel(
    local_ptr, dt_sum_ptr, a_ptr, d_ptr, bias_ptr, out_ptr, batch, n_chunks, zero,
    DIM: tl.constexpr, N: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr, BACKWARD: tl.constexpr,
):  # fmt: skip
    """out[c] = what enters chunk c: exp(A dt_sum[c']) out[c'] + local[c'] with c' the chunk before
    c in scan order (forward) or after it (backward); zero for the first."""
    sb, s, b, _, _, d, n, d_ok, nd_ok, A, _, _, _ = _program(
        a_ptr, d_ptr, bias_ptr, batch, 0, n_chunks, zero, DIM, N, BN, BD
    )
    h = tl.zeros((BN, BD), dtype=tl.float32)
    for i in tl.range(0, n_chunks):
        if BACKWARD:
            c = n_chunks - 1 - i
        else:
            c = i
        at = zero + ((sb * n_chunks + c) * N + n[:, None]).to(tl.int64) * DIM + d[None, :]
        tl.store(out_ptr + at, h, mask=nd_ok)
        dt_sum = tl.load(dt_sum_ptr + (sb * n_chunks + c) * DIM + d, mask=d_ok, other=0.0)
        h = tl.exp2(A * LOG2E * dt_sum[None, :]) * h + tl.load(local_ptr + at, mask=nd_ok, other=0.0)


@triton.jit(do_not_specialize=["zero"])
def _bwd_kernel(
    u_ptr, dt_ptr, b_ptr, c_ptr, z_ptr, a_ptr, d_ptr, bias_ptr, dy_ptr, ckpt_ptr, g_start_ptr, scratch_ptr,
    du_ptr, ddt_ptr, dz_ptr, db_ptr, dc_ptr, da_ptr, dd_ptr, dbias_ptr, g_end_ptr, dt_sum_ptr,
    batch, length, chunk_len, n_chunks, n_ckpts, rev_mask, zero,
    su_s, su_b, su_l, sdt_s, sdt_b, sdt_l, sb_s, sb_b, sb_l, sc_s, sc_b, sc_l, sz_b, sz_l,
    sdy_s, sdy_b, sdy_l,
    DIM: tl.constexpr, N: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr, T: tl.constexpr, CK: tl.constexpr,
    SOFTPLUS: tl.constexpr, HAS_Z: tl.constexpr, HAS_D: tl.constexpr, HAS_G_START: tl.constexpr,
    CARRY_ONLY: tl.constexpr,
):  # fmt: skip
    sb, s, b, chunk, rev, d, n, d_ok, nd_ok, A, bias, D, state_at = _program(
        a_ptr, d_ptr, bias_ptr, batch, rev_mask, n_chunks, zero, DIM, N, BN, BD
    )
    A2 = A * LOG2E
    if not HAS_D:
        D = D * 0.0
    block = tl.program_id(1)
    if HAS_G_START:  # the adjoint entering this chunk from its end (later chunks in scan order)
        g = tl.load(g_start_ptr + state_at, mask=nd_ok, other=0.0)
    else:
        g = tl.zeros((BN, BD), dtype=tl.float32)
    dA = tl.zeros((BN, BD), dtype=tl.float32)
    dD = tl.zeros((BD,), dtype=tl.float32)
    dbias = tl.zeros((BD,), dtype=tl.float32)
    dt_sum = tl.zeros((BD,), dtype=tl.float32)
    pointers = _at_set_and_batch(
        (u_ptr, dt_ptr, b_ptr, c_ptr, z_ptr, dy_ptr),
        (su_s, su_b, sdt_s, sdt_b, sb_s, sb_b, sc_s, sc_b, 0, sz_b, sdy_s, sdy_b), s, b,
    )  # fmt: skip
    steps = (su_l, sdt_l, sb_l, sc_l, sz_l, sdy_l)
    out_ptrs = sb.to(tl.int64) * length * DIM + d  # du, ddt, dz: (S, B, L, E) contiguous
    bc_at = (block * tl.num_programs(0) + sb).to(tl.int64) * length * N + n  # dB, dC: (blocks, S*B, L, N)
    # this program's scratch: (CK // T, BN, BD) fp32, the states at the start of every tile of a segment
    program = (sb * tl.num_programs(1) + block) * n_chunks + chunk
    scratch_at = zero + (program.to(tl.int64) * (CK // T) * BN + n[:, None]) * BD + tl.arange(0, BD)[None, :]
    k_begin = chunk * chunk_len
    k_end = tl.minimum(k_begin + chunk_len, length)
    n_segments = tl.cdiv(k_end - k_begin, CK)
    for js in tl.range(0, n_segments):
        k1 = k_begin + (n_segments - 1 - js) * CK  # segments from the chunk's end to its start
        n_tiles = tl.cdiv(tl.minimum(k1 + CK, k_end) - k1, T)
        if not CARRY_ONLY:  # the state at the start of every tile, from the one the forward kept
            ckpt_at = zero + ((sb * n_ckpts + k1 // CK) * N + n[:, None]).to(tl.int64) * DIM + d[None, :]
            h = tl.load(ckpt_ptr + ckpt_at, mask=nd_ok, other=0.0)
            for jt in tl.range(0, n_tiles - 1):
                us, dts, Bs, _, _, _ = _load_tile(
                    pointers, steps, k1 + jt * T, k1, k_end, length, rev, d, n, d_ok, N, T, False, False, False
                )
                tl.store(scratch_ptr + scratch_at + jt * BN * BD, h)
                for i in tl.static_range(T):
                    dt, _ = _dt(dts[i], bias, d_ok & (k1 + jt * T + i < k_end), SOFTPLUS)
                    h = (
                        tl.exp2(A2 * dt[None, :]) * h
                        + Bs[i].to(tl.float32)[:, None] * (dt * us[i].to(tl.float32))[None, :]
                    )
            tl.store(scratch_ptr + scratch_at + (n_tiles - 1) * BN * BD, h)
        for jt in tl.range(0, n_tiles):
            k0 = k1 + (n_tiles - 1 - jt) * T  # tiles from the segment's end to its start
            us, dts, Bs, Cs, zs, dys = _load_tile(
                pointers, steps, k0, k1, k_end, length, rev, d, n, d_ok, N, T, True, HAS_Z, True
            )
            # the tile's states, decays and step sizes, in registers
            hs, decays, dt_outs, dt_ins = (), (), (), ()
            for i in tl.static_range(T):
                dt, dt_in = _dt(dts[i], bias, d_ok & (k0 + i < k_end), SOFTPLUS)
                a = tl.exp2(A2 * dt[None, :])
                decays, dt_outs, dt_ins = decays + (a,), dt_outs + (dt,), dt_ins + (dt_in,)
            if not CARRY_ONLY:
                h = tl.load(scratch_ptr + scratch_at + (n_tiles - 1 - jt) * BN * BD)
                for i in tl.static_range(T):
                    h = decays[i] * h + Bs[i].to(tl.float32)[:, None] * (dt_outs[i] * us[i].to(tl.float32))[None, :]
                    hs = hs + (h,)
            # back through the tile: q_k = dy_k C_k + a_{k+1} q_{k+1}, with g = a_{k+1} q_{k+1}
            for i in tl.static_range(T - 1, -1, -1):
                k = k0 + i
                m = d_ok & (k < k_end)
                t = tl.where(rev == 1, length - 1 - k, k)
                dt, dt_in = dt_outs[i], dt_ins[i]
                u, Bt, Ct, dout = (
                    us[i].to(tl.float32),
                    Bs[i].to(tl.float32),
                    Cs[i].to(tl.float32),
                    dys[i].to(tl.float32),
                )
                if HAS_Z:
                    zt = zs[i].to(tl.float32)
                    z_sig = tl.sigmoid(zt)
                    dy = dout * zt * z_sig
                else:
                    dy = dout
                q = Ct[:, None] * dy[None, :] + g  # (BN, BD) the adjoint of h_k
                if CARRY_ONLY:
                    dt_sum += dt
                else:
                    h = hs[i]
                    if HAS_Z:
                        y = tl.sum(h * Ct[:, None], axis=0) + D * u
                        dz = dout * y * z_sig * (1.0 + zt * (1.0 - z_sig))
                        tl.store(dz_ptr + out_ptrs + t * DIM, dz.to(dz_ptr.dtype.element_ty), mask=m)
                    # h_k = a_k h_{k-1} + dt_k u_k B_k, and a_k h_{k-1} = h_k - x_k:
                    #   du = dt q.B + D dy    ddt = u q.B + sum_n A q (h - x)    dA += dt q (h - x)
                    q_B = tl.sum(q * Bt[:, None], axis=0)  # (BD,)
                    dt_u = dt * u
                    q_hx = q * (h - Bt[:, None] * dt_u[None, :])
                    du = dt * q_B + dy * D
                    ddt = u * q_B + tl.sum(A * q_hx, axis=0)
                    if SOFTPLUS:
                        ddt = ddt * tl.sigmoid(dt_in)
                    ddt = tl.where(m, ddt, 0.0)
                    tl.store(du_ptr + out_ptrs + t * DIM, du.to(du_ptr.dtype.element_ty), mask=m)
                    tl.store(ddt_ptr + out_ptrs + t * DIM, ddt.to(ddt_ptr.dtype.element_ty), mask=m)
                    bc_ok = (n < N) & (k < k_end)  # dB, dC: sums over this program's channels
                    tl.store(db_ptr + bc_at + t * N, tl.sum(q * dt_u[None, :], axis=1), mask=bc_ok)
                    tl.store(dc_ptr + bc_at + t * N, tl.sum(h * dy[None, :], axis=1), mask=bc_ok)
                    dA += q_hx * dt[None, :]
                    dD += dy * u
                    dbias += ddt
                g = decays[i] * q
    if CARRY_ONLY:
        tl.store(g_end_ptr + state_at, g, mask=nd_ok)
        tl.store(dt_sum_ptr + (sb * n_chunks + chunk) * DIM + d, dt_sum, mask=d_ok)
    else:
        tl.store(da_ptr + state_at, dA, mask=nd_ok)
        tl.store(dd_ptr + (sb * n_chunks + chunk) * DIM + d, dD, mask=d_ok)
        tl.store(dbias_ptr + (sb * n_chunks + chunk) * DIM + d, dbias, mask=d_ok)


def chunking(sets: int, batch: int, dim: int, length: int, tiling: ScanTiling) -> tuple[int, int]:
    """(chunk_len, n_chunks): one chunk when (set, batch, channel-block) programs fill the GPU, else
    enough chunks, each a whole number of checkpoint segments, to reach tiling.min_programs."""
    n_segments = triton.cdiv(length, tiling.ckpt_every)
    programs = sets * batch * triton.cdiv(dim, tiling.block_d)
    wanted = min(n_segments, max(1, triton.cdiv(tiling.min_programs, programs)))
    per_chunk = triton.cdiv(n_segments, wanted)
    return per_chunk * tiling.ckpt_every, triton.cdiv(n_segments, per_chunk)


def _strides(x: Tensor, sets_dim: bool = True) -> tuple[int, ...]:
    """(set, batch, time) strides of a (S, B, L, X) tensor, or (batch, time) of a (B, L, X) one."""
    if x.stride(-1) != 1:
        raise ValueError(f"the scan needs unit stride along the last dimension, got strides {x.stride()}")
    return tuple(x.stride()[:3] if sets_dim else x.stride()[:2])


def _unit_last(x: Tensor | None) -> Tensor | None:
    return x if x is None or x.stride(-1) == 1 else x.contiguous()


class _Launch:
    """What the forward and backward launches share: shapes, strides, chunking, grid."""

    def __init__(self, u, delta, B, C, z, A, reverse, tiling: ScanTiling):
        self.sets, self.batch, self.length, self.dim = u.shape
        self.device = u.device
        self.d_state = A.shape[1]  # A is (S, N, E) here
        self.tiling = tiling
        if tiling.ckpt_every % tiling.tile_len:
            raise ValueError(f"ckpt_every must be a multiple of tile_len, got {tiling}")
        self.chunk_len, self.n_chunks = chunking(self.sets, self.batch, self.dim, self.length, tiling)
        self.n_ckpts = triton.cdiv(self.length, tiling.ckpt_every)
        self.blocks = triton.cdiv(self.dim, tiling.block_d)
        self.grid = (self.sets * self.batch, self.blocks, self.n_chunks)
        self.rev_mask = sum(1 << i for i, r in enumerate(reverse) if r)
        z_strides = _strides(z, sets_dim=False) if z is not None else (0, 0)
        self.strides = _strides(u) + _strides(delta) + _strides(B) + _strides(C) + z_strides
        self.shape = dict(DIM=self.dim, N=self.d_state, BN=triton.next_power_of_2(self.d_state), BD=tiling.block_d)
        self.meta = dict(T=tiling.tile_len, CK=tiling.ckpt_every, num_warps=1, **self.shape)
        if tiling.max_registers:
            self.meta["maxnreg"] = tiling.max_registers
        self.sizes = (self.batch, self.length, self.chunk_len, self.n_chunks, self.n_ckpts)

    def states(self, *lead: int) -> Tensor:
        """A buffer of (..., N, E) fp32 states: channels contiguous, as the threads hold them."""
        return torch.empty(*lead, self.d_state, self.dim, device=self.device, dtype=torch.float32)

    def carry(self, local: Tensor, dt_sum: Tensor, A: Tensor, D: Tensor, backward: bool) -> Tensor:
        entering = torch.empty_like(local)
        _carry_kernel[self.grid[:2]](
            local, dt_sum, A, D, D, entering, self.batch, self.n_chunks, 0,
            BACKWARD=backward, num_warps=1, **self.shape,
        )  # fmt: skip
        return entering


def scan_forward(u, delta, A, B, C, D, z, delta_bias, reverse, delta_softplus, tiling, checkpoints=True):
    """y (S, B, L, E) in u's dtype, and the states every ckpt_every steps (S*B, n_ckpts, N, E) fp32
    that the backward restarts from (an empty tensor without `checkpoints`)."""
    run = _Launch(u, delta, B, C, z, A, reverse, tiling)
    y = torch.empty(u.shape, device=u.device, dtype=u.dtype)
    ckpt = run.states(run.sets * run.batch, run.n_ckpts) if checkpoints else y.new_empty(0, dtype=torch.float32)
    flags = dict(SOFTPLUS=delta_softplus, HAS_Z=z is not None, HAS_D=D is not None, **run.meta)
    D_arg = D if D is not None else delta_bias
    z_arg = z if z is not None else u
    h_start = None
    if run.n_chunks > 1:
        h_end = run.states(run.sets * run.batch, run.n_chunks)
        dt_sum = torch.empty(run.sets * run.batch, run.n_chunks, run.dim, device=u.device, dtype=torch.float32)
        _fwd_kernel[run.grid](
            u, delta, B, C, z_arg, A, D_arg, delta_bias, y, h_end, ckpt, h_end, dt_sum,
            *run.sizes, run.rev_mask, 0, *run.strides,
            HAS_H_START=False, WRITE_Y=False, WRITE_CKPT=False, WRITE_END=True, **flags,
        )  # fmt: skip
        h_start = run.carry(h_end, dt_sum, A, D_arg, backward=False)
    _fwd_kernel[run.grid](
        u, delta, B, C, z_arg, A, D_arg, delta_bias, y, h_start if h_start is not None else ckpt, ckpt, ckpt, ckpt,
        *run.sizes, run.rev_mask, 0, *run.strides,
        HAS_H_START=h_start is not None, WRITE_Y=True, WRITE_CKPT=checkpoints, WRITE_END=False, **flags,
    )  # fmt: skip
    return y, ckpt


def scan_backward(dy, ckpt, u, delta, A, B, C, D, z, delta_bias, reverse, delta_softplus, tiling):
    """Gradients of u, delta, A, B, C, D, z, delta_bias (None where the input was None)."""
    run = _Launch(u, delta, B, C, z, A, reverse, tiling)
    S, batch, L, E = u.shape
    flags = dict(SOFTPLUS=delta_softplus, HAS_Z=z is not None, HAS_D=D is not None, **run.meta)
    D_arg = D if D is not None else delta_bias
    z_arg = z if z is not None else u
    dy_strides = _strides(dy)
    du = torch.empty(u.shape, device=u.device, dtype=u.dtype)
    ddelta = torch.empty(delta.shape, device=u.device, dtype=delta.dtype)
    dz_sets = torch.empty(u.shape, device=u.device, dtype=z.dtype) if z is not None else None
    dB_blocks = torch.empty(run.blocks, S * batch, L, run.d_state, device=u.device, dtype=torch.float32)
    dC_blocks = torch.empty_like(dB_blocks)
    dA_part = run.states(S * batch, run.n_chunks)
    dD_part = torch.empty(S * batch, run.n_chunks, E, device=u.device, dtype=torch.float32)
    dbias_part = torch.empty_like(dD_part)
    programs = run.grid[0] * run.grid[1] * run.grid[2]
    tile_starts = tiling.ckpt_every // tiling.tile_len
    scratch = torch.empty(programs, tile_starts, run.shape["BN"], tiling.block_d, device=u.device, dtype=torch.float32)
    g_start = None
    if run.n_chunks > 1:
        g_out = run.states(S * batch, run.n_chunks)
        dt_sum = torch.empty_like(dD_part)
        _bwd_kernel[run.grid](
            u, delta, B, C, z_arg, A, D_arg, delta_bias, dy, ckpt, g_out, scratch,
            du, ddelta, du, dB_blocks, dC_blocks, dA_part, dD_part, dbias_part, g_out, dt_sum,
            *run.sizes, run.rev_mask, 0, *run.strides, *dy_strides, HAS_G_START=False, CARRY_ONLY=True, **flags,
        )  # fmt: skip
        g_start = run.carry(g_out, dt_sum, A, D_arg, backward=True)
    _bwd_kernel[run.grid](
        u, delta, B, C, z_arg, A, D_arg, delta_bias, dy, ckpt, g_start if g_start is not None else ckpt, scratch,
        du, ddelta, dz_sets if dz_sets is not None else du, dB_blocks, dC_blocks, dA_part, dD_part, dbias_part,
        ckpt, ckpt, *run.sizes, run.rev_mask, 0, *run.strides, *dy_strides,
        HAS_G_START=g_start is not None, CARRY_ONLY=False, **flags,
    )  # fmt: skip
    dB = dB_blocks.sum(0).view(S, batch, L, run.d_state).to(B.dtype)
    dC = dC_blocks.sum(0).view(S, batch, L, run.d_state).to(C.dtype)
    dA = dA_part.view(S, -1, run.d_state, E).sum(1).transpose(1, 2)
    dD = dD_part.view(S, -1, E).sum(1) if D is not None else None
    dbias = dbias_part.view(S, -1, E).sum(1)
    dz = dz_sets.sum(0, dtype=torch.float32).to(z.dtype) if z is not None else None
    return du, ddelta, dA, dB, dC, dD, dz, dbias


class SelectiveScanTriton(torch.autograd.Function):
    """Autograd for the kernels above. A, D, delta_bias go in as fp32; the rest keep their dtype."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, reverse, delta_softplus, tilings):
        u, delta, B, C, z = (_unit_last(x) for x in (u, delta, B, C, z))
        A = A.float().transpose(1, 2).contiguous()  # (S, N, E): channels contiguous, as the threads read it
        D = None if D is None else D.float().contiguous()
        needs_grad = any(ctx.needs_input_grad[:8])
        y, ckpt = scan_forward(u, delta, A, B, C, D, z, delta_bias, reverse, delta_softplus, tilings[0], needs_grad)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, ckpt)
        ctx.config = (reverse, delta_softplus, tilings[1])
        return y

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, dy):
        u, delta, A, B, C, D, z, delta_bias, ckpt = ctx.saved_tensors
        reverse, delta_softplus, tiling = ctx.config
        grads = scan_backward(
            _unit_last(dy), ckpt, u, delta, A, B, C, D, z, delta_bias, reverse, delta_softplus, tiling
        )
        return (*grads, None, None, None)


def selective_scan_triton(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    z: Tensor | None,
    delta_bias: Tensor | None,
    reverse: tuple[bool, ...],
    delta_softplus: bool = True,
    tiling: ScanTiling | tuple[ScanTiling, ScanTiling] | None = None,
) -> Tensor:
    """The S sets of a layer scanned in one launch per pass; shapes as in the module docstring.
    tiling: one launch shape for both kernels, a (forward, backward) pair, or None for
    default_tilings."""
    if delta_bias is None:
        delta_bias = torch.zeros(A.shape[:2], device=u.device, dtype=torch.float32)
    if tiling is None:
        tiling = default_tilings(*u.shape)
    tilings = (tiling, tiling) if isinstance(tiling, ScanTiling) else tuple(tiling)
    if tilings[0].ckpt_every != tilings[1].ckpt_every:
        raise ValueError(f"the forward and backward tilings must agree on ckpt_every, got {tilings}")
    return SelectiveScanTriton.apply(
        u, delta, A, B, C, D, z, delta_bias.float().contiguous(), tuple(reverse), delta_softplus, tilings
    )
