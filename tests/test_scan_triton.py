"""The Triton scan and conv kernels against float64 references and the portable path: compiled on a
GPU machine, interpreted (TRITON_INTERPRET=1, numpy) elsewhere. Shapes are small and launch shapes
tiny (2-step tiles, a checkpoint every 4 steps, 4 channels per program) so that every path runs: several
checkpoint segments, chunks with carries, tiles and chunks cut short by the sequence's end, masked
channels and states."""

from dataclasses import replace

import pytest
import torch
import triton
import triton.language as tl

from src.kernels import conv1d_silu, conv_triton, mixer_triton, scan_kernels, scan_triton
from src.kernels.scan_triton import ScanTiling, default_tilings, selective_scan_triton
from src.models.components.bimamba import BiMambaMixer
from tests.helpers.reference import stacked_scan_reference
from tests.helpers.triton_cpu import INTERPRETED  # conftest switched the interpreter on without a GPU

DEVICE = "cpu" if INTERPRETED else "cuda"
NAMES = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]


def tiny(min_programs):
    return ScanTiling(block_d=4, tile_len=2, ckpt_every=4, min_programs=min_programs)


PARTIAL_SUMS = ScanTiling(block_d=4, tile_len=2, ckpt_every=4, min_programs=64, lane_states=False, atomic_sums=False)
CASES = {
    # name: (length, channels, states, z, reverse, tiling); 2 sets x batch 2 x ceil(E/4) blocks of programs
    "one chunk, odd length": (13, 8, 4, True, (False, True), tiny(1)),
    "chunks ending on a boundary": (16, 8, 4, True, (True, False), tiny(64)),
    "last chunk one step long": (17, 6, 3, False, (False, True), tiny(64)),
    "one step": (1, 8, 4, True, (True, False), tiny(64)),
    "one set": (11, 5, 4, True, (True,), ScanTiling(block_d=8, tile_len=4, ckpt_every=8, min_programs=1)),
    "dB and dC as partial sums, states laid out by Triton": (13, 8, 4, True, (False, True), PARTIAL_SUMS),
    # ScanTiling.bc_lanes: rows of B and C a state a lane, spread to the states (tl.gather here), one
    # state padded (3 of 4), chunks
    "rows of B and C a state a lane": (17, 6, 3, True, (False, True), replace(tiny(64), bc_lanes=True)),
    # 32 channels a program, 16 states (13, padded): dB and dC summed over channels by the warp
    # reduce-scatter (tl.gather for the shuffles here), the lanes selecting what they keep; with
    # bc_lanes the backward's states swizzled instead; a masked channel block, chunks
    "dB and dC by the reduce-scatter": (17, 40, 13, True, (True, False), replace(tiny(64), block_d=32)),
    # ScanTiling.keep_last_tile: the walk back's first tile from the walk forward's state in registers
    "the last tile's state kept in registers": (17, 6, 3, True, (False, True), replace(tiny(64), keep_last_tile=True)),
    "dB and dC by the reduce-scatter, states swizzled": (
        17,
        40,
        13,
        True,
        (False, True),
        replace(tiny(64), block_d=32, bc_lanes=True),
    ),
}


def float64_inputs(sets, batch, length, dim, d_state, with_z):
    """A scan's inputs in float64 with realistic magnitudes (z None without with_z)."""
    return dict(
        u=torch.randn(sets, batch, length, dim, dtype=torch.float64),
        delta=0.5 * torch.randn(sets, batch, length, dim, dtype=torch.float64),
        A=-3 * torch.rand(sets, dim, d_state, dtype=torch.float64) - 0.1,
        B=torch.randn(sets, batch, length, d_state, dtype=torch.float64),
        C=torch.randn(sets, batch, length, d_state, dtype=torch.float64),
        D=torch.randn(sets, dim, dtype=torch.float64),
        z=torch.randn(batch, length, dim, dtype=torch.float64) if with_z else None,
        delta_bias=0.5 * torch.randn(sets, dim, dtype=torch.float64),
    )


@pytest.mark.parametrize("case", list(CASES))
def test_scan_output_and_every_gradient_match_the_float64_reference(case):
    length, dim, d_state, with_z, reverse, tiling = CASES[case]
    inputs = float64_inputs(len(reverse), 2, length, dim, d_state, with_z)
    ref_leaves = {k: v.clone().requires_grad_() for k, v in inputs.items() if v is not None}
    leaves = {k: v.float().to(DEVICE).requires_grad_() for k, v in inputs.items() if v is not None}
    y_ref = stacked_scan_reference(**{**inputs, **ref_leaves}, reverse=reverse)
    y = selective_scan_triton(**{**inputs, **leaves}, reverse=reverse, tiling=tiling)
    torch.testing.assert_close(y.cpu().double(), y_ref, rtol=1e-4, atol=1e-5)
    grad_y = torch.randn_like(y_ref)
    names = [k for k in NAMES if k in leaves]
    grads_ref = torch.autograd.grad(y_ref, [ref_leaves[k] for k in names], grad_y)
    grads = torch.autograd.grad(y, [leaves[k] for k in names], grad_y.float().to(DEVICE))
    for name, g, g_ref in zip(names, grads, grads_ref):
        torch.testing.assert_close(g.cpu().double(), g_ref, rtol=1e-4, atol=1e-4, msg=lambda m, n=name: f"d{n}: {m}")


def test_scan_of_bf16_inputs_without_autograd_returns_bf16_close_to_the_reference():
    args = [torch.randn(2, 1, 9, 8), 0.5 * torch.randn(2, 1, 9, 8), -torch.rand(2, 8, 4), torch.randn(2, 1, 9, 4)]
    u, delta, A, B = (t.to(DEVICE) for t in args)
    low = [t.bfloat16() for t in (u, delta, B)]
    with torch.no_grad():
        y = selective_scan_triton(low[0], low[1], A, low[2], low[2], None, None, None, (False, True), tiling=tiny(1))
    assert y.dtype == torch.bfloat16
    ref = stacked_scan_reference(
        *(t.cpu().double() for t in (low[0], low[1], A, low[2], low[2])), None, None, None, reverse=(False, True)
    )
    torch.testing.assert_close(y.cpu().double(), ref, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("backward", [False, True])
@pytest.mark.parametrize(
    "n_chunks, group, block_d",
    [(4, 8, 4), (4, 3, 4), (11, 4, 4), (8, 4, 4)] + [(n, *scan_triton.carry_shape(n)) for n in (2, 3, 9)],
)
def test_what_enters_each_chunk_does_not_depend_on_the_chunk_nothing_leaves(backward, n_chunks, group, block_d):
    # the first passes skip the chunk whose result goes nowhere (forward: the last; backward: the
    # first), so its slots of local and dt_sum stay unwritten: NaN here, and no chunk may get them;
    # the chunks go `group` at a time (one group, several with a short last one, whole groups), and
    # a program holds block_d channels (the last block of the defaults' launches part-filled)
    d_state, dim = 4, 40
    local = torch.randn(1, n_chunks, d_state, dim)
    dt_sum = torch.rand(1, n_chunks, dim)
    A = -torch.rand(1, d_state, dim) - 0.1
    skipped = 0 if backward else n_chunks - 1
    local[:, skipped], dt_sum[:, skipped] = float("nan"), float("nan")
    entering = torch.empty_like(local)
    args = [x.to(DEVICE) for x in (local, dt_sum, A, dt_sum, dt_sum, entering)]
    scan_kernels.chunk_carry_kernel[(1, triton.cdiv(dim, block_d))](
        *args, 1, n_chunks, 0, DIM=dim, N=d_state, BN=d_state, BD=block_d, BACKWARD=backward, FAST=False,
        GROUP=group, num_warps=1,
    )  # fmt: skip
    expected, h = torch.empty_like(local), torch.zeros(d_state, dim)
    for c in reversed(range(n_chunks)) if backward else range(n_chunks):
        expected[0, c] = h
        h = torch.exp(A[0] * dt_sum[0, c]) * h + local[0, c]
    torch.testing.assert_close(args[-1].cpu(), expected)


@triton.jit(do_not_specialize=["zero"])
def _carry_before_groups(
    local_ptr, dt_sum_ptr, a_ptr, d_ptr, bias_ptr, out_ptr, batch, n_chunks, zero,
    DIM: tl.constexpr, N: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr, BACKWARD: tl.constexpr, FAST: tl.constexpr,
):  # fmt: skip
    # scan_kernels.chunk_carry_kernel as it was before GROUP: a chunk at a time
    sb, s, b, _, _, d, n, d_ok, nd_ok, A, _, _, _ = scan_kernels._program(
        a_ptr, d_ptr, bias_ptr, batch, 0, n_chunks, zero, DIM, N, BN, BD, 0
    )
    h = tl.zeros((BN, BD), dtype=tl.float32)
    for i in tl.range(0, n_chunks):
        c = n_chunks - 1 - i if BACKWARD else i
        at = zero + ((sb * n_chunks + c) * N + n[:, None]).to(tl.int64) * DIM + d[None, :]
        tl.store(out_ptr + at, h, mask=nd_ok)
        dt_sum = tl.load(dt_sum_ptr + (sb * n_chunks + c) * DIM + d, mask=d_ok, other=0.0)
        h = tl.exp(A * dt_sum[None, :]) * h + tl.load(local_ptr + at, mask=nd_ok, other=0.0)


def test_a_carry_kernel_from_before_the_groups_still_launches(monkeypatch):
    """benchmarks.scan --against an older scan_kernels.py puts its kernels in scan_triton's place (a
    before/after in one run); a carry kernel without GROUP is launched as it was, with the scan's
    channels a program, and gives the same scan and gradients as today's, launched with
    carry_shape's channels a program."""
    length, dim, d_state, with_z, reverse, tiling = CASES["dB and dC by the reduce-scatter"]
    inputs = float64_inputs(len(reverse), 2, length, dim, d_state, with_z)
    n_chunks = scan_triton.chunking(len(reverse), 2, dim, length, tiling)[1]
    assert n_chunks > 1  # chunked: the carry runs

    def scan_and_gradients(kernel):
        grids = []

        class Recorded:  # the kernel, its launches' grids kept
            arg_names = kernel.arg_names

            def __getitem__(self, grid):
                grids.append(grid)
                return kernel[grid]

        monkeypatch.setattr(scan_triton, "chunk_carry_kernel", Recorded())
        leaves = {k: v.float().to(DEVICE).requires_grad_() for k, v in inputs.items() if v is not None}
        y = selective_scan_triton(**leaves, reverse=reverse, tiling=tiling)
        return (y, *torch.autograd.grad(y, list(leaves.values()), torch.ones_like(y))), grids

    grouped, grids = scan_and_gradients(scan_kernels.chunk_carry_kernel)
    channels = scan_triton.carry_shape(n_chunks)[1]
    assert grids == [(2 * len(reverse), -(-dim // channels))] * 2  # the forward's carry and the backward's
    before, grids = scan_and_gradients(_carry_before_groups)
    for new, old in zip(grouped, before, strict=True):
        torch.testing.assert_close(old, new, rtol=1e-5, atol=1e-5)
    assert grids == [(2 * len(reverse), -(-dim // tiling.block_d))] * 2


def test_forward_and_backward_tilings_must_share_checkpoints():
    u = torch.zeros(2, 1, 4, 4, device=DEVICE)
    mismatched = (tiny(1), ScanTiling(block_d=4, tile_len=2, ckpt_every=8))
    with pytest.raises(ValueError, match="ckpt_every"):
        selective_scan_triton(
            u, u, torch.zeros(2, 4, 2), u[..., :2], u[..., :2], None, None, None, (0, 1), tiling=mismatched
        )


def test_default_tilings_follow_the_measured_rules():
    # 32 channels a program, a channel a lane, dB and dC added with atomics (and the reduce-scatter)
    forward, backward = default_tilings(2, 64, 384, 513)
    assert forward.block_d == backward.block_d == 32 and forward.lane_states and backward.lane_states
    assert backward.atomic_sums and backward.scatter_bc
    assert forward.bc_lanes and backward.bc_lanes  # B's and C's rows a state a lane, the backward swizzled
    assert forward.ckpt_every == backward.ckpt_every == 20  # a checkpoint every 20 steps up to 4096
    # tiny at batch 64 (1536 programs): the forward in one chunk, the backward chunked to 2048 programs
    assert scan_triton.chunking(2, 64, 384, 513, forward)[1] == 1
    assert scan_triton.chunking(2, 64, 384, 513, backward)[1] == 2
    # base at batch 64 (6144 programs): no chunks either way
    forward, backward = default_tilings(2, 64, 1536, 513)
    assert (
        scan_triton.chunking(2, 64, 1536, 513, forward)[1] == scan_triton.chunking(2, 64, 1536, 513, backward)[1] == 1
    )
    # long sequences: 32 channels, chunks until 8192 programs
    assert default_tilings(2, 4, 384, 22001)[0] == ScanTiling(block_d=32, min_programs=8192, bc_lanes=True)
    # the backward's scratch in 24 bits for 16-bit inputs only (fp32 inputs would miss mamba-ssm's
    # fp32 tolerances for dA), the walk back's first tile from registers up to 4096 steps
    for dtype, scratch in ((torch.bfloat16, "fp24"), (torch.float16, "fp24"), (torch.float32, "fp32")):
        short, long = default_tilings(2, 64, 384, 513, dtype)[1], default_tilings(2, 4, 384, 22001, dtype)[1]
        assert short.scratch == long.scratch == scratch
        assert short.keep_last_tile and not long.keep_last_tile


def test_programs_of_fewer_than_8_channels_launch_without_the_l2_prefetch(monkeypatch):
    # scan_kernels._row_lanes spreads a tile's rows over 8 lanes or more (a static_assert): on a GPU
    # (no interpreter, fast_math) a launch of 4 channels a program asks for no prefetch, one of 8 does
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    meta = dict(device="meta")
    u, BC = torch.empty(2, 1, 13, 8, **meta), torch.empty(2, 1, 13, 4, **meta)
    A, bias = torch.empty(2, 4, 8, **meta), torch.empty(2, 8, **meta)
    for block_d, prefetch in ((4, 0), (8, 8)):
        tiling = replace(tiny(1), block_d=block_d, prefetch_steps=8)
        run = scan_triton._Launch(u, u, A, BC, BC, None, None, bias, (False, True), True, tiling)
        assert run.flags["PF"] == prefetch, block_d


def test_the_fused_mixer_asks_the_default_tilings_with_its_scans_dtype(monkeypatch):
    # the scan's own dtype (u's: autocast's where it is on), as selective_scan_triton asks (below)
    asked = []
    own = mixer_triton.default_tilings

    def asking(*args):
        asked.append(args)
        return own(*args)

    monkeypatch.setattr(mixer_triton, "default_tilings", asking)
    mixer = BiMambaMixer(32, d_state=4).to(DEVICE)  # E = 64
    hidden = torch.randn(1, 5, 32, device=DEVICE)
    mixer_triton.bimamba_inner_triton(hidden, *mixer.kernel_weights(torch.float32), (False, True))
    assert asked == [(2, 1, 64, 5, torch.float32)]


@triton.jit
def _prefetched_values(
    u, delta, b, c, z, dy, out, length, k, k_lo, k_hi, rev, su, sdt, sb, sc, sz, sdy,
    DIM: tl.constexpr, BD: tl.constexpr, ROWS: tl.constexpr, T: tl.constexpr, STEPS: tl.constexpr,
):  # fmt: skip
    # what a tile's L2 prefetches would fetch, read through their addresses: one row of out a
    # prefetch instruction, a value a lane
    d = tl.program_id(0) * BD + tl.arange(0, BD)
    lanes = scan_kernels._row_lanes((u, delta, b, c, z, dy), (su, sdt, sb, sc, sz, sdy), d, DIM, ROWS)
    for j in tl.static_range(0, T, STEPS):
        at = scan_kernels._prefetched(lanes, k + j, k_lo, k_hi, length, rev, STEPS)
        row = tl.program_id(0) * tl.cdiv(T, STEPS) + j // STEPS
        tl.store(out + row * BD + tl.arange(0, BD), tl.load(at))


PREFETCH_ROWS = {
    "the forward's": scan_kernels.U_ROW
    | scan_kernels.DELTA_ROW
    | scan_kernels.B_ROW
    | scan_kernels.C_ROW
    | scan_kernels.Z_ROW,
    "the carry pass's": scan_kernels.C_ROW | scan_kernels.DY_ROW | scan_kernels.Z_ROW | scan_kernels.DELTA_ROW,
    "every input's": 63,
}


@pytest.mark.parametrize("rows", list(PREFETCH_ROWS))
@pytest.mark.parametrize("block_d, tile_len", [(32, 2), (16, 2), (8, 2), (32, 1)])
def test_a_tiles_prefetches_ask_for_every_row_it_loads_at_valid_addresses(rows, block_d, tile_len):
    """scan_kernels._row_lanes and _prefetched (GPU-only hints, so never timed here): read through
    the addresses a tile's prefetch instructions would ask L2 for, each input's elements holding
    their own (input, time, channel or state), every input the rows name has, for every step of the
    tile (clamped into [k_lo, k_hi), time reversed for a reverse set), the program's row at each
    16-channel sector of its channels (B and C: the row's start), and no lane reads outside the
    inputs. 40 channels: the second block of 32 has 8."""
    length, dim, n, k_lo, k_hi = 20, 40, 16, 4, 17
    names = ["u", "delta", "B", "C", "z", "dy"]
    width = {"B": n, "C": n}
    inputs = [
        (100_000 * i + 1000 * torch.arange(length)[:, None] + torch.arange(width.get(x, dim))[None, :]).float()
        for i, x in enumerate(names)
    ]
    valid = set(torch.cat([x.flatten() for x in inputs]).tolist())
    inputs = [x.to(DEVICE) for x in inputs]
    blocks = -(-dim // block_d)
    steps = min(max(1, block_d // (16 if block_d >= 32 else 8)), tile_len)
    sectors = 2 if block_d >= 32 else 1
    for rev in (0, 1):
        for k in (k_lo - 1, 9, k_hi - 1):  # a tile reaching before the range, inside, past its end
            out = torch.full((blocks, -(-tile_len // steps), block_d), -1.0, device=DEVICE)
            strides = [x.stride(0) for x in inputs]
            _prefetched_values[(blocks,)](
                *inputs, out, length, k, k_lo, k_hi, rev, *strides,
                DIM=dim, BD=block_d, ROWS=PREFETCH_ROWS[rows], T=tile_len, STEPS=steps,
            )  # fmt: skip
            for block in range(blocks):
                got = set(out[block].flatten().tolist())
                assert got <= valid, f"addresses outside the inputs: {sorted(got - valid)[:4]}"
                for i, name in enumerate(names):
                    if not (PREFETCH_ROWS[rows] >> i) & 1:
                        continue
                    for step in range(k, k + tile_len):
                        t = min(max(step, k_lo), k_hi - 1)
                        t = length - 1 - t if rev else t
                        at = [0] if name in width else [min(block * block_d + 16 * s, dim - 1) for s in range(sectors)]
                        for column in at:
                            assert 100_000 * i + 1000 * t + column in got, (name, step, column, rev, k)


CONV_CASES = {
    # name: (length, reverse); a program takes at most 64 steps forward, 128 backward (conv_triton)
    "several programs along time, the last one short": (150, (False, True)),
    "the sets the other way round": (70, (True, False)),
    "fewer steps than the kernel's width": (2, (False, True)),
    "fewer steps than a tile": (7, (True, False)),
    "one causal set": (19, (False,)),
    "one anti-causal set": (19, (True,)),
}


@pytest.mark.parametrize("case", list(CONV_CASES))
def test_conv_kernel_matches_the_portable_conv(case):
    length, reverse = CONV_CASES[case]
    sets = len(reverse)
    x = torch.randn(2, length, 12)  # 12 of a program's 128 channels: the rest masked
    weight, bias = torch.randn(sets, 12, 4), torch.randn(sets, 12)
    grad = torch.randn(sets, 2, length, 12)
    results = {}
    for backend, device in (("portable", "cpu"), ("triton", DEVICE)):
        leaves = [t.to(device).requires_grad_() for t in (x, weight, bias)]
        u = conv1d_silu(*leaves, reverse, backend=backend)
        results[backend] = [t.cpu() for t in (u, *torch.autograd.grad(u, leaves, grad.to(device)))]
    for name, got, want in zip(["u", "dx", "dweight", "dbias"], results["triton"], results["portable"]):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")


def test_conv_kernel_sums_its_weight_gradients_in_a_fixed_order_when_asked(monkeypatch):
    """Under torch.use_deterministic_algorithms the programs' weight and bias sums are written per
    program and summed afterwards (no atomics): the same results as the portable conv."""
    kernel, launches = conv_triton._conv_grad_kernel, []

    class Recorded:  # the kernel, launched as before, its flags recorded
        def __getitem__(self, grid):
            return lambda *args, **flags: launches.append(flags) or kernel[grid](*args, **flags)

    monkeypatch.setattr(conv_triton, "_conv_grad_kernel", Recorded())
    monkeypatch.setattr(torch, "are_deterministic_algorithms_enabled", lambda: True)
    test_conv_kernel_matches_the_portable_conv("several programs along time, the last one short")
    assert [flags["ATOMIC"] for flags in launches] == [False]


def test_two_sets_summed_into_the_right_half_of_wider_rows_leave_the_left_half_alone():
    """sum_sets into a strided view (z's gradient into xz's): every row's values, 200 channels (a
    column block cut short), rows not a multiple of the row block, bf16 summed in fp32."""
    x = torch.randn(2, 3, 7, 200, device=DEVICE).bfloat16()
    wide = torch.full((3, 7, 400), 5.0, device=DEVICE, dtype=torch.bfloat16)
    out = scan_triton.sum_sets(x, out=wide[..., 200:])
    assert out.data_ptr() == wide[..., 200:].data_ptr()
    # within bf16's tolerances: the interpreter rounds to bf16 its own way
    torch.testing.assert_close(wide[..., 200:], (x[0].float() + x[1].float()).bfloat16())
    assert (wide[..., :200] == 5.0).all()


@pytest.mark.parametrize("reverse, divide_out, bias", [(False, True, False), (True, False, True)])
def test_fused_mixer_on_the_triton_kernels_matches_the_portable_mixer(reverse, divide_out, bias, monkeypatch):
    """The one-Function mixer (in_proj inside, recomputing xz, u and delta in its backward, the average
    folded into C and D) against the step-by-step portable one: output, every parameter's gradient
    (in_proj's bias too, where it has one), the input's gradient; and without autograd the same output."""
    mixer = BiMambaMixer(16, d_state=4, backward_dt_init="mamba", divide_out=divide_out, bias=bias).to(DEVICE)
    hidden = torch.randn(2, 13, 16, device=DEVICE)
    results = {}
    for backend in ("portable", "triton"):
        monkeypatch.setenv("SSAMBA_KERNELS", backend)
        mixer.zero_grad()
        leaf = hidden.clone().requires_grad_()
        out = mixer(leaf, reverse=reverse)
        out.pow(2).sum().backward()
        grads = {k: p.grad.clone() for k, p in mixer.named_parameters()}
        with torch.no_grad():
            inference = mixer(hidden, reverse=reverse)
        results[backend] = (out.detach(), inference, leaf.grad, grads)
    want, got = results["portable"], results["triton"]
    for name, a, b in zip(("output", "no-grad output", "input grad"), got[:3], want[:3]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")
    for name, g in want[3].items():
        torch.testing.assert_close(got[3][name], g, rtol=1e-4, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")


def test_the_fused_mixer_keeps_no_activation_wider_than_its_input_for_the_backward(monkeypatch):
    """What the one-Function mixer saves: the (B, L, d) input, the weights, x_dbl and the scan's
    checkpoints; never xz (B, L, 2E) or a (S, B, L, E) tensor, which its backward recomputes."""
    monkeypatch.setenv("SSAMBA_KERNELS", "triton")
    mixer = BiMambaMixer(32, d_state=4).to(DEVICE)  # E = 64, x_dbl (2, B*L, 8 + 2*4)
    hidden = torch.randn(2, 13, 32, device=DEVICE, requires_grad=True)
    weights = mixer.kernel_weights(torch.float32)
    y = mixer_triton.bimamba_inner_triton(hidden, *weights, (False, True))  # (B, L, E)
    saved = [t for t in y.grad_fn.saved_tensors if t is not None]
    assert any(t is hidden for t in saved)
    assert any(t.shape == (2, 2 * 13, 8 + 2 * 4) for t in saved)  # x_dbl
    activations = [t for t in saved if all(t is not w for w in (hidden, *weights))]
    assert max(t.numel() for t in activations) < 2 * 13 * mixer.d_inner  # none as large as (B, L, E)


def test_the_scan_launches_with_the_default_tilings_of_its_own_shape_and_dtype(monkeypatch):
    # u is (S, B, L, E): default_tilings takes (sets, batch, channels, length); a long sequence
    # gets the long-sequence launch, not the tilings of a sequence as long as it has channels
    class Asked(Exception):  # stops before the launch: the question is what was asked
        pass

    def asking(*shape):
        raise Asked(shape)

    monkeypatch.setattr(scan_triton, "default_tilings", asking)
    u = torch.randn(2, 1, 4100, 3, dtype=torch.bfloat16)  # and its dtype: the scratch's format
    with pytest.raises(Asked) as asked:
        selective_scan_triton(u, u, -torch.ones(2, 3, 2), u[..., :2], u[..., :2], None, None, None, (0, 1))
    assert asked.value.args[0] == (2, 1, 3, 4100, torch.bfloat16)


@pytest.mark.parametrize("scratch, bound", [("fp24", 1e-4), ("bf16", 1e-2)])
def test_a_narrow_scratch_rounds_only_the_tiles_restart_states(scratch, bound):
    """ScanTiling.scratch: the backward's tile-start states kept in 24 or 16 bits. Its gradients stay
    within that rounding of the float64 reference (the output does not change: the forward keeps no
    scratch), and they differ from the fp32 scratch's, so the option reaches the kernel."""
    torch.manual_seed(0)
    reverse = (False, True)
    inputs = float64_inputs(2, 2, 13, 8, 4, with_z=True)
    ref_leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    y_ref = stacked_scan_reference(**ref_leaves, reverse=reverse)
    grad_y = torch.randn_like(y_ref)
    grads_ref = torch.autograd.grad(y_ref, [ref_leaves[k] for k in NAMES], grad_y)
    results = {}
    for kept in ("fp32", scratch):
        tiling = replace(tiny(1), scratch=kept)
        leaves = {k: v.float().to(DEVICE).requires_grad_() for k, v in inputs.items()}
        y = selective_scan_triton(**leaves, reverse=reverse, tiling=tiling)
        results[kept] = (y, *torch.autograd.grad(y, [leaves[k] for k in NAMES], grad_y.float().to(DEVICE)))
    assert torch.equal(results[scratch][0], results["fp32"][0])
    for name, g, g_ref in zip(NAMES, results[scratch][1:], grads_ref):
        scale = g_ref.abs().max().item()
        assert (g.cpu().double() - g_ref).abs().max().item() <= bound * scale, name
    assert any(not torch.equal(g, g_fp32) for g, g_fp32 in zip(results[scratch][1:], results["fp32"][1:]))


@triton.jit
def _pack_and_unpack(x_ptr, words_ptr, out_ptr, BN: tl.constexpr, BD: tl.constexpr, FAST: tl.constexpr):
    at = tl.arange(0, BN)[:, None] * BD + tl.arange(0, BD)[None, :]
    w0, w1, w2 = scan_kernels._pack24(tl.load(x_ptr + at), FAST)
    quarter = tl.arange(0, BN // 4)[:, None] * BD + tl.arange(0, BD)[None, :]
    tl.store(words_ptr + quarter, w0)
    tl.store(words_ptr + BN // 4 * BD + quarter, w1)
    tl.store(words_ptr + BN // 2 * BD + quarter, w2)
    tl.store(out_ptr + at, scan_kernels._unpack24(w0, w1, w2))


def test_24_bit_packing_keeps_each_states_24_high_bits_rounded_in_three_quarters_of_the_words():
    """_pack24 / _unpack24 (ScanTiling.scratch "fp24"): every state comes back as its bits + 0x80 with
    the low byte cleared (rounded to nearest, ties away from zero; a relative error under 2^-16),
    whatever its sign and size, from 3 words for every 4 states."""
    torch.manual_seed(0)
    x = torch.randn(16, 8) * torch.logspace(-30, 30, 16)[:, None]
    x[0, 0], x[1, 1], x[2, 2] = 0.0, -0.0, 1.0 + 2**-16  # a tie rounds away from zero
    words = torch.zeros(12, 8, dtype=torch.int32)
    out = torch.empty_like(x)
    x, words, out = x.to(DEVICE), words.to(DEVICE), out.to(DEVICE)
    _pack_and_unpack[(1,)](x, words, out, BN=16, BD=8, FAST=not INTERPRETED)  # the PRMTs on a GPU
    bits = x.cpu().view(torch.int32).long() & 0xFFFFFFFF
    expected = (((bits + 0x80) & 0xFFFFFF00) - ((bits + 0x80) & 0x80000000) * 2).int().view(torch.float32)
    assert torch.equal(out.cpu(), expected)
    assert out.cpu()[2, 2].item() == 1.0 + 2**-15
    assert ((out.cpu() - x.cpu()).abs() <= x.cpu().abs() * 2**-16).all()
