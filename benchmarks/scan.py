"""The selective scan of one bimamba-v2 layer, both directions: the project's Triton kernels
against mamba-ssm's, forward and forward + backward.

    python -m benchmarks.scan [--shapes 64x384x513 4x384x22001 64x1536x513] [--against OLD.py] [--sweep]

Shapes are batch x channels (E = expand * d_model) x length, d_state 16, bf16 inputs laid out as
the mixer's projections produce them: u and delta (2, B, L, E); B and C views into x_proj's
(2, B, L, R + 2N) output; z a view into in_proj's (B, L, 2E) output. Timed with CUDA events, the
median of --repeats after --warmup, for:
  triton          selective_scan(backend="triton"): both directions, one launch per pass
  mamba kernel    mamba-ssm's selective_scan_fn twice, on inputs already in its (B, E, L) layout
                  and already flipped for the backward direction: the kernel alone
  mamba in model  selective_scan(backend="mamba"): the same kernels with the transposes and flips
                  the model needs around them
  --against FILE  the Triton scan on a scan_kernels.py of another commit, loaded from FILE (a
                  before/after in one run), named by --against-label
"forward" is inference (no autograd); "forward + backward" runs the forward and the gradients of
every input, as training does. Every run also checks the
Triton results against mamba-ssm's (max relative difference, output and each gradient), and gives
each shape's floor (benchmarks/scan_floor.py: the exps, FMAs and bytes the scans need, at the rates
this card reaches in the same run) and the Triton kernels' time as a multiple of it.
--sweep times the launch shapes of SWEEP too (around the defaults: B's and C's rows a state a lane
or whole, checkpoint spacing, the backward's chunks), each replayed as CUDA graphs of --reps calls.

Writes <out>/scan.json and <out>/scan.md, docs/figures/scan.png, and the table into
docs/benchmarks.md between its `scan` markers.
"""

from __future__ import annotations

import contextlib
import json
import statistics
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks import report
from benchmarks.efficiency import captured, graph_ms, time_ms
from benchmarks.provenance import provenance
from benchmarks.scan_floor import floor_ms, measure_peaks
from src.kernels import mamba_kernels_available, scan_triton, selective_scan
from src.kernels.scan_triton import ScanTiling, default_tilings, selective_scan_triton
from src.utils.errors import command

ROOT = Path(__file__).resolve().parents[1]

D_STATE = 16
REVERSE = (False, True)
SWEEP = [  # (forward, backward) launch shapes around the defaults: the checkpoints' spacing (a
    # smaller scratch a program for the backward: the state at every tile start of a segment; but
    # more checkpoints kept: in tiny's step at batch 64 each is 151 MB (both passes' 24 layers):
    # 1.19x SSAST's peak memory measured at 20 steps, 1 GiB more at 16 steps, over the 1.25x target;
    # `benchmarks.throughput model --scan-ckpt-every` measures a spacing's time and memory in the
    # step), the scratch's format (the defaults' 24 bits for 16-bit inputs, or fp32), the walk
    # back's first tile state kept in registers (keep_last_tile) and the long sequences' chunking
    # (8192 programs each way) with their spacing. Rows timed and dropped since
    # (docs/benchmarks/scan_sweep_scratch_fp24_issue31.json and the JSONs before it): 24 bits or the
    # tile kept alone, 18 steps in fp32, the tile kept for long sequences, 16 steps there in fp32;
    # the scratch in bf16 (faster, but dA misses mamba-ssm's tolerances), 24 steps, whole rows of B
    # and C, 32 and 64 steps below 4096, the backward in 4096 programs, 4096 programs for long
    # sequences.
    (
        ScanTiling(block_d=32, min_programs=forward_programs, bc_lanes=True, ckpt_every=every),
        ScanTiling(
            block_d=32,
            min_programs=backward_programs,
            bc_lanes=True,
            ckpt_every=every,
            scratch=scratch,
            keep_last_tile=keep_last,
        ),
    )
    for every, forward_programs, backward_programs, scratch, keep_last in [
        (20, 1024, 2048, "fp24", True),  # the defaults up to 4096 steps (16-bit inputs)
        (20, 1024, 2048, "fp32", False),  # the defaults before
        (18, 1024, 2048, "fp24", True),
        (64, 8192, 8192, "fp24", False),  # the defaults of longer sequences
        (64, 8192, 8192, "fp32", False),
        (32, 8192, 8192, "fp24", False),  # 2x the checkpoints' bytes of every 64 steps
        (16, 8192, 8192, "fp24", False),  # 4x
    ]
]


def make_inputs(batch: int, dim: int, length: int, dtype=torch.bfloat16, aligned_rank: bool = True) -> dict:
    """One layer's scan inputs in the mixer's layout, with realistic magnitudes. x_proj's output
    holds dt_rank columns, then B, then C; aligned_rank pads dt_rank to a multiple of 8 (16 bytes),
    as the mixer does, so rows of B and C start 16-byte aligned."""
    dev = "cuda"
    rank = -(-dim // 32)  # dt_rank = ceil(d_model / 16), d_model = dim / 2
    if aligned_rank:
        rank = -(-rank // 8) * 8
    xz = torch.randn(batch, length, 2 * dim, device=dev, dtype=dtype)
    x_dbl = torch.randn(2, batch, length, rank + 2 * D_STATE, device=dev, dtype=dtype)
    inputs = dict(
        u=torch.nn.functional.silu(torch.randn(2, batch, length, dim, device=dev, dtype=dtype)),
        delta=0.5 * torch.randn(2, batch, length, dim, device=dev, dtype=dtype),
        A=-torch.arange(1, D_STATE + 1, device=dev, dtype=torch.float32).repeat(2, dim, 1),
        B=x_dbl[..., rank : rank + D_STATE],
        C=x_dbl[..., rank + D_STATE :],
        D=torch.ones(2, dim, device=dev),
        z=xz[..., dim:],
        delta_bias=torch.log(torch.expm1(torch.full((2, dim), 0.01, device=dev))),
    )
    return inputs


def leaves(inputs: dict) -> Callable[[], dict]:
    """Fresh inputs that need gradients, as a function that gives one call's: the inputs that are
    views (B and C of x_proj's output, z of xz) are taken from fresh base leaves inside the call, as
    the mixer takes them, so that their autograd nodes hold the stream the call runs on. Views made
    beforehand on the default stream would hold it, and a captured backward that waits on a stream
    outside the capture is invalidated (pytorch/pytorch#164302)."""
    fixed, views, bases = {}, {}, {}
    for k, v in inputs.items():
        if v._base is None:
            fixed[k] = v.detach().requires_grad_()
        else:
            base = bases.setdefault(id(v._base), v._base.detach().requires_grad_())
            views[k] = (base, v.shape, v.stride(), v.storage_offset())

    def one_call() -> dict:
        return {k: fixed[k] if k in fixed else views[k][0].as_strided(*views[k][1:]) for k in inputs}

    return one_call


def mamba_layout(inputs: dict) -> list[dict]:
    """Per direction, the inputs mamba-ssm's kernel wants: (B, E, L) contiguous, flipped if reversed."""
    sets = []
    for s, backwards in enumerate(REVERSE):

        def lay(x, backwards=backwards):
            x = x.transpose(1, 2)
            return (x.flip(-1) if backwards else x).contiguous().detach().requires_grad_()

        sets.append(
            dict(
                u=lay(inputs["u"][s]),
                delta=lay(inputs["delta"][s]),
                A=inputs["A"][s].clone().requires_grad_(),
                B=lay(inputs["B"][s]),
                C=lay(inputs["C"][s]),
                D=inputs["D"][s].clone().requires_grad_(),
                z=lay(inputs["z"]),
                delta_bias=inputs["delta_bias"][s].clone().requires_grad_(),
            )
        )
    return sets


KERNELS = ("scan_forward_kernel", "scan_backward_kernel", "chunk_carry_kernel", "sum_two_sets_kernel")


@contextlib.contextmanager
def kernels_of(module):
    """scan_triton launching the kernels of module (a scan_kernels.py, report.load_module) inside
    the block; None: its own."""
    if module is None:
        yield
        return
    own = {name: getattr(scan_triton, name) for name in KERNELS}
    try:
        for name in KERNELS:
            setattr(scan_triton, name, getattr(module, name))
        yield
    finally:
        for name, kernel in own.items():
            setattr(scan_triton, name, kernel)


def runners(inputs: dict, tiling: tuple[ScanTiling, ScanTiling] | None = None, against=None) -> dict:
    """name -> (forward, forward + backward) callables; with `against` (report.load_module), the
    Triton scan on its kernels as well."""
    grad_y = torch.randn(2, *inputs["u"].shape[1:], device="cuda", dtype=inputs["u"].dtype)

    def triton_fwd(a):
        if tiling is None:
            return selective_scan(**a, reverse=REVERSE, backend="triton")
        return selective_scan_triton(**a, reverse=REVERSE, tiling=tiling)

    def fwd_bwd(call, make):
        a = make()
        y = call(a)
        params = [v for v in a.values() if v.requires_grad]
        return torch.autograd.grad(y, params, grad_y, allow_unused=True)

    def inference(call, make):
        with torch.no_grad():
            return call(make())

    def pair(call, kernels=None):
        """(inference, forward + backward) of a scan, each on its own fresh leaves."""
        inf_inputs, train_inputs = leaves(inputs), leaves(inputs)

        def inferred():
            with kernels_of(kernels):
                return inference(call, inf_inputs)

        def trained():
            with kernels_of(kernels):
                return fwd_bwd(call, train_inputs)

        return inferred, trained

    out = {"triton": pair(triton_fwd)}
    if against is not None:
        out[against.label] = pair(triton_fwd, against)
    if mamba_kernels_available() and tiling is None:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

        per_set = mamba_layout(inputs)
        grad_sets = [g.transpose(1, 2).contiguous() for g in grad_y]

        def kernel_fwd():
            with torch.no_grad():
                return [selective_scan_fn(**p, delta_softplus=True) for p in per_set]

        def kernel_fwd_bwd():
            for p, g in zip(per_set, grad_sets):
                y = selective_scan_fn(**p, delta_softplus=True)
                torch.autograd.grad(y, list(p.values()), g)

        def model_fwd(a):
            return selective_scan(**a, reverse=REVERSE, backend="mamba")

        out["mamba kernel"] = (kernel_fwd, kernel_fwd_bwd)
        out["mamba in model"] = pair(model_fwd)
    return out


def agreement(inputs: dict, tiling: tuple[ScanTiling, ScanTiling] | None = None) -> dict:
    """Max relative difference, Triton (at `tiling`, else its defaults) vs mamba-ssm (in model), of y
    and every gradient."""
    grad_y = torch.randn(2, *inputs["u"].shape[1:], device="cuda", dtype=inputs["u"].dtype)
    results = {}
    for backend in ("triton", "mamba"):
        a = leaves(inputs)()
        if backend == "triton" and tiling is not None:
            y = selective_scan_triton(**a, reverse=REVERSE, tiling=tiling)
        else:
            y = selective_scan(**a, reverse=REVERSE, backend=backend)
        names = list(a)
        grads = torch.autograd.grad(y, [a[k] for k in names], grad_y)
        results[backend] = {"y": y, **dict(zip(names, grads))}

    def rel(x, ref):
        return ((x.float() - ref.float()).abs().max() / ref.float().abs().max().clamp_min(1e-6)).item()

    return {k: rel(results["triton"][k], results["mamba"][k]) for k in results["triton"]}


@command
def main(argv=None) -> int:
    parser = report.kernel_parser(__doc__, "scan", ["64x384x513", "4x384x22001", "64x1536x513"])
    args = parser.parse_args(argv)
    if args.from_json:
        return render(json.loads(args.from_json.read_text()), args)
    if not torch.cuda.is_available():
        parser.error("needs a CUDA GPU")
    record = {
        "card": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "measured": provenance(),
        "d_state": D_STATE,
        "dtype": "bfloat16",
        "shapes": [],
        "graph_reps": args.reps,
    }
    against = report.load_module(args.against, args.against_label) if args.against else None
    if against is not None:
        record["against"] = {"file": str(args.against), "label": args.against_label}
    record["peaks"] = measure_peaks(time_ms)
    print("card peaks:", json.dumps(record["peaks"]), flush=True)
    for shape in args.shapes:
        torch.manual_seed(0)
        inputs = make_inputs(*shape)
        forward, backward = default_tilings(2, *shape, torch.bfloat16)
        row = {
            "batch": shape[0],
            "dim": shape[1],
            "length": shape[2],
            "ms": {},
            "tiling": {"forward": vars(forward), "backward": vars(backward)},
            "floor_ms": floor_ms(*shape, record["peaks"], D_STATE),
        }
        for name, (fwd, fwd_bwd) in runners(inputs, against=against).items():
            row["ms"][name] = {
                "forward": time_ms(fwd, args.warmup, args.repeats),
                "forward_backward": time_ms(fwd_bwd, args.warmup, args.repeats),
            }
        # as the training step runs them (CUDA graphs): the GPU's time, no launch latency. On fresh
        # leaves, their views made in each call (leaves): autograd nodes keep the stream they were
        # made on (the default stream, for the eager calls above), and a captured backward that
        # waits on it is invalidated (cudaErrorStreamCaptureImplicit; pytorch/pytorch#164302)
        for name, (fwd, fwd_bwd) in runners(inputs, against=against).items():
            for phase, fn in (("forward", fwd), ("forward_backward", fwd_bwd)):
                ms, failures = _graphed_ms(fn, args)
                if ms is not None:
                    row.setdefault("graph_ms", {}).setdefault(name, {})[phase] = ms
                for attempt, failed in enumerate(failures, 1):  # recorded; the run goes on
                    row.setdefault("graph_errors", {})[f"{name} {phase} (try {attempt})"] = failed
                    print(f"  {name} {phase}, try {attempt}: no CUDA graph: {failed}", flush=True)
        if mamba_kernels_available():
            row["max_rel_diff_vs_mamba"] = agreement(inputs)
        if args.sweep:
            row["sweep"] = sweep(inputs, args)
            unaligned = runners(make_inputs(*shape, aligned_rank=False))["triton"]
            row["unaligned_rank_ms"] = {
                "forward": time_ms(unaligned[0], 2, args.repeats),
                "forward_backward": time_ms(unaligned[1], 2, args.repeats),
            }
            print("  unaligned dt_rank:", row["unaligned_rank_ms"], flush=True)
        print(summary_line(row), flush=True)
        record["shapes"].append(row)
        del inputs
        torch.cuda.empty_cache()
    return render(record, args)


def _graphed_ms(fn, args) -> tuple[float | None, list[str]]:
    """graph_ms of fn, a capture that fails tried once more: (the time or None, each failure)."""
    failures = []
    for _ in range(2):
        try:
            return graph_ms(fn, args.reps, args.warmup, args.repeats), failures
        except RuntimeError as error:  # a call that cannot be captured
            failures.append(_failure(error))
    return None, failures


def _failure(error: Exception) -> str:
    return f"{type(error).__name__}: {str(error)[:200]}"


def render(record: dict, args) -> int:
    return report.publish("scan", record, args, markdown, plot)


def sweep(inputs: dict, args, rounds: int = 8) -> list[dict]:
    """Every SWEEP launch shape, timed in `rounds` interleaved rounds (each round times every shape
    in turn) and the median taken over all of them: a shared GPU's clocks drift by tens of percent
    over a minute, which timing the shapes one after another would read as differences between
    them. Each call is replayed as a CUDA graph of args.reps calls (as the training step runs it):
    launched from the host, forward + backward waits on autograd's launches, which hides the kernels'
    differences."""
    rows, timed = [], []
    pool = torch.cuda.graph_pool_handle()  # one pool for every shape's graphs, replayed one at a time
    for forward, backward in SWEEP:
        row = {"forward_tiling": vars(forward), "backward_tiling": vars(backward), "graph_reps": args.reps}
        try:
            if mamba_kernels_available():  # what the launch shape does to the results (scratch)
                row["max_rel_diff_vs_mamba"] = agreement(inputs, (forward, backward))
            calls = runners(inputs, (forward, backward))["triton"]
            fwd, fwd_bwd = (captured(fn, args.reps, warmup_calls=3, pool=pool).replay for fn in calls)
            timed.append((row, fwd, fwd_bwd, [], []))
        except Exception as error:  # a launch shape the compiler cannot fit: record it and go on
            row["error"] = _failure(error)
        rows.append(row)
    per_round = max(1, args.repeats // rounds)
    for _ in range(rounds):
        for _, fwd, fwd_bwd, fwd_ms, fwd_bwd_ms in timed:
            fwd_ms.append(time_ms(fwd, 1, per_round) / args.reps)
            fwd_bwd_ms.append(time_ms(fwd_bwd, 1, per_round) / args.reps)
    for row, _, _, fwd_ms, fwd_bwd_ms in timed:
        row.update(forward=statistics.median(fwd_ms), forward_backward=statistics.median(fwd_bwd_ms))
        row["rounds_ms"] = {"forward": fwd_ms, "forward_backward": fwd_bwd_ms}
    for row in rows:
        print("  sweep", row, flush=True)
    return rows


def summary_line(row: dict) -> str:
    ms = row["ms"]
    parts = [f"{row['batch']}x{row['dim']}x{row['length']}:"]
    for name, t in ms.items():
        parts.append(f"{name} fwd {t['forward']:.3f} fwd+bwd {t['forward_backward']:.3f} ms;")
    return " ".join(parts)


def speedup(times: dict, against: str, phase: str) -> str:
    theirs, ours = _at(times, against, phase), _at(times, "triton", phase)
    return "-" if theirs is None or ours is None else f"{theirs / ours:.2f}x"


def _at(times: dict, name: str, phase: str) -> float | None:
    """A runner's time in one phase, None where it has none (a graph that could not be captured)."""
    return times.get(name, {}).get(phase)


def _time_rows(record: dict, key: str) -> list[str]:
    """The table of the runs' times under key: "ms" (each call launched from the host and timed by
    itself) or "graph_ms" (calls replayed as CUDA graphs)."""
    lines = [
        "| batch x E x L | phase | Triton | mamba-ssm kernel | mamba-ssm in model | speed-up vs kernel | vs in model "
        "| floor | Triton / floor |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in record["shapes"]:
        shape, times = f"{row['batch']} x {row['dim']} x {row['length']}", row.get(key, {})
        for phase, label in (("forward", "forward"), ("forward_backward", "fwd + bwd")):
            names = ("triton", "mamba kernel", "mamba in model")
            cells = ["-" if _at(times, n, phase) is None else f"{_at(times, n, phase):.3f}" for n in names]
            floor, ours = row.get("floor_ms", {}).get(phase), _at(times, "triton", phase)
            versus_floor = f"{floor:.3f} | {ours / floor:.1f}x" if floor and ours is not None else "- | -"
            lines.append(
                f"| {shape} | {label} | {' | '.join(cells)} | {speedup(times, 'mamba kernel', phase)} | "
                f"{speedup(times, 'mamba in model', phase)} | {versus_floor} |"
            )
    return lines


def _against_rows(record: dict) -> list[str]:
    """The Triton scan against the kernels of --against, each call by itself and as CUDA graphs."""
    label = record["against"]["label"]
    lines = [
        f"The Triton scan against {label} ({record['against']['file']}), the same run:",
        "",
        f"| batch x E x L | phase | timed as | Triton | {label} | Triton's time / theirs |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in record["shapes"]:
        shape = f"{row['batch']} x {row['dim']} x {row['length']}"
        for key, timed_as in (("ms", "by itself"), ("graph_ms", "CUDA graphs")):
            for phase, name in (("forward", "forward"), ("forward_backward", "fwd + bwd")):
                ours, theirs = _at(row.get(key, {}), "triton", phase), _at(row.get(key, {}), label, phase)
                if ours is None or theirs is None:
                    continue
                lines.append(f"| {shape} | {name} | {timed_as} | {ours:.3f} | {theirs:.3f} | {ours / theirs:.3f} |")
    return lines


def markdown(record: dict) -> str:
    lines = [
        f"One bimamba-v2 layer's scans (both directions), bf16, d_state {record['d_state']}, "
        f"{record['card']}, torch {record['torch']}; ms, median of the timed runs; the Triton kernels "
        "with their default launch shapes (default_tilings). Each call launched from the host and timed "
        "by itself:",
        "",
        *_time_rows(record, "ms"),
    ]
    if any("graph_ms" in row for row in record["shapes"]):
        lines += [
            "",
            f"The same calls as CUDA graphs, as the training step runs them by default ({record['graph_reps']} "
            "calls a replay, its time divided by as many): the GPU's time without the host's launches in the way.",
            "",
            *_time_rows(record, "graph_ms"),
        ]
    if "against" in record:
        lines += ["", *_against_rows(record)]
    for row in record["shapes"]:
        for name, error in row.get("graph_errors", {}).items():
            shape = f"{row['batch']} x {row['dim']} x {row['length']}"
            lines += ["", f"{name} at {shape} could not be captured as a CUDA graph: {error}"]
    if "peaks" in record:
        p = record["peaks"]
        lines += [
            "",
            f"Floor: the slowest unit's time for the scans' exps, FMAs and bytes (benchmarks/scan_floor.py) at "
            f"this card's measured {p['exps_per_s'] / 1e12:.2f} T exp2/s, {p['fmas_per_s'] / 1e12:.1f} T FMA/s "
            f"and {p['bytes_per_s'] / 1e12:.2f} TB/s.",
        ]
    diffs = [(row, row.get("max_rel_diff_vs_mamba")) for row in record["shapes"] if row.get("max_rel_diff_vs_mamba")]
    if diffs:
        lines += ["", "Largest relative difference, Triton vs mamba-ssm, bf16 (max |a - b| / max |b|):", ""]
        names = list(diffs[0][1])
        lines += ["| batch x E x L | " + " | ".join(names) + " |", "| --- |" + " --- |" * len(names)]
        for row, d in diffs:
            lines.append(
                f"| {row['batch']} x {row['dim']} x {row['length']} | "
                + " | ".join(f"{d[n]:.1e}" for n in names)
                + " |"
            )
    return "\n".join(lines) + "\n"


def plot(record: dict, path: Path) -> None:
    def bars(row):
        names = ["triton", "mamba kernel", "mamba in model"]
        return [(name, row["ms"][name]) for name in names if name in row["ms"]]

    title = f"bimamba-v2 layer scan, both directions, bf16, {record['card']}"
    report.phase_bars(record["shapes"], bars, ("forward", "forward_backward"), title, path)


if __name__ == "__main__":
    raise SystemExit(main())
