"""The depthwise conv + SiLU of one bimamba-v2 layer, both directions: the project's Triton kernels
against causal-conv1d, forward and backward, and against the bytes they must move.

    python -m benchmarks.conv [--shapes 64x384x513 64x1536x513 4x384x22001] [--against OLD.py] [--sweep]

Shapes are batch x channels (E) x length, kernel width 4, bf16: x a (B, L, E) view into in_proj's
(B, L, 2E) output, as the mixer reads it; u and du (2, B, L, E). Timed with CUDA events (median of
--repeats after --warmup), through autograd as the model runs them:
  triton                 conv1d_silu(backend="triton"): both directions in one launch each way
  causal-conv1d in model conv1d_silu(backend="mamba"): causal-conv1d per direction, with the
                         transposes and flips the model needs
  --against FILE         a conv_triton.py of another commit, loaded from FILE (a before/after in one
                         run), named by --against-label
"forward" is the forward alone (no autograd); "backward" the gradients of x, weight and bias from
a given du (the forward and backward through autograd, less the forward). Each is captured as a
CUDA graph of --reps calls and the replay timed, so the times are the GPU's, not the launches'.
"floor" is the bytes each pass must move (forward: x in, u out; backward: x and du in, dx out) at
the card's copy bandwidth, measured in the same run. The training step runs the forward
twice per mixer call (the backward recomputes u) and the backward once: "per step" is that for the
48 mixer calls of SSAMBA-tiny's SSL step (24 layers, two masked passes) at its shape, 64 x 384 x 513.
--sweep times conv_triton's launch shapes at the step's shape (channels a program, warps, steps a
tile, steps a program).

Writes <out>/conv.json and <out>/conv.md, docs/figures/conv.png, and the table into
docs/benchmarks.md between its `conv` markers.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from benchmarks import report
from benchmarks.efficiency import graph_ms, time_ms
from benchmarks.provenance import provenance
from src.kernels import conv1d_silu, conv_triton, mamba_kernels_available
from src.kernels.conv_triton import ConvLaunch
from src.utils.errors import command

ROOT = Path(__file__).resolve().parents[1]
REVERSE = (False, True)
WIDTH = 4
STEP_CALLS = 48  # SSAMBA-tiny's SSL step: 24 layers x two masked passes
STEP_SHAPE = (64, 384, 513)
SWEEP = [  # launch shapes of both kernels: channels a program (two or one a thread), tile, steps a program
    ConvLaunch(block_e, warps, tile, steps)
    for block_e, warps in ((64, 1), (128, 2), (256, 4), (128, 4))
    for tile in (4, 8)
    for steps in (64, 128, 256)
]


def make_inputs(batch: int, dim: int, length: int) -> tuple:
    xz = torch.randn(batch, length, 2 * dim, device="cuda", dtype=torch.bfloat16)
    weight = 0.5 * torch.randn(2, dim, WIDTH, device="cuda")
    bias = 0.1 * torch.randn(2, dim, device="cuda")
    du = torch.randn(2, batch, length, dim, device="cuda", dtype=torch.bfloat16)
    return xz[..., :dim], weight, bias, du


def runners(inputs: tuple, against=None) -> dict:
    """name -> (forward, forward + backward) callables."""
    x, weight, bias, du = inputs

    def pair(call):
        leaves = [x.detach().requires_grad_(), weight.detach().requires_grad_(), bias.detach().requires_grad_()]

        def forward():
            with torch.no_grad():
                call(x, weight, bias)

        return forward, lambda: torch.autograd.grad(call(*leaves), leaves, du)

    out = {"triton": pair(lambda *a: conv1d_silu(*a, REVERSE, backend="triton"))}
    if against is not None:
        out[against.label] = pair(lambda *a: against.conv1d_silu_triton(*a, REVERSE))
    if mamba_kernels_available():
        out["causal-conv1d in model"] = pair(lambda *a: conv1d_silu(*a, REVERSE, backend="mamba"))
    return out


def timed(forward, forward_backward, args) -> dict:
    """Each call's GPU time as a CUDA graph of --reps calls (efficiency.graph_ms)."""
    fwd = graph_ms(forward, args.reps, args.warmup, args.repeats)
    both = graph_ms(forward_backward, args.reps, args.warmup, args.repeats)
    return {"forward": fwd, "backward": both - fwd}


def floor_ms(batch: int, dim: int, length: int, bytes_per_s: float) -> dict:
    row = batch * length * dim * 2  # one (B, L, E) bf16 tensor
    sets = len(REVERSE)
    return {
        "forward": (row + sets * row) / bytes_per_s * 1e3,
        "backward": (row + sets * row + row) / bytes_per_s * 1e3,
    }


def copy_bandwidth() -> float:
    big = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    copy = torch.empty_like(big)
    return 2 * big.numel() / (time_ms(lambda: copy.copy_(big), 3, 10) * 1e-3)


def agreement(inputs: tuple) -> dict:
    """Max relative difference of u and each gradient, Triton vs causal-conv1d."""
    x, weight, bias, du = inputs
    results = {}
    for backend in ("triton", "mamba"):
        leaves = [t.detach().clone().requires_grad_() for t in (x, weight, bias)]
        u = conv1d_silu(*leaves, REVERSE, backend=backend)
        results[backend] = (u, *torch.autograd.grad(u, leaves, du))
    return {
        name: float((a.float() - b.float()).abs().max() / b.float().abs().max())
        for name, a, b in zip(("u", "x", "weight", "bias"), results["triton"], results["mamba"])
    }


def sweep(inputs: tuple, args) -> list[dict]:
    """Every launch shape of SWEEP for both kernels at once."""
    saved = conv_triton.FORWARD, conv_triton.BACKWARD
    rows = []
    try:
        for launch in SWEEP:
            conv_triton.FORWARD = conv_triton.BACKWARD = launch
            rows.append({**vars(launch), **timed(*runners(inputs)["triton"], args)})
            print("  sweep", rows[-1], flush=True)
    finally:
        conv_triton.FORWARD, conv_triton.BACKWARD = saved
    return rows


@command
def main(argv=None) -> int:
    parser = report.kernel_parser(__doc__, "conv", ["64x384x513", "64x1536x513", "4x384x22001"])
    args = parser.parse_args(argv)
    if args.from_json:
        return render(json.loads(args.from_json.read_text()), args)
    if not torch.cuda.is_available():
        parser.error("needs a CUDA GPU")
    against = report.load_module(args.against, args.against_label) if args.against else None
    record = {"card": torch.cuda.get_device_name(), "measured": provenance(), "width": WIDTH, "shapes": []}
    if against is not None:
        record["against"] = {"file": str(args.against), "label": args.against_label}
    record["bytes_per_s"] = copy_bandwidth()
    for shape in args.shapes:
        torch.manual_seed(0)
        inputs = make_inputs(*shape)
        row = {"batch": shape[0], "dim": shape[1], "length": shape[2], "ms": {}}
        row["launch"] = {"forward": vars(conv_triton.FORWARD), "backward": vars(conv_triton.BACKWARD)}
        row["floor_ms"] = floor_ms(*shape, record["bytes_per_s"])
        for name, (forward, forward_backward) in runners(inputs, against).items():
            row["ms"][name] = timed(forward, forward_backward, args)
        if mamba_kernels_available():
            row["max_rel_diff_vs_causal_conv1d"] = agreement(inputs)
        if args.sweep and shape == STEP_SHAPE:
            row["sweep"] = sweep(inputs, args)
        print(json.dumps(row), flush=True)
        record["shapes"].append(row)
        del inputs
        torch.cuda.empty_cache()
    return render(record, args)


def render(record: dict, args) -> int:
    return report.publish("conv", record, args, markdown, plot)


def per_step(times: dict) -> float:
    return STEP_CALLS * (2 * times["forward"] + times["backward"])


def markdown(record: dict) -> str:
    names = list(record["shapes"][0]["ms"])
    lines = [
        f"One bimamba-v2 layer's depthwise conv + SiLU (both directions, width {record['width']}), bf16, "
        f"{record['card']}; ms, median of the timed runs. Floor: the bytes a pass moves at this card's "
        f"measured copy bandwidth, {record['bytes_per_s'] / 1e12:.2f} TB/s.",
        "",
        "| batch x E x L | phase | " + " | ".join(names) + " | floor | Triton / floor |",
        "| --- | --- |" + " --- |" * len(names) + " --- | --- |",
    ]
    for row in record["shapes"]:
        shape = f"{row['batch']} x {row['dim']} x {row['length']}"
        for phase in ("forward", "backward"):
            cells = " | ".join(f"{row['ms'][n][phase]:.3f}" for n in names)
            floor = row["floor_ms"][phase]
            lines.append(f"| {shape} | {phase} | {cells} | {floor:.3f} | {row['ms']['triton'][phase] / floor:.1f}x |")
    step = next((r for r in record["shapes"] if (r["batch"], r["dim"], r["length"]) == STEP_SHAPE), None)
    if step:
        cells = ", ".join(f"{n} {per_step(step['ms'][n]):.1f} ms" for n in names)
        lines += [
            "",
            f"Per SSL step of SSAMBA-tiny (batch 64: {STEP_CALLS} mixer calls, each two forwards, one "
            f"recomputed, and a backward): {cells}.",
        ]
    diffs = [r for r in record["shapes"] if r.get("max_rel_diff_vs_causal_conv1d")]
    if diffs:
        keys = list(diffs[0]["max_rel_diff_vs_causal_conv1d"])
        lines += ["", "Largest relative difference, Triton vs causal-conv1d (max |a - b| / max |b|):", ""]
        lines += ["| batch x E x L | " + " | ".join(keys) + " |", "| --- |" + " --- |" * len(keys)]
        for r in diffs:
            d = r["max_rel_diff_vs_causal_conv1d"]
            cells = " | ".join(f"{d[k]:.1e}" for k in keys)
            lines.append(f"| {r['batch']} x {r['dim']} x {r['length']} | {cells} |")
    return "\n".join(lines) + "\n"


def plot(record: dict, path: Path) -> None:
    def bars(row):
        return [(name, row["ms"][name]) for name in row["ms"]] + [("floor", row["floor_ms"])]

    title = f"bimamba-v2 layer depthwise conv + SiLU, both directions, bf16, {record['card']}"
    report.phase_bars(record["shapes"], bars, ("forward", "backward"), title, path)


if __name__ == "__main__":
    raise SystemExit(main())
