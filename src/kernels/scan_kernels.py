"""The Triton kernels of the selective scan of a bimamba-v2 layer, forward and backward, in the
layout the projections produce: no transposes, no flips. scan_triton.py launches them.

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

    forward   pass 1   every chunk but the last from a zero state: its final state and its sum of dt
              carry    chunk by chunk in scan order: the state entering each chunk
              pass 2   every chunk from its entering state: y, and every ckpt_every steps the
                       state the backward restarts from (never a (B, L, E, N) tensor)
    backward  pass 1   every chunk but the first from a zero adjoint: the adjoint it sends out of
                       its start
              carry    chunk by chunk against scan order: the adjoint entering each chunk
              pass 2   segments of ckpt_every steps from the chunk's end: the states at every
                       tile_len-th step again (into a small per-program scratch, fp32, 24-bit
                       or bf16: _scratch_put), then tile by tile in reverse, the tile's states
                       in registers, all the gradients

A short sequence is one chunk and runs pass 2 alone. The adjoint q_t = dy_t C_t + a_{t+1} q_{t+1}
(a_t = exp(dt_t A)) pairs with the state h_t (C's and z's gradients) and with the state before
it (A's and dt's): a_t q_t h_{t-1}, one product of the a_t q_t that carries the adjoint on and the
tile's state before step t (the tile keeps the state entering it too), where a_t h_{t-1} = h_t - x_t
(x_t = dt_t B_t u_t) would take one more and cancel digits. Gradients of B and C are summed over the
channels of a program, then added over programs with atomics (ATOMIC), as are each program's sums
for A, D and delta_bias; or all written per program and summed afterwards in a fixed order
(deterministic). The backward's walks load the next tile's inputs (and scratch state) one tile
ahead, as the forward does, and with PF both kernels ask L2 for the rows PF steps on, the next
checkpoint and the scratch state two tiles on (hints: no registers). With BC_LANES a lane loads
one state of B's and C's rows, and shuffles spread them to every lane's states (_states); the
backward then holds a lane's states in an order of its own (SWIZZLE, _swizzled), which spares its
sums of dB and dC over channels their selects (_sum_over_lanes_scattered). LANE
(ScanTiling.lane_states) keeps a channel's states in one lane; without it Triton may vectorise the
state accesses and lays 4 states x 4 channels on a thread (fewer shuffles in the sums over
channels). Runs under TRITON_INTERPRET=1 on a CPU for tests.
"""

from __future__ import annotations

import triton
import triton.language as tl

from src.kernels.fast_math import LN2, LOG2E, exp2, prefetch_l2, sigmoid, softplus


@triton.jit
def _program(
    a_ptr, d_ptr, bias_ptr, batch, rev_mask, n_chunks, zero, DIM, N, BN: tl.constexpr, BD: tl.constexpr,
    FIRST_CHUNK: tl.constexpr,
):  # fmt: skip
    """Who this program is and what it holds: set s, batch b, chunk (FIRST_CHUNK + its grid index),
    its scan direction, channels d (BD,), states n (BN,), their masks, A (BN, BD) fp32, bias and D
    (BD,), and where its chunk's (N, E) state slice sits in a (S*B, n_chunks, N, E) buffer.

    `zero` is 0, passed unspecialised (or a literal 0 without LANE), and offsets every (N, E) state
    access: unspecialised it hides their alignment from the compiler, which would otherwise
    vectorise them across channels and so lay the (BN, BD) tensors out with several channels per
    thread and the states spread over lanes. Unvectorised, the layout is a channel per lane (or
    two lanes), its states in registers."""
    sb = tl.program_id(0)  # set * batch + batch index
    s, b = sb // batch, sb % batch
    chunk = FIRST_CHUNK + tl.program_id(2)
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
    T: tl.constexpr, WITH_C: tl.constexpr, WITH_Z: tl.constexpr, WITH_DY: tl.constexpr, BC_LANES: tl.constexpr,
):  # fmt: skip
    """The raw inputs of the T steps k0, k0 + 1, ... (in scan order; nothing read outside [k_lo, k_hi)):
    tuples of T tensors each, in their stored dtype: u, delta, dy, z (BD,) and B, C (BN,), or with
    BC_LANES (BD,) holding state l % BN in lane l (for _states to spread). pointers
    and steps: (u, delta, B, C, z, dy) and their strides along time. Loading a whole tile before the
    stores of the one before lets the loads overlap (the compiler may not move a load past a store
    that could alias it)."""
    u_ptr, dt_ptr, b_ptr, c_ptr, z_ptr, dy_ptr = pointers
    su_l, sdt_l, sb_l, sc_l, sz_l, sdy_l = steps
    us, dts, Bs, Cs, zs, dys = (), (), (), (), (), ()
    if BC_LANES:  # lane l: state l % BN of B's and C's rows, (BD,) like u
        bc_at = d % n.shape[0]
    else:  # (BN,): every lane the whole row
        bc_at = n
    for i in tl.static_range(T):
        k = k0 + i
        ok = (k >= k_lo) & (k < k_hi)
        t = tl.where(rev == 1, length - 1 - k, k)
        us = us + (tl.load(u_ptr + t * su_l + d, mask=d_ok & ok, other=0.0),)
        dts = dts + (tl.load(dt_ptr + t * sdt_l + d, mask=d_ok & ok, other=0.0),)
        Bs = Bs + (tl.load(b_ptr + t * sb_l + bc_at, mask=(bc_at < N) & ok, other=0.0),)
        if WITH_C:
            Cs = Cs + (tl.load(c_ptr + t * sc_l + bc_at, mask=(bc_at < N) & ok, other=0.0),)
        if WITH_Z:
            zs = zs + (tl.load(z_ptr + t * sz_l + d, mask=d_ok & ok, other=0.0),)
        if WITH_DY:
            dys = dys + (tl.load(dy_ptr + t * sdy_l + d, mask=d_ok & ok, other=0.0),)
    return us, dts, Bs, Cs, zs, dys


# which inputs' rows a program asks L2 for ahead of their loads, as bits
U_ROW, DELTA_ROW, B_ROW, C_ROW, Z_ROW, DY_ROW = (tl.constexpr(1 << i) for i in range(6))


@triton.jit
def _row_lanes(pointers, steps, d, DIM: tl.constexpr, ROWS: tl.constexpr):
    """Which row each lane asks L2 for in _prefetch_tile, so that one prefetch instruction covers a
    step's rows of every input ROWS names (and with 32 lanes two steps'), where a prefetch a row
    (all its lanes on one row) took one instruction a row. Lane l: 32-byte sector l % SECTORS of
    this program's part of a row (its channels; B's and C's rows are 32 bytes), of input
    (l // SECTORS) % 8 of pointers (an input ROWS does not name: the first it names). Returns the
    lanes' pointers at time 0 and their time strides (BD,)."""
    BD: tl.constexpr = d.shape[0]
    tl.static_assert(BD >= 8)
    SECTORS: tl.constexpr = 2 if BD >= 32 else 1  # 16 bf16 channels a sector; as _prefetch_tile
    lane = tl.arange(0, BD)
    which = (lane // SECTORS) % 8
    channel = tl.minimum(d - lane + 16 * (lane % SECTORS), DIM - 1)  # valid addresses only
    if U_ROW & ROWS:  # (a constexpr first: the interpreter passes ints)
        lane_ptr, lane_step = pointers[0] + channel, steps[0] + 0 * lane
    else:
        lane_ptr, lane_step = pointers[3] + 0 * lane, steps[3] + 0 * lane
    for i in tl.static_range(6):
        if (ROWS >> i) & 1:
            if ((B_ROW | C_ROW) >> i) & 1:  # N states a row
                lane_ptr = tl.where(which == i, pointers[i], lane_ptr)
            else:
                lane_ptr = tl.where(which == i, pointers[i] + channel, lane_ptr)
            lane_step = tl.where(which == i, steps[i], lane_step)
    return lane_ptr, lane_step


@triton.jit
def _prefetch_tile(lanes, k, k_lo, k_hi, length, rev, T: tl.constexpr):
    """L2 prefetch of the rows of steps k .. k + T - 1 (clamped into [k_lo, k_hi)) that _row_lanes
    spread over the lanes (lanes: what it returned): a step's loads then wait on L2, not DRAM,
    without holding the registers a load further ahead would. The lanes past a step's rows (8
    inputs x SECTORS) take the next step: STEPS steps an instruction."""
    BD: tl.constexpr = lanes[0].shape[0]
    A_STEP: tl.constexpr = 16 if BD >= 32 else 8  # the lanes a step's rows take: 8 inputs x SECTORS
    STEPS: tl.constexpr = BD // A_STEP if BD // A_STEP < T else T
    for j in tl.static_range(0, T, STEPS):
        prefetch_l2(_prefetched(lanes, k + j, k_lo, k_hi, length, rev, STEPS))


@triton.jit
def _prefetched(lanes, k, k_lo, k_hi, length, rev, STEPS: tl.constexpr):
    """The addresses one prefetch instruction asks for: the lanes' rows of steps k .. k + STEPS - 1,
    each step's in its own BD / STEPS lanes."""
    lane_ptr, lane_step = lanes
    BD: tl.constexpr = lane_ptr.shape[0]
    step = k + (tl.arange(0, BD) // (BD // STEPS)) % STEPS
    step = tl.minimum(tl.maximum(step, k_lo), k_hi - 1)
    t = tl.where(rev == 1, length - 1 - step, step)
    return lane_ptr + t * lane_step


SHFL_IDX = tl.constexpr("shfl.sync.idx.b32 $0, $1, $2, 0x1f, 0xffffffff;")
SHFL_BFLY = tl.constexpr("shfl.sync.bfly.b32 $0, $1, $2, 0x1f, 0xffffffff;")


@triton.jit
def _states(row, n, BC_LANES: tl.constexpr, SWIZZLE: tl.constexpr, FAST: tl.constexpr):
    """A row of B or C as _load_tile gave it, in fp32, shaped to scale the (BN, BD) states: (BN, 1)
    from a whole row in every lane, or, with BC_LANES (a state a lane), (BN, BD) with slot n's state
    taken from the lane that holds it: lane n, or with SWIZZLE (state n ^ (l % BN) in lane l) lane
    l ^ n. Ordinary registers, where ptxas keeps whole rows, the same in every lane, in uniform
    registers, and moves them there right after their loads, waiting for them. FAST (a channel a
    lane, BD 32): one shuffle a slot, n an immediate; else tl.gather (the interpreter's path)."""
    row = row.to(tl.float32)
    if BC_LANES:
        shape: tl.constexpr = (n.shape[0], row.shape[0])
        lanes = tl.broadcast_to(row[None, :], shape)
        if FAST:
            asm: tl.constexpr = SHFL_BFLY if SWIZZLE else SHFL_IDX
            source = tl.broadcast_to(n[:, None], shape)
            return tl.inline_asm_elementwise(asm, "=f,f,r", [lanes, source], dtype=tl.float32, is_pure=True, pack=1)
        else:
            if SWIZZLE:
                source = tl.broadcast_to(n[:, None] ^ tl.arange(0, row.shape[0])[None, :], shape)
            else:
                source = tl.broadcast_to(n[:, None], shape)
            return tl.gather(lanes, source, axis=1)
    else:
        return row[:, None]


@triton.jit
def _swizzled(x, SWIZZLE: tl.constexpr):
    """(BN, BD) states (BN 16, a channel a lane) from state order to the order SWIZZLE keeps them in,
    slot j of lane l holding state j ^ (l % 16), or back (the map is its own inverse): a swap of
    slot pairs 2^b apart where bit b of l % 16 is set, for b = 0..3 (16 selects each). At the loads and
    stores of whole states (A, checkpoints, the adjoint between chunks, dA), whose addresses stay
    those of state order."""
    if SWIZZLE:
        BN: tl.constexpr = x.shape[0]
        BD: tl.constexpr = x.shape[1]
        tl.static_assert(BN == 16)
        lane = tl.arange(0, BD) % 16
        for bit in tl.static_range(4):
            pairs = tl.permute(tl.reshape(x, (BN // (2 << bit), 2, 1 << bit, BD)), (0, 2, 3, 1))
            lo, hi = tl.split(pairs)
            swapped = tl.reshape(tl.permute(tl.join(hi, lo), (0, 3, 1, 2)), (BN, BD))
            x = tl.where(((lane >> bit) & 1)[None, :] == 1, swapped, x)
    return x


@triton.jit
def _from_lane_xor(x, BIT: tl.constexpr, FAST: tl.constexpr):
    """x (R, 32), channel d in lane d, as lane d ^ BIT holds it: one butterfly shuffle a value
    (FAST), else tl.gather (the interpreter's path)."""
    if FAST:
        mask = tl.full(x.shape, BIT, tl.int32)
        return tl.inline_asm_elementwise(SHFL_BFLY, "=f,f,r", [x, mask], dtype=tl.float32, is_pure=True, pack=1)
    else:
        return tl.gather(x, tl.broadcast_to(tl.arange(0, 32)[None, :] ^ BIT, x.shape), axis=1)


@triton.jit
def _halve(x, BIT: tl.constexpr, SELECT: tl.constexpr, FAST: tl.constexpr):
    """One level of a reduce-scatter over the warp: x (2 R, 32), channel d in lane d -> (R, 32): a
    lane keeps one half of the rows and adds the partner lane's (lane ^ BIT) copy of it, which the
    partner sends: the lower rows, or with SELECT the half the lane's BIT selects (2 selects a kept
    row). One shuffle a kept row."""
    ROWS: tl.constexpr = x.shape[0] // 2
    keep, send = tl.split(tl.permute(tl.reshape(x, (2, ROWS, 32)), (1, 2, 0)))
    if SELECT:
        upper = (tl.arange(0, 32) & BIT) != 0
        keep, send = tl.where(upper, send, keep), tl.where(upper, keep, send)
    return keep + _from_lane_xor(send, BIT, FAST)


@triton.jit
def _sum_over_lanes_scattered(db, dc, SWIZZLE: tl.constexpr, FAST: tl.constexpr):
    """db, dc (16, 32): dB's and dC's terms for each of 16 slots, channel d in lane d (32 channels
    a warp, one a lane) -> (32,): lane L holds dB's (L < 16) or dC's sum over the 32 channels for
    state L % 16. A butterfly that halves what a lane holds at every level: 31 shuffles, where
    summing each row across the warp takes 5 a row (160). Slot j holds state j: the lanes select the
    half they keep (62 selects). With SWIZZLE slot j of lane L holds state j ^ (L % 16) (_swizzled): the
    lower slots of lane L and the upper slots of lane L ^ bit then hold the same states and every
    lane keeps its lower slots, the states' levels with no selects, then dB or dC (2 selects)."""
    if SWIZZLE:
        for bit in tl.static_range(3, -1, -1):  # lanes 8, 4, 2, 1 apart: (16, 32) -> (1, 32)
            db = _halve(db, 1 << bit, False, FAST)
            dc = _halve(dc, 1 << bit, False, FAST)
        x = tl.reshape(tl.permute(tl.join(db, dc), (2, 0, 1)), (2, 32))
        x = _halve(x, 16, True, FAST)
    else:
        x = tl.reshape(tl.permute(tl.join(db, dc), (2, 0, 1)), (32, 32))
        for bit in tl.static_range(4, -1, -1):  # lanes 16, 8, 4, 2, 1 apart: (32, 32) -> (1, 32)
            x = _halve(x, 1 << bit, True, FAST)
    return tl.reshape(x, (32,))


@triton.jit
def _scratch_put(ptr, at, h, BITS: tl.constexpr, FAST: tl.constexpr):
    """Writes the (BN, BD) fp32 state h as a tile's scratch state at ptr + at, at the offsets of its
    first BN rows (fp32 or bf16, as stored) or BN // 4 rows (BITS 24: each state rounded to its 24
    high bits, 15 of fp32's 23 mantissa bits, a relative 2^-16, and 4 states packed into 3 words,
    _pack24, each word BN // 4 rows after the one before)."""
    if BITS == 24:
        QUARTER: tl.constexpr = at.shape[0] * at.shape[1]
        w0, w1, w2 = _pack24(h, FAST)
        tl.store(ptr + at, w0)
        tl.store(ptr + at + QUARTER, w1)
        tl.store(ptr + at + 2 * QUARTER, w2)
    else:
        tl.store(ptr + at, h.to(ptr.dtype.element_ty))


@triton.jit
def _scratch_get(ptr, at, BITS: tl.constexpr):
    """The (BN, BD) fp32 state _scratch_put wrote at ptr + at."""
    if BITS == 24:
        QUARTER: tl.constexpr = at.shape[0] * at.shape[1]
        w0 = tl.load(ptr + at).to(tl.uint32, bitcast=True)  # stored as int32
        w1 = tl.load(ptr + at + QUARTER).to(tl.uint32, bitcast=True)
        w2 = tl.load(ptr + at + 2 * QUARTER).to(tl.uint32, bitcast=True)
        h = _unpack24(w0, w1, w2)
    else:
        h = tl.load(ptr + at).to(tl.float32)
    return h


# _pack24's words as byte permutes (prmt: bytes 0-3 of the first operand, 4-7 of the second; a
# hex digit a byte of the result, lowest first)
W0_SELECT, W1_SELECT, W2_SELECT = tl.constexpr(0x5321), tl.constexpr(0x6532), tl.constexpr(0x7653)
W0_PRMT = tl.constexpr("prmt.b32 $0, $1, $2, 0x5321;")
W1_PRMT = tl.constexpr("prmt.b32 $0, $1, $2, 0x6532;")
W2_PRMT = tl.constexpr("prmt.b32 $0, $1, $2, 0x7653;")


@triton.jit
def _byte_perm(a, b, SELECT: tl.constexpr, PTX: tl.constexpr, FAST: tl.constexpr):
    """Byte j of the result: byte (SELECT >> 4 j) & 7 of b:a (uint32). FAST: one PRMT (PTX, the same
    permute as inline PTX), which ptxas does not make of the shifts and masks it replaces."""
    if FAST:
        out = tl.inline_asm_elementwise(PTX, "=r,r,r", [a, b], dtype=tl.uint32, is_pure=True, pack=1)
    else:
        out = a * 0
        for j in tl.static_range(4):
            source: tl.constexpr = (SELECT >> (4 * j)) & 7
            if source >= 4:
                out = out | (((b >> (8 * (source - 4))) & 0xFF) << (8 * j))
            else:
                out = out | (((a >> (8 * source)) & 0xFF) << (8 * j))
    return out


@triton.jit
def _pack24(h, FAST: tl.constexpr):
    """(BN, BD) fp32 -> three (BN // 4, BD) uint32 words holding states 4j .. 4j + 3 of each lane,
    each rounded to its 24 high bits (+0x80: to nearest, ties away from zero) and laid end to end:
    w0 = bytes 1-3 of the first and byte 1 of the second, w1 = bytes 2-3 of the second and 1-2 of
    the third, w2 = byte 3 of the third and 1-3 of the fourth."""
    BN: tl.constexpr = h.shape[0]
    BD: tl.constexpr = h.shape[1]
    quads = tl.permute(tl.reshape(h, (BN // 4, 2, 2, BD)), (0, 3, 1, 2))  # (BN // 4, BD, 2 over p, 2 over q)
    even, odd = tl.split(quads)  # states 4j + 2p + q: even (q 0) and odd (q 1), (BN // 4, BD, 2) over p
    x0, x2 = tl.split(even)
    x1, x3 = tl.split(odd)
    y0 = x0.to(tl.uint32, bitcast=True) + 0x80
    y1 = x1.to(tl.uint32, bitcast=True) + 0x80
    y2 = x2.to(tl.uint32, bitcast=True) + 0x80
    y3 = x3.to(tl.uint32, bitcast=True) + 0x80
    w0 = _byte_perm(y0, y1, W0_SELECT, W0_PRMT, FAST)
    w1 = _byte_perm(y1, y2, W1_SELECT, W1_PRMT, FAST)
    w2 = _byte_perm(y2, y3, W2_SELECT, W2_PRMT, FAST)
    return w0, w1, w2


@triton.jit
def _unpack24(w0, w1, w2):
    """The (BN, BD) fp32 states _pack24 packed into w0, w1, w2 (uint32; their low bytes zero)."""
    x0 = w0 << 8
    x1 = ((w0 >> 24) << 8) | (w1 << 16)
    x2 = ((w1 >> 16) << 8) | (w2 << 24)
    x3 = (w2 >> 8) << 8
    x0, x1 = x0.to(tl.float32, bitcast=True), x1.to(tl.float32, bitcast=True)
    x2, x3 = x2.to(tl.float32, bitcast=True), x3.to(tl.float32, bitcast=True)
    Q: tl.constexpr = x0.shape[0]
    BD: tl.constexpr = x0.shape[1]
    quads = tl.join(tl.join(x0, x2), tl.join(x1, x3))  # (Q, BD, 2 over p, 2 over q)
    return tl.reshape(tl.permute(quads, (0, 2, 3, 1)), (4 * Q, BD))


@triton.jit
def _dt(raw, bias, m, SOFTPLUS: tl.constexpr, FAST: tl.constexpr):
    """dt = softplus(delta + bias), 0 where m is off (a masked step: the state passes through);
    and delta + bias itself."""
    dt_in = raw.to(tl.float32) + bias
    dt = dt_in
    if SOFTPLUS:
        dt = softplus(dt, FAST)
    return tl.where(m, dt, 0.0), dt_in


@triton.jit(do_not_specialize=["zero"])  # see _program
def scan_forward_kernel(
    u_ptr, dt_ptr, b_ptr, c_ptr, z_ptr, a_ptr, d_ptr, bias_ptr,
    y_ptr, h_start_ptr, ckpt_ptr, h_end_ptr, dt_sum_ptr,
    batch, length, chunk_len, n_chunks, n_ckpts, rev_mask, zero,
    su_s, su_b, su_l, sdt_s, sdt_b, sdt_l, sb_s, sb_b, sb_l, sc_s, sc_b, sc_l, sz_b, sz_l,
    DIM: tl.constexpr, N: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr, T: tl.constexpr, CK: tl.constexpr,
    SOFTPLUS: tl.constexpr, HAS_Z: tl.constexpr, HAS_D: tl.constexpr, HAS_H_START: tl.constexpr,
    WRITE_Y: tl.constexpr, WRITE_CKPT: tl.constexpr, WRITE_END: tl.constexpr, LANE: tl.constexpr, FAST: tl.constexpr,
    PF: tl.constexpr, BC_LANES: tl.constexpr,
):  # fmt: skip
    if LANE:
        hide = zero
    else:
        hide = 0
    sb, s, b, chunk, rev, d, n, d_ok, nd_ok, A, bias, D, state_at = _program(
        a_ptr, d_ptr, bias_ptr, batch, rev_mask, n_chunks, hide, DIM, N, BN, BD, 0
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
    ROWS: tl.constexpr = U_ROW | DELTA_ROW | B_ROW | ((C_ROW | (Z_ROW if HAS_Z else 0)) if WRITE_Y else 0)
    if PF > 0:
        rows = _row_lanes(pointers, steps, d, DIM, ROWS)
    y_ptr += sb.to(tl.int64) * length * DIM  # y: (S, B, L, E) contiguous
    k_begin = chunk * chunk_len
    k_end = tl.minimum(k_begin + chunk_len, length)
    tile = _load_tile(
        pointers, steps, k_begin, k_begin, k_end, length, rev, d, n, d_ok, N, T, WRITE_Y, WRITE_Y and HAS_Z, False,
        BC_LANES,
    )  # fmt: skip
    for k0 in tl.range(k_begin, k_end, T):
        us, dts, Bs, Cs, zs, _ = tile  # this tile; the next one's loads go out before its stores
        tile = _load_tile(
            pointers, steps, k0 + T, k_begin, k_end, length, rev, d, n, d_ok, N, T, WRITE_Y, WRITE_Y and HAS_Z, False,
            BC_LANES,
        )  # fmt: skip
        if WRITE_CKPT:
            if k0 % CK == 0:  # the state entering these CK steps: the backward restarts here
                ckpt_at = hide + ((sb * n_ckpts + k0 // CK) * N + n[:, None]).to(tl.int64) * DIM + d[None, :]
                tl.store(ckpt_ptr + ckpt_at, h, mask=nd_ok)
        if PF > 0:
            _prefetch_tile(rows, k0 + PF, k_begin, k_end, length, rev, T)
        for i in tl.static_range(T):
            ok = k0 + i < k_end
            t = tl.where(rev == 1, length - 1 - (k0 + i), k0 + i)
            u = us[i].to(tl.float32)
            dt, _ = _dt(dts[i], bias, d_ok & ok, SOFTPLUS, FAST)
            Bt = _states(Bs[i], n, BC_LANES, False, FAST)
            h = exp2(A2 * dt[None, :], FAST) * h + Bt * (dt * u)[None, :]  # (BN, BD)
            if WRITE_Y:
                y = tl.sum(h * _states(Cs[i], n, BC_LANES, False, FAST), axis=0)  # (BD,): a sum inside each thread
                if HAS_D:
                    y += D * u
                if HAS_Z:
                    zt = zs[i].to(tl.float32)
                    y = y * zt * sigmoid(zt, FAST)
                tl.store(y_ptr + t * DIM + d, y.to(y_ptr.dtype.element_ty), mask=d_ok & ok)
            if WRITE_END:
                dt_sum += dt
    if WRITE_END:
        tl.store(h_end_ptr + state_at, h, mask=nd_ok)
        tl.store(dt_sum_ptr + (sb * n_chunks + chunk) * DIM + d, dt_sum, mask=d_ok)


@triton.jit
def _chunk_at(i, sb, n, d, n_chunks, zero, DIM, N, BACKWARD: tl.constexpr):
    """The i-th chunk in carry order (scan order, or against it for the backward): its (N, E) state
    offsets (BN, BD) and its dt_sum row offsets (BD,)."""
    if BACKWARD:
        c = n_chunks - 1 - i
    else:
        c = i
    row = sb * n_chunks + c
    return zero + (row * N + n[:, None]).to(tl.int64) * DIM + d[None, :], row * DIM + d


@triton.jit(do_not_specialize=["zero"])
def chunk_carry_kernel(
    local_ptr, dt_sum_ptr, a_ptr, d_ptr, bias_ptr, out_ptr, batch, n_chunks, zero,
    DIM: tl.constexpr, N: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr, BACKWARD: tl.constexpr, FAST: tl.constexpr,
    GROUP: tl.constexpr,
):  # fmt: skip
    """out[c] = what enters chunk c: exp(A dt_sum[c']) out[c'] + local[c'] with c' the chunk before
    c in scan order (forward) or after it (backward); zero for the first. The last chunk's local and
    dt_sum (unwritten: its first pass does not run) only reach the h after the last store. The
    chunks go GROUP at a time, every load of a group issued before its first store: the carry is
    serial, and one chunk at a time each waited on its loads (86 chunks at batch 4 and 22001 steps)."""
    sb, s, b, _, _, d, n, d_ok, nd_ok, A, _, _, _ = _program(
        a_ptr, d_ptr, bias_ptr, batch, 0, n_chunks, zero, DIM, N, BN, BD, 0
    )
    A2 = A * LOG2E
    h = tl.zeros((BN, BD), dtype=tl.float32)
    for first in tl.range(0, n_chunks, GROUP):
        ats, locals_, dt_sums = (), (), ()
        for j in tl.static_range(GROUP):
            at, dt_at = _chunk_at(first + j, sb, n, d, n_chunks, zero, DIM, N, BACKWARD)
            ok = first + j < n_chunks
            ats = ats + (at,)
            locals_ = locals_ + (tl.load(local_ptr + at, mask=nd_ok & ok, other=0.0),)
            dt_sums = dt_sums + (tl.load(dt_sum_ptr + dt_at, mask=d_ok & ok, other=0.0),)
        for j in tl.static_range(GROUP):
            tl.store(out_ptr + ats[j], h, mask=nd_ok & (first + j < n_chunks))
            h = exp2(A2 * dt_sums[j][None, :], FAST) * h + locals_[j]


@triton.jit(do_not_specialize=["zero"])
def scan_backward_kernel(
    u_ptr, dt_ptr, b_ptr, c_ptr, z_ptr, a_ptr, d_ptr, bias_ptr, dy_ptr, ckpt_ptr, g_start_ptr, scratch_ptr,
    du_ptr, ddt_ptr, dz_ptr, db_ptr, dc_ptr, da_ptr, dd_ptr, dbias_ptr, g_end_ptr, dt_sum_ptr,
    batch, length, chunk_len, n_chunks, n_ckpts, rev_mask, zero,
    su_s, su_b, su_l, sdt_s, sdt_b, sdt_l, sb_s, sb_b, sb_l, sc_s, sc_b, sc_l, sz_b, sz_l,
    sdy_s, sdy_b, sdy_l,
    DIM: tl.constexpr, N: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr, T: tl.constexpr, CK: tl.constexpr,
    SOFTPLUS: tl.constexpr, HAS_Z: tl.constexpr, HAS_D: tl.constexpr, HAS_G_START: tl.constexpr,
    CARRY_ONLY: tl.constexpr, LANE: tl.constexpr, ATOMIC: tl.constexpr, FAST: tl.constexpr,
    SCATTER: tl.constexpr, PF: tl.constexpr, BC_LANES: tl.constexpr, SWIZZLE: tl.constexpr, SCRATCH_BITS: tl.constexpr,
    KEEP_LAST: tl.constexpr,
):  # fmt: skip
    if LANE:
        hide = zero
    else:
        hide = 0
    sb, s, b, chunk, rev, d, n, d_ok, nd_ok, A, bias, D, state_at = _program(
        a_ptr, d_ptr, bias_ptr, batch, rev_mask, n_chunks, hide, DIM, N, BN, BD, 1 if CARRY_ONLY else 0
    )  # the carry pass skips chunk 0: the adjoint leaving the sequence's start goes nowhere
    A2 = _swizzled(A * LOG2E, SWIZZLE)
    if not HAS_D:
        D = D * 0.0
    block = tl.program_id(1)
    if HAS_G_START:  # the adjoint entering this chunk from its end (later chunks in scan order)
        g = _swizzled(tl.load(g_start_ptr + state_at, mask=nd_ok, other=0.0), SWIZZLE)
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
    if PF > 0:  # pass 2's walks ask for every input's rows (fewer registers than a set for each);
        # the carry pass reads no u and no B (their loads go unused, so ptxas drops them)
        WALKED: tl.constexpr = DELTA_ROW | C_ROW | DY_ROW | (Z_ROW if HAS_Z else 0)
        rows = _row_lanes(pointers, steps, d, DIM, WALKED if CARRY_ONLY else WALKED | U_ROW | B_ROW)
    out_ptrs = sb.to(tl.int64) * length * DIM + d  # du, ddt, dz: (S, B, L, E) contiguous
    bc_at_row = sb.to(tl.int64) * length * N
    if ATOMIC:  # dB, dC: (S*B, L, N), every channel block adds into it
        bc_at = bc_at_row + n
    else:  # dB, dC: (blocks, S*B, L, N), summed over blocks afterwards
        bc_at = (block * tl.num_programs(0) + sb).to(tl.int64) * length * N + n
    # this program's scratch: (CK // T, TILE_ROWS, BD), the states at the start of every tile of a segment
    # (ScanTiling.scratch: fp32, packed 24-bit or bf16; _scratch_put)
    TILE_ROWS: tl.constexpr = 3 * (BN // 4) if SCRATCH_BITS == 24 else BN  # rows of BD values a state takes
    scratch_row = tl.arange(0, BN // 4 if SCRATCH_BITS == 24 else BN)  # the rows _scratch_put addresses
    program = (sb * tl.num_programs(1) + block) * n_chunks + chunk
    scratch_at = (
        hide + (program.to(tl.int64) * (CK // T) * TILE_ROWS + scratch_row[:, None]) * BD + tl.arange(0, BD)[None, :]
    )
    scratch_lines = hide + program.to(tl.int64) * (CK // T) * TILE_ROWS * BD + tl.arange(0, BD) * TILE_ROWS  # a tile
    k_begin = chunk * chunk_len
    k_end = tl.minimum(k_begin + chunk_len, length)
    n_segments = tl.cdiv(k_end - k_begin, CK)
    for js in tl.range(0, n_segments):
        k1 = k_begin + (n_segments - 1 - js) * CK  # segments from the chunk's end to its start
        n_tiles = tl.cdiv(tl.minimum(k1 + CK, k_end) - k1, T)
        if not CARRY_ONLY:  # the state at the start of every tile, from the one the forward kept
            ckpt_at = hide + ((sb * n_ckpts + k1 // CK) * N + n[:, None]).to(tl.int64) * DIM + d[None, :]
            h = _swizzled(tl.load(ckpt_ptr + ckpt_at, mask=nd_ok, other=0.0), SWIZZLE)
            if PF > 0:
                if k1 > k_begin:  # the next segment's checkpoint, wanted a segment from now, row by row
                    row = (sb * n_ckpts + k1 // CK - 1).to(tl.int64) * N * DIM + tl.minimum(d, DIM - 1)
                    for r in tl.static_range(N):
                        prefetch_l2(ckpt_ptr + hide + row + r * DIM)
            walk = _load_tile(
                pointers, steps, k1, k1, k_end, length, rev, d, n, d_ok, N, T, False, False, False, BC_LANES
            )
            for jt in tl.range(0, n_tiles - 1):
                us, dts, Bs, _, _, _ = walk  # this tile; the next one's loads go out before its stores
                walk = _load_tile(
                    pointers, steps, k1 + (jt + 1) * T, k1, k_end, length, rev, d, n, d_ok, N, T, False, False, False,
                    BC_LANES,
                )  # fmt: skip
                _scratch_put(scratch_ptr, scratch_at + jt * TILE_ROWS * BD, h, SCRATCH_BITS, FAST)
                if PF > 0:
                    _prefetch_tile(rows, k1 + jt * T + PF, k1, k_end, length, rev, T)
                for i in tl.static_range(T):
                    dt, _ = _dt(dts[i], bias, d_ok & (k1 + jt * T + i < k_end), SOFTPLUS, FAST)
                    h = (
                        exp2(A2 * dt[None, :], FAST) * h
                        + _states(Bs[i], n, BC_LANES, SWIZZLE, FAST) * (dt * us[i].to(tl.float32))[None, :]
                    )
            if not KEEP_LAST:  # else it stays in registers: the walk back starts there
                _scratch_put(scratch_ptr, scratch_at + (n_tiles - 1) * TILE_ROWS * BD, h, SCRATCH_BITS, FAST)
        k_last = k1 + (n_tiles - 1) * T
        tile = _load_tile(
            pointers, steps, k_last, k1, k_end, length, rev, d, n, d_ok, N, T, True, HAS_Z, True, BC_LANES
        )
        for jt in tl.range(0, n_tiles):
            k0 = k_last - jt * T  # tiles from the segment's end to its start
            us, dts, Bs, Cs, zs, dys = tile  # this tile; the one before it loads meanwhile
            tile = _load_tile(
                pointers, steps, k0 - T, k1, k_end, length, rev, d, n, d_ok, N, T, True, HAS_Z, True, BC_LANES
            )
            # the tile's states (hs[0] the one entering it, hs[i + 1] after step i), decays and
            # step sizes, in registers
            hs, decays, dt_outs, dt_ins = (), (), (), ()
            for i in tl.static_range(T):
                dt, dt_in = _dt(dts[i], bias, d_ok & (k0 + i < k_end), SOFTPLUS, FAST)
                a = exp2(A2 * dt[None, :], FAST)
                decays, dt_outs, dt_ins = decays + (a,), dt_outs + (dt,), dt_ins + (dt_in,)
            if not CARRY_ONLY:
                if PF > 0:  # the start state two tiles on: BN * BD values, BN a lane (one instruction)
                    prefetch_l2(scratch_ptr + scratch_lines + tl.maximum(n_tiles - 3 - jt, 0) * TILE_ROWS * BD)
                at = scratch_at + (n_tiles - 1 - jt) * TILE_ROWS * BD
                if KEEP_LAST:
                    if jt > 0:  # the first tile back starts from the walk forward's last state
                        h = _scratch_get(scratch_ptr, at, SCRATCH_BITS)
                else:
                    h = _scratch_get(scratch_ptr, at, SCRATCH_BITS)
                hs = (h,)
                for i in tl.static_range(T):
                    Bt = _states(Bs[i], n, BC_LANES, SWIZZLE, FAST)
                    h = decays[i] * h + Bt * (dt_outs[i] * us[i].to(tl.float32))[None, :]
                    hs = hs + (h,)
            if PF > 0:  # PF steps on, the rows not read yet (pass 2 walked u, delta and B forward)
                _prefetch_tile(rows, k0 - PF, k_begin, k_end, length, rev, T)
            # back through the tile: q_k = dy_k C_k + a_{k+1} q_{k+1}, with g = a_{k+1} q_{k+1}
            for i in tl.static_range(T - 1, -1, -1):
                k = k0 + i
                m = d_ok & (k < k_end)
                t = tl.where(rev == 1, length - 1 - k, k)
                dt, dt_in = dt_outs[i], dt_ins[i]
                u, Bt, Ct, dout = (
                    us[i].to(tl.float32),
                    _states(Bs[i], n, BC_LANES, SWIZZLE, FAST),
                    _states(Cs[i], n, BC_LANES, SWIZZLE, FAST),
                    dys[i].to(tl.float32),
                )
                if HAS_Z:
                    zt = zs[i].to(tl.float32)
                    z_sig = sigmoid(zt, FAST)
                    dy = dout * zt * z_sig
                else:
                    dy = dout
                q = Ct * dy[None, :] + g  # (BN, BD) the adjoint of h_k
                g = decays[i] * q  # a_k q_k: what step k - 1's adjoint adds
                if CARRY_ONLY:
                    dt_sum += dt
                else:
                    h = hs[i + 1]
                    if HAS_Z:
                        y = tl.sum(h * Ct, axis=0) + D * u
                        dz = dout * y * z_sig * (1.0 + zt * (1.0 - z_sig))
                        tl.store(dz_ptr + out_ptrs + t * DIM, dz.to(dz_ptr.dtype.element_ty), mask=m)
                    # h_k = a_k h_{k-1} + dt_k u_k B_k:
                    #   du = dt q.B + D dy    ddt = u q.B + sum_n A q a h_{k-1}    dA += dt q a h_{k-1}
                    q_B = tl.sum(q * Bt, axis=0)  # (BD,)
                    dt_u = dt * u
                    q_hx = g * hs[i]  # q_k a_k h_{k-1}, one product (h_k - x_k would cancel)
                    du = dt * q_B + dy * D
                    ddt = u * q_B + LN2 * tl.sum(A2 * q_hx, axis=0)  # A2, not A: A's registers freed
                    if SOFTPLUS:
                        ddt = ddt * sigmoid(dt_in, FAST)
                    ddt = tl.where(m, ddt, 0.0)
                    tl.store(du_ptr + out_ptrs + t * DIM, du.to(du_ptr.dtype.element_ty), mask=m)
                    tl.store(ddt_ptr + out_ptrs + t * DIM, ddt.to(ddt_ptr.dtype.element_ty), mask=m)
                    bc_ok = (n < N) & (k < k_end)  # dB, dC: sums over this program's channels
                    if SCATTER:  # BD = 32, BN = 16, a channel a lane: dB's and dC's rows, one a lane
                        total = _sum_over_lanes_scattered(q * dt_u[None, :], h * dy[None, :], SWIZZLE, FAST)
                        row = tl.arange(0, 2 * BN)  # lane L: row L, dB's state L, or dC's state L - BN
                        at = tl.where(row < BN, db_ptr + bc_at_row + t * N + row, dc_ptr + bc_at_row + t * N + row - BN)
                        tl.atomic_add(at, total, mask=((row % BN) < N) & (k < k_end), sem="relaxed")
                    else:
                        db = tl.sum(q * dt_u[None, :], axis=1)
                        dc = tl.sum(h * dy[None, :], axis=1)
                        if ATOMIC:
                            tl.atomic_add(db_ptr + bc_at + t * N, db, mask=bc_ok, sem="relaxed")
                            tl.atomic_add(dc_ptr + bc_at + t * N, dc, mask=bc_ok, sem="relaxed")
                        else:
                            tl.store(db_ptr + bc_at + t * N, db, mask=bc_ok)
                            tl.store(dc_ptr + bc_at + t * N, dc, mask=bc_ok)
                    dA += q_hx * dt[None, :]
                    dD += dy * u
                    dbias += ddt
    g, dA = _swizzled(g, SWIZZLE), _swizzled(dA, SWIZZLE)  # back in state order
    if CARRY_ONLY:
        tl.store(g_end_ptr + state_at, g, mask=nd_ok)
        tl.store(dt_sum_ptr + (sb * n_chunks + chunk) * DIM + d, dt_sum, mask=d_ok)
    elif ATOMIC:  # dA: (S, N, E), dD and dbias: (S, E), every program adds into them
        tl.atomic_add(da_ptr + s * N * DIM + (hide + n[:, None] * DIM + d[None, :]), dA, mask=nd_ok, sem="relaxed")
        tl.atomic_add(dd_ptr + s * DIM + d, dD, mask=d_ok, sem="relaxed")
        tl.atomic_add(dbias_ptr + s * DIM + d, dbias, mask=d_ok, sem="relaxed")
    else:  # per program: dA (S*B, n_chunks, N, E), dD and dbias (S*B, n_chunks, E)
        tl.store(da_ptr + state_at, dA, mask=nd_ok)
        tl.store(dd_ptr + (sb * n_chunks + chunk) * DIM + d, dD, mask=d_ok)
        tl.store(dbias_ptr + (sb * n_chunks + chunk) * DIM + d, dbias, mask=d_ok)


@triton.jit
def sum_two_sets_kernel(
    x_ptr, out_ptr, rows, out_row_stride, DIM: tl.constexpr, ROWS: tl.constexpr, COLS: tl.constexpr,
):  # fmt: skip
    """out = x[0] + x[1], x: (2, rows, DIM) contiguous, out: rows of DIM contiguous values, out_row_stride
    apart (z's gradient, the right half of xz's): a ROWS x COLS block a program, 16-byte accesses,
    where torch's add of a strided output goes element by element."""
    r = (tl.program_id(0) * ROWS + tl.arange(0, ROWS)).to(tl.int64)[:, None]
    c = tl.program_id(1) * COLS + tl.arange(0, COLS)[None, :]
    ok = (r < rows) & (c < DIM)
    first = tl.load(x_ptr + r * DIM + c, mask=ok, other=0.0).to(tl.float32)
    second = tl.load(x_ptr + (rows + r) * DIM + c, mask=ok, other=0.0).to(tl.float32)
    tl.store(out_ptr + r * out_row_stride + c, (first + second).to(out_ptr.dtype.element_ty), mask=ok)
