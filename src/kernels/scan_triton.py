"""The selective scan of a bimamba-v2 layer on the Triton kernels of scan_kernels.py (which says
how they work): launch shapes, the launches of the forward and backward passes, and the autograd
Function. Shapes:

    u, delta: (S, B, L, E)   B, C: (S, B, L, N)   z: (B, L, E), shared   A: (S, E, N)   D, delta_bias: (S, E)
    reverse: S bools (True: the set runs from the last step to the first)  ->  y: (S, B, L, E)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

import torch
import triton
from torch import Tensor

from src.kernels.scan_kernels import chunk_carry_kernel, scan_backward_kernel, scan_forward_kernel, sum_two_sets_kernel


@dataclass(frozen=True)
class ScanTiling:
    """How one kernel, forward or backward, is launched: block_d channels per program (one warp);
    tile_len steps unrolled together (the backward holds a tile's states in registers); ckpt_every
    steps (a multiple of tile_len, the same for both kernels) between the states the forward keeps for
    the backward; sequences cut into chunks until there are min_programs programs; max_registers per
    thread for ptxas (None: its choice; fewer registers, more warps per SM); lane_states: a channel's
    states in one lane's registers (scan_kernels._program), else the layout Triton picks when it may
    vectorise the state accesses; atomic_sums: the backward adds each program's sums for dB, dC,
    dA, dD and d delta_bias into fp32 tensors with atomics, else writes them per program and they are
    summed afterwards in a fixed order (also whenever torch.use_deterministic_algorithms is on);
    fast_math: exp2, log2 and the sigmoid's reciprocal as single MUFU instructions (fast_math.py),
    and, where a program holds 32 channels a lane each (block_d 32, lane_states) of 16 states and
    adds with atomics, the sums of dB and dC over channels as one warp reduce-scatter
    (scan_kernels._sum_over_lanes_scattered: shuffles in inline PTX, tl.gather under the
    interpreter, which runs it whatever fast_math says) unless scatter_bc is off; prefetch_steps:
    the rows of the inputs that many steps on (and the next checkpoint and scratch states) asked of
    L2 ahead of their loads (inline PTX; 0: none; none below 8 channels a program), so the loads wait
    on L2 rather than DRAM without registers held for them; bc_lanes: where a program
    holds 32 channels a lane each (lane_states) and block_d is a multiple of the states, B's and C's
    rows loaded a state a lane and spread to each lane's states by shuffles (scan_kernels._states;
    inline PTX, tl.gather under the interpreter), not loaded whole into every lane, which ptxas keeps
    in uniform registers, waiting on the loads as they land; with the reduce-scatter the backward
    then keeps a lane's states swizzled (scan_kernels._swizzled), which spares the reduce-scatter
    its selects (on in default_tilings: timed faster on an H100, docs/benchmarks.md); scratch: how
    the backward keeps its scratch, the state at every tile start of a segment, written by its walk
    forward and read back by its walk back (its largest traffic): "fp32"; "fp24", each state
    rounded to fp32's 24 high bits (15 mantissa bits: a relative 2^-16 where a tile restarts from
    it; the checkpoints stay fp32) and 4 packed into 3 words, 3/4 of the bytes; or "bf16", half the
    bytes, rounded to bf16's 8 bits: faster on an H100 (forward + backward as CUDA graphs, one
    sweep: 1.105 against 1.174 ms at (64, 384, 513), 3.574 against 3.859 at (4, 384, 22001);
    docs/benchmarks/scan_sweep_scratch_bf16_issue31.json, where the option was scratch_bf16), but dA
    then misses mamba-ssm's elementwise tolerances against the float64 reference in bf16
    (tests/test_gpu_kernels.py at (2, 64, 129): its entries are sums that cancel, each term carrying
    the rounded state's 2^-9; docs/benchmarks.md); keep_last_tile: the backward's walk back starts
    from the walk forward's last state in registers, not from the scratch (one tile state a segment
    neither stored nor loaded, for a branch and its register moves in every tile of the walk back)."""

    block_d: int = 16
    tile_len: int = 2
    ckpt_every: int = 64
    min_programs: int = 2048
    max_registers: int | None = None
    lane_states: bool = True
    atomic_sums: bool = True
    fast_math: bool = True
    scatter_bc: bool = True
    prefetch_steps: int = 8
    bc_lanes: bool = False
    scratch: str = "fp32"
    keep_last_tile: bool = False


# the carry between chunks (scan_kernels.chunk_carry_kernel) issues up to CARRY_GROUP chunks' loads
# together, and a program takes as many channels as leave those loads in registers: chunks x
# channels = CARRY_LOADS, 32 values a lane at 16 states (ptxas for sm_90: 8 chunks of 32 spill)
CARRY_GROUP, CARRY_LOADS = 8, 64


def carry_shape(n_chunks: int) -> tuple[int, int]:
    """(chunks a group, channels a program) of the carry: the fewest groups, as many channels a
    program as a group's loads leave room for (2 chunks: 32, the scan's own programs, as tiny's
    backward at batch 64 was timed; 3-4: 16; more: 8)."""
    group = min(CARRY_GROUP, triton.next_power_of_2(n_chunks))
    return group, CARRY_LOADS // group


# ScanTiling.scratch -> the bits a state keeps there, and the dtype of the buffer that holds them
SCRATCH_FORMATS = {"fp32": (32, torch.float32), "fp24": (24, torch.int32), "bf16": (16, torch.bfloat16)}


def default_tilings(
    sets: int, batch: int, dim: int, length: int, dtype: torch.dtype = torch.float32
) -> tuple[ScanTiling, ScanTiling]:
    """(forward, backward) launch shapes, from benchmarks/scan.py's sweeps on an H100
    (docs/benchmarks.md). 32 channels per program, a channel's states in one lane, both ways: the
    forward's loads of B and C are then 16-byte vectors and the backward sums dB and dC over
    channels by the warp reduce-scatter. Long sequences (> 4096 steps) are chunked to 8192 programs
    both ways; otherwise the forward is chunked only below 1024 programs (one pass, no carry: 0.49
    against 0.66 ms at (64, 384, 513) for 16 channels a program) and the backward below 2048
    (forward + backward at (64, 384, 513), as CUDA graphs: 1.320 ms in 2 chunks against 1.371 in 3
    and 1.371 unchunked, one sweep: docs/benchmarks/scan_sweep_chunks_issue31.json). B's and
    C's rows a state a lane (bc_lanes) both ways: 0.342 against 0.401 ms forward and 2.055 against
    2.118 ms forward + backward at (64, 384, 513), 4.502 against 4.850 ms at (4, 384, 22001), one
    sweep (docs/benchmarks/scan_sweep_bc_lanes_issue31.json). Up to 4096 steps the forward keeps the
    state every 20 steps (ckpt_every; 64 for longer sequences): the backward's segments, and the
    scratch it walks them with, are shorter (forward + backward at (64, 384, 513) as CUDA graphs,
    one sweep: 1.168 ms against 1.197 at 24, 1.248 at 32 and 1.138 at 16, which keeps too many
    checkpoints for the memory target; docs/benchmarks/scan.json). For longer sequences 16 steps
    gave 3.634 ms against 3.876 at 64 at (4, 384, 22001), for 4x the checkpoints' memory: not the
    default, where memory bounds the length a GPU takes. SSAMBA-tiny's graphed SSL step at batch 64
    on an H100, one call: 96.3 ms at 6.4 GiB every 24 steps against 98.7 ms at 5.7 GiB every 32
    (104.3 ms at 64, with the mixer keeping xz); 2 chunks still the best at 32 (against 103.3 in 3
    and 104.4 unchunked; docs/benchmarks/throughput.json). dtype, the inputs' (u's): for 16-bit
    inputs the backward keeps its scratch in 24 bits (ScanTiling.scratch "fp24"), far below their own
    rounding; fp32 inputs keep it in fp32 (with 24 bits dA missed mamba-ssm's fp32 tolerances
    against the float64 reference at 2049 steps on an H100, tests/test_gpu_kernels.py). Up to 4096
    steps the walk back starts from registers (keep_last_tile). In bf16 on an H100, one sweep
    (docs/benchmarks/scan_sweep_scratch_fp24_issue31.json), forward + backward as CUDA graphs at
    (64, 384, 513): 1.144 ms with both against 1.190 with neither, 1.151 with 24 bits alone, 1.163
    with the tile kept alone; at (4, 384, 22001) with 24 bits 3.687 against 3.890 (3.715 with the
    tile kept too). SSAMBA-tiny's graphed SSL step at batch 64 in the same call: 92.4 ms with both
    against 95.0 ms (docs/benchmarks/throughput.json)."""
    scratch = "fp24" if dtype.itemsize == 2 else "fp32"
    if length > 4096:
        wide = ScanTiling(block_d=32, min_programs=8192, bc_lanes=True)
        return wide, replace(wide, scratch=scratch)
    forward = ScanTiling(block_d=32, min_programs=1024, bc_lanes=True, ckpt_every=20)
    return forward, replace(forward, min_programs=2048, scratch=scratch, keep_last_tile=True)


def chunking(sets: int, batch: int, dim: int, length: int, tiling: ScanTiling) -> tuple[int, int]:
    """(chunk_len, n_chunks): one chunk when (set, batch, channel-block) programs fill the GPU, else
    enough chunks, each a whole number of checkpoint segments, to reach tiling.min_programs."""
    n_segments = triton.cdiv(length, tiling.ckpt_every)
    programs = sets * batch * triton.cdiv(dim, tiling.block_d)
    wanted = min(n_segments, max(1, triton.cdiv(tiling.min_programs, programs)))
    per_chunk = triton.cdiv(n_segments, wanted)
    return per_chunk * tiling.ckpt_every, triton.cdiv(n_segments, per_chunk)


def _strides(x: Tensor, sets_dim: bool = True) -> tuple[int, ...]:
    """(set, batch, time) strides of a (S, B, L, X) tensor, or (batch, time) of a (B, L, X) one; its
    last stride is 1 (_unit_last)."""
    return tuple(x.stride()[:3] if sets_dim else x.stride()[:2])


def _unit_last(x: Tensor | None) -> Tensor | None:
    return x if x is None or x.stride(-1) == 1 else x.contiguous()


class _Launch:
    """What the forward and backward launches share: shapes, strides, chunking, grid, the inputs
    every kernel takes first (u, delta, B, C, z, A, D, delta_bias; a missing z or D stands in as
    another tensor, unread) and the compile-time flags."""

    def __init__(self, u, delta, A, B, C, D, z, delta_bias, reverse, delta_softplus, tiling: ScanTiling):
        self.sets, self.batch, self.length, self.dim = u.shape
        self.device = u.device
        self.d_state = A.shape[1]  # A is (S, N, E) here
        self.A, self.D_or_bias = A, D if D is not None else delta_bias
        self.inputs = (u, delta, B, C, z if z is not None else u, A, self.D_or_bias, delta_bias)
        if tiling.ckpt_every % tiling.tile_len:
            raise ValueError(f"ckpt_every must be a multiple of tile_len, got {tiling}")
        if tiling.scratch not in SCRATCH_FORMATS:
            raise ValueError(f"ScanTiling.scratch must be one of {sorted(SCRATCH_FORMATS)}, got {tiling.scratch!r}")
        if tiling.scratch == "fp24" and self.d_state < 3:
            raise ValueError(f"scratch='fp24' packs 4 states into 3 words: it needs d_state >= 3, got {self.d_state}")
        self.chunk_len, self.n_chunks = chunking(self.sets, self.batch, self.dim, self.length, tiling)
        self.n_ckpts = triton.cdiv(self.length, tiling.ckpt_every)
        self.blocks = triton.cdiv(self.dim, tiling.block_d)
        self.grid = (self.sets * self.batch, self.blocks, self.n_chunks)
        # the first passes of a chunked scan skip the chunk whose result goes nowhere (scan_kernels)
        self.first_pass_grid = (*self.grid[:2], self.n_chunks - 1)
        self.rev_mask = sum(1 << i for i, r in enumerate(reverse) if r)
        z_strides = _strides(z, sets_dim=False) if z is not None else (0, 0)
        self.strides = _strides(u) + _strides(delta) + _strides(B) + _strides(C) + z_strides
        self.shape = dict(DIM=self.dim, N=self.d_state, BN=triton.next_power_of_2(self.d_state), BD=tiling.block_d)
        self.flags = dict(SOFTPLUS=delta_softplus, HAS_Z=z is not None, HAS_D=D is not None)
        self.interpreted = os.environ.get("TRITON_INTERPRET") == "1"
        self.fast = tiling.fast_math and not self.interpreted  # inline PTX
        self.flags.update(T=tiling.tile_len, CK=tiling.ckpt_every, LANE=tiling.lane_states, FAST=self.fast, num_warps=1)
        # a tile's prefetches spread its rows over 8 lanes or more (scan_kernels._row_lanes)
        self.flags["PF"] = tiling.prefetch_steps if self.fast and tiling.block_d >= 8 else 0
        # a lane's state n comes from lane n of its program: with shuffles, a channel a lane (32 a
        # program); under the interpreter (tl.gather) any block_d that holds every state index
        spread = (tiling.block_d == 32 or not self.fast) and tiling.block_d % self.shape["BN"] == 0
        self.flags["BC_LANES"] = tiling.bc_lanes and tiling.lane_states and spread
        self.flags.update(self.shape)
        if tiling.max_registers:
            self.flags["maxnreg"] = tiling.max_registers
        self.sizes = (self.batch, self.length, self.chunk_len, self.n_chunks, self.n_ckpts)

    def scatter_flags(self, tiling: ScanTiling, atomic: bool) -> dict:
        """The backward's SCATTER: whether it sums dB and dC over channels by the warp
        reduce-scatter (shuffles; tl.gather under the interpreter); and SWIZZLE: whether, rows of B
        and C a state a lane, it holds them swizzled (scan_kernels._swizzled), which spares the
        reduce-scatter its selects."""
        lanes = tiling.lane_states and tiling.block_d == 32 and self.shape["BN"] == 16
        scatter = tiling.scatter_bc and (self.fast or self.interpreted) and atomic and lanes
        return dict(SCATTER=scatter, SWIZZLE=scatter and self.flags["BC_LANES"])

    def scratch_flags(self, tiling: ScanTiling) -> dict:
        """The backward's SCRATCH_BITS (ScanTiling.scratch) and KEEP_LAST (keep_last_tile)."""
        return dict(SCRATCH_BITS=SCRATCH_FORMATS[tiling.scratch][0], KEEP_LAST=tiling.keep_last_tile)

    def states(self, *lead: int) -> Tensor:
        """A buffer of (..., N, E) fp32 states: channels contiguous, as the threads hold them."""
        return torch.empty(*lead, self.d_state, self.dim, device=self.device, dtype=torch.float32)

    def carry_launch(self, backward: bool) -> tuple[tuple[int, int], dict]:
        """chunk_carry_kernel's grid and compile-time flags (carry_shape); a kernel from before the
        groups (benchmarks.scan --against an older scan_kernels.py) as it was launched."""
        flags = dict(self.shape, BACKWARD=backward, FAST=self.fast, num_warps=1)
        if "GROUP" in chunk_carry_kernel.arg_names:
            flags["GROUP"], flags["BD"] = carry_shape(self.n_chunks)
        return (self.grid[0], triton.cdiv(self.dim, flags["BD"])), flags

    def carry(self, local: Tensor, dt_sum: Tensor, backward: bool) -> Tensor:
        """What enters each chunk, from each chunk's local result and sum of dt."""
        entering = torch.empty_like(local)
        grid, flags = self.carry_launch(backward)
        chunk_carry_kernel[grid](
            local, dt_sum, self.A, self.D_or_bias, self.D_or_bias, entering, self.batch, self.n_chunks, 0, **flags
        )
        return entering


def scan_forward(u, delta, A, B, C, D, z, delta_bias, reverse, delta_softplus, tiling, checkpoints=True):
    """y (S, B, L, E) in u's dtype, and the states every ckpt_every steps (S*B, n_ckpts, N, E) fp32
    that the backward restarts from (an empty tensor without `checkpoints`)."""
    run = _Launch(u, delta, A, B, C, D, z, delta_bias, reverse, delta_softplus, tiling)
    y = torch.empty(u.shape, device=u.device, dtype=u.dtype)
    ckpt = run.states(run.sets * run.batch, run.n_ckpts) if checkpoints else y.new_empty(0, dtype=torch.float32)
    h_start = None
    if run.n_chunks > 1:
        h_end = run.states(run.sets * run.batch, run.n_chunks)
        dt_sum = torch.empty(run.sets * run.batch, run.n_chunks, run.dim, device=u.device, dtype=torch.float32)
        scan_forward_kernel[run.first_pass_grid](  # no state leaves the last chunk
            *run.inputs, y, h_end, ckpt, h_end, dt_sum, *run.sizes, run.rev_mask, 0, *run.strides,
            HAS_H_START=False, WRITE_Y=False, WRITE_CKPT=False, WRITE_END=True, **run.flags,
        )  # fmt: skip
        h_start = run.carry(h_end, dt_sum, backward=False)
    scan_forward_kernel[run.grid](
        *run.inputs, y, h_start if h_start is not None else ckpt, ckpt, ckpt, ckpt,
        *run.sizes, run.rev_mask, 0, *run.strides,
        HAS_H_START=h_start is not None, WRITE_Y=True, WRITE_CKPT=checkpoints, WRITE_END=False, **run.flags,
    )  # fmt: skip
    return y, ckpt


def sum_sets(x: Tensor, out: Tensor | None = None) -> Tensor:
    """(S, ...) -> (...), summed in fp32 and rounded once; two sets as one elementwise add, faster
    than a reduction over a dimension of 2. out: a view to write into; two sets into rows of a wider
    tensor (dz into xz's gradient) by sum_two_sets_kernel, with vector accesses torch's strided add
    does not make (on an H100 it ran at 1.9 TB/s)."""
    if x.shape[0] != 2:
        return torch.sum(x, 0, out=out) if out is not None else x.sum(0)
    if out is None or out.is_contiguous():
        return torch.add(x[0], x[1], out=out) if out is not None else torch.add(x[0], x[1])
    dim = x.shape[-1]
    if (
        x.is_contiguous()
        and out.stride(-1) == 1
        and all(out.stride(i) == out.stride(i + 1) * out.shape[i + 1] for i in range(out.dim() - 2))
    ):  # rows of dim values, out.stride(-2) apart
        n_rows = x[0].numel() // dim
        blocks = (16, 128)
        grid = (triton.cdiv(n_rows, blocks[0]), triton.cdiv(dim, blocks[1]))
        sum_two_sets_kernel[grid](x, out, n_rows, out.stride(-2), DIM=dim, ROWS=blocks[0], COLS=blocks[1])
        return out
    return torch.add(x[0], x[1], out=out)


def scan_backward(
    dy, ckpt, u, delta, A, B, C, D, z, delta_bias, reverse, delta_softplus, tiling, dz=None, dB=None, dC=None
):  # fmt: skip
    """Gradients of u, delta, A, B, C, D, z, delta_bias (None where the input was None); dz (B, L, E),
    dB and dC (S, B, L, N) may be given as views to write those gradients into."""
    run = _Launch(u, delta, A, B, C, D, z, delta_bias, reverse, delta_softplus, tiling)
    S, batch, L, E = u.shape
    dy_strides = _strides(dy)
    du = torch.empty(u.shape, device=u.device, dtype=u.dtype)
    ddelta = torch.empty(delta.shape, device=u.device, dtype=delta.dtype)
    dz_sets = torch.empty(u.shape, device=u.device, dtype=z.dtype) if z is not None else None
    atomic = tiling.atomic_sums and not torch.are_deterministic_algorithms_enabled()
    N = run.d_state
    if atomic:  # every program adds into one of each, zeroed by one fill
        sizes = (S * batch * L * N, S * batch * L * N, S * N * E, S * E, S * E)
        sums = torch.zeros(sum(sizes), device=u.device, dtype=torch.float32).split(sizes)
        dB_sum, dC_sum = sums[0].view(S * batch, L, N), sums[1].view(S * batch, L, N)
        dA_sum, dD_sum, dbias_sum = sums[2].view(S, N, E), sums[3].view(S, E), sums[4].view(S, E)
    else:  # per program, summed below in a fixed order
        dB_sum = torch.empty(run.blocks, S * batch, L, N, device=u.device, dtype=torch.float32)
        dC_sum = torch.empty_like(dB_sum)
        dA_sum = run.states(S * batch, run.n_chunks)
        dD_sum = torch.empty(S * batch, run.n_chunks, E, device=u.device, dtype=torch.float32)
        dbias_sum = torch.empty_like(dD_sum)
    scatter = run.scatter_flags(tiling, atomic)
    programs = run.grid[0] * run.grid[1] * run.grid[2]
    tile_starts = tiling.ckpt_every // tiling.tile_len
    kept = run.scratch_flags(tiling)
    bits, scratch_dtype = SCRATCH_FORMATS[tiling.scratch]
    rows = 3 * run.shape["BN"] // 4 if bits == 24 else run.shape["BN"]  # a tile's state: rows of block_d values
    scratch = torch.empty(programs, tile_starts, rows, tiling.block_d, device=u.device, dtype=scratch_dtype)
    g_start = None
    if run.n_chunks > 1:
        g_out = run.states(S * batch, run.n_chunks)
        dt_sum = torch.empty(S * batch, run.n_chunks, E, device=u.device, dtype=torch.float32)
        scan_backward_kernel[run.first_pass_grid](  # chunks 1.. (FIRST_CHUNK): what leaves chunk 0 goes nowhere
            *run.inputs, dy, ckpt, g_out, scratch,
            du, ddelta, du, dB_sum, dC_sum, dA_sum, dD_sum, dbias_sum, g_out, dt_sum,
            *run.sizes, run.rev_mask, 0, *run.strides, *dy_strides, HAS_G_START=False, CARRY_ONLY=True,
            ATOMIC=atomic, **kept, **scatter, **run.flags,
        )  # fmt: skip
        g_start = run.carry(g_out, dt_sum, backward=True)
    scan_backward_kernel[run.grid](
        *run.inputs, dy, ckpt, g_start if g_start is not None else ckpt, scratch,
        du, ddelta, dz_sets if dz_sets is not None else du, dB_sum, dC_sum, dA_sum, dD_sum, dbias_sum,
        ckpt, ckpt, *run.sizes, run.rev_mask, 0, *run.strides, *dy_strides,
        HAS_G_START=g_start is not None, CARRY_ONLY=False, ATOMIC=atomic, **kept, **scatter, **run.flags,
    )  # fmt: skip
    if not atomic:
        dB_sum, dC_sum = dB_sum.sum(0), dC_sum.sum(0)
        dA_sum = dA_sum.view(S, -1, N, E).sum(1)
        dD_sum, dbias_sum = dD_sum.view(S, -1, E).sum(1), dbias_sum.view(S, -1, E).sum(1)
    dB = _cast_into(dB_sum.view(S, batch, L, N), dB, B.dtype)
    dC = _cast_into(dC_sum.view(S, batch, L, N), dC, C.dtype)
    dA, dD, dbias = dA_sum.transpose(1, 2), dD_sum if D is not None else None, dbias_sum
    if z is not None:  # the sets share z: their gradients add up
        dz = sum_sets(dz_sets, out=dz)
    return du, ddelta, dA, dB, dC, dD, dz, dbias


def _cast_into(x: Tensor, out: Tensor | None, dtype: torch.dtype) -> Tensor:
    """x in dtype, or copied into out (one kernel: the cast and the strided write)."""
    return x.to(dtype) if out is None else out.copy_(x)


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
        sets, batch, length, dim = u.shape
        tiling = default_tilings(sets, batch, dim, length, u.dtype)
    tilings = (tiling, tiling) if isinstance(tiling, ScanTiling) else tuple(tiling)
    if tilings[0].ckpt_every != tilings[1].ckpt_every:
        raise ValueError(f"the forward and backward tilings must agree on ckpt_every, got {tilings}")
    return SelectiveScanTriton.apply(
        u, delta, A, B, C, D, z, delta_bias.float().contiguous(), tuple(reverse), delta_softplus, tilings
    )
