"""Encoder inference time and peak memory against sequence length: SSAMBA vs SSAST.

    python -m benchmarks.efficiency [--sizes tiny small base] [--out docs]

Batch 4, random (B, 1, 128, frames) inputs with 16x16 patches (tokens = 8 x frames / 16).
For each model, size, precision and mode: warm-up runs, then the median of repeats (CUDA events),
and the peak of torch.cuda.max_memory_allocated during one forward (weights included, as the paper
measured). A series stops after an out-of-memory or a run over --max-seconds.

Modes:  ssamba/mamba        mamba-ssm's per-direction kernels, with the transposes and flips they need
        ssamba/triton       the project's Triton kernels: both directions per launch, no flips (default)
        ssamba/triton+graph the same, replayed as a CUDA graph
        ssast/explicit      softmax(QK^T)V materialised, as SSAST and the paper's baseline
        ssast/sdpa          torch's scaled_dot_product_attention (flash / memory-efficient)
        ssast/sdpa+graph    the same, replayed as a CUDA graph
Writes <out>/benchmarks/efficiency.json, <out>/figures/efficiency_*.png and the tables in
<out>/benchmarks/efficiency.md (docs/benchmarks.md quotes them).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

import torch

from benchmarks.provenance import provenance
from src.models.components import build_encoder, encoder_config
from src.utils.errors import command
from src.utils.io import write_json, write_text

TOKENS = [512, 1024, 2048, 4096, 8192, 12288, 16384, 22000, 44000, 75000]
SSAST_MAX_TOKENS = 22000
BATCH = 4


def frames_for(tokens: int) -> int:
    return 16 * (tokens // 8)


def card() -> dict:
    props = torch.cuda.get_device_properties(0)
    return {"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1), "torch": torch.__version__}


def measure_bandwidth_and_matmul() -> dict:
    """The card's copy bandwidth (GB/s, read + write) and bf16 matmul rate (TFLOP/s), measured."""
    x = torch.empty(2**30 // 2, dtype=torch.bfloat16, device="cuda")
    y = torch.empty_like(x)
    copy_ms = time_ms(lambda: y.copy_(x), warmup=3, repeats=20)
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    mm_ms = time_ms(lambda: a @ a, warmup=3, repeats=20)
    return {"copy_GBps": 2 * x.numel() * 2 / copy_ms / 1e6, "bf16_matmul_TFLOPs": 2 * 8192**3 / mm_ms / 1e9}


def time_ms(fn, warmup: int, repeats: int) -> float:
    """Median milliseconds of fn over `repeats` runs after `warmup`, by CUDA events."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def captured(fn, reps: int = 1, warmup_calls: int = 2, pool=None) -> torch.cuda.CUDAGraph:
    """reps calls of fn captured as one CUDA graph, after warm-up calls on a side stream (as capture
    needs: allocations and lazy initialisation out of the way); pool: a memory pool shared with other
    graphs (torch.cuda.graph_pool_handle()), safe where they are replayed one at a time."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(warmup_calls):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    generator = torch.cuda.default_generators[torch.cuda.current_device()]
    before = generator.clone_state()
    graph = torch.cuda.CUDAGraph()
    try:
        # on the warm-up's stream: autograd keeps the stream a tensor's backward first ran on, and a
        # backward captured on another stream would wait on that one (an invalidated capture)
        with torch.cuda.graph(graph, pool=pool, stream=stream):
            for _ in range(reps):
                fn()
    except RuntimeError:
        # A failed capture never ends the RNG's capture: every later random draw on this GPU would
        # raise "Offset increment outside graph capture". Hand the generator its state from before.
        generator.graphsafe_set_state(before)
        raise
    return graph


def graph_ms(fn, reps: int, warmup: int, repeats: int) -> float:
    """Milliseconds a call of fn takes on the GPU with the host's launches out of the way: reps calls
    captured as one CUDA graph (captured), the replay timed by time_ms, divided by reps."""
    graph = captured(fn, reps, warmup_calls=3)
    ms = time_ms(graph.replay, warmup, repeats) / reps
    del graph
    return ms


def run_point(model, mode: str, tokens: int, precision: str, warmup: int, repeats: int) -> dict:
    x = torch.randn(BATCH, 1, 128, frames_for(tokens), device="cuda")
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16")

    def forward(inp):
        with torch.no_grad(), autocast:
            return model(inp)

    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    forward(x)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    call = captured(lambda: forward(x)).replay if mode.endswith("+graph") else (lambda: forward(x))
    ms = time_ms(call, warmup, repeats)
    return {"ms": ms, "peak_mib": peak / 2**20}


def series(backbone: str, size: str, mode: str, precision: str, args) -> list[dict]:
    os.environ["SSAMBA_KERNELS"] = mode.removesuffix("+graph") if backbone == "ssamba" else "auto"
    overrides = {} if backbone == "ssamba" else {"attention": "explicit" if mode == "explicit" else "sdpa"}
    model = build_encoder(encoder_config(backbone, size, **overrides)).cuda().eval()
    limit = max(args.tokens) if backbone == "ssamba" else min(max(args.tokens), SSAST_MAX_TOKENS)
    points = []
    for tokens in [t for t in args.tokens if t <= limit]:
        try:
            point = run_point(model, mode, tokens, precision, args.warmup, args.repeats)
        except torch.OutOfMemoryError:
            points.append({"tokens": tokens, "oom": True})
            print(f"{backbone}-{size} {mode} {precision} {tokens}: out of memory", flush=True)
            break
        points.append({"tokens": tokens, **point})
        print(
            f"{backbone}-{size} {mode} {precision} {tokens}: {point['ms']:.2f} ms {point['peak_mib']:.0f} MiB",
            flush=True,
        )
        if point["ms"] / 1000 > args.max_seconds:
            break
    del model
    torch.cuda.empty_cache()
    return points


MODES = {
    "ssamba": ["mamba", "triton", "triton+graph"],
    "ssast": ["explicit", "sdpa", "sdpa+graph"],
}


@command
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["tiny", "small", "base"])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--tokens", nargs="+", type=int, default=TOKENS)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-seconds", type=float, default=2.0)
    parser.add_argument("--out", type=Path, default=Path("docs"))
    parser.add_argument("--report", type=Path, help="only write the tables and plots from this JSON")
    args = parser.parse_args(argv)
    if args.report:
        report(json.loads(args.report.read_text()), args.out)
        return 0
    if not torch.cuda.is_available():
        print("this benchmark needs a CUDA GPU", file=sys.stderr)
        return 2

    results = {"card": card(), "measured": provenance(), "batch": BATCH, "floors": measure_bandwidth_and_matmul()}
    results["series"] = []
    for size in args.sizes:
        for precision in args.precisions:
            for backbone, modes in MODES.items():
                for mode in modes:
                    if size != "tiny" and mode.endswith("+graph"):
                        continue  # CUDA graphs for tiny only (they matter for short, launch-bound runs)
                    points = series(backbone, size, mode, precision, args)
                    results["series"].append(
                        {"backbone": backbone, "size": size, "mode": mode, "precision": precision, "points": points}
                    )
                    write_json(args.out / "benchmarks" / "efficiency.json", results)  # partial results survive
    write_json(args.out / "benchmarks" / "efficiency.json", results)
    try:
        report(results, args.out)
    except ImportError as e:  # a bare GPU machine may lack matplotlib: `--report JSON` later
        print(f"no report ({e}); run: python -m benchmarks.efficiency --report {args.out}/benchmarks/efficiency.json")
    return 0


WIDTH = {"tiny": 192, "small": 384, "base": 768}


def floors(size: str, tokens: int, copy_gbps: float, matmul_tflops: float, depth: int = 24, d_state: int = 16):
    """Lower bounds for one bf16 forward of SSAMBA at batch 4: bytes that must move, FLOPs that must
    be done, for the selective scans alone and for the whole encoder (minimum traffic: each layer
    reads and writes its hidden and residual streams, the scans read u, delta, z, B, C and write y)."""
    d = WIDTH[size]
    e, r, n = 2 * d, -(-d // 16), d_state
    bl = BATCH * (tokens + 1)
    scan_bytes = depth * 2 * (4 * e + 2 * n) * bl * 2  # two directions, bf16
    scan_flops = depth * 2 * 6 * bl * e * n
    matmul_flops = depth * 2 * bl * (d * 2 * e + 2 * e * (r + 2 * n) + 2 * r * e + e * d)
    layer_io_bytes = depth * 4 * d * bl * 2
    bandwidth = copy_gbps * 1e9
    scan_ms = 1e3 * max(scan_bytes / bandwidth, scan_flops / (matmul_tflops * 1e12 / 16))  # CUDA cores ~1/16
    encoder_ms = 1e3 * max((scan_bytes + layer_io_bytes) / bandwidth, matmul_flops / (matmul_tflops * 1e12)) + scan_ms
    return {
        "scan_GB": scan_bytes / 1e9,
        "scan_GFLOP": scan_flops / 1e9,
        "encoder_GB": (scan_bytes + layer_io_bytes) / 1e9,
        "encoder_GFLOP": (matmul_flops + scan_flops) / 1e9,
        "scan_floor_ms": scan_ms,
        "encoder_floor_ms": encoder_ms,
    }


def _lookup(results, backbone, size, mode, precision) -> dict[int, dict]:
    for s in results["series"]:
        if (s["backbone"], s["size"], s["mode"], s["precision"]) == (backbone, size, mode, precision):
            return {p["tokens"]: p for p in s["points"] if not p.get("oom")}
    return {}


def report(results: dict, out: Path) -> None:
    """Tables (markdown) and curves (PNG) from the JSON."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    name = results["card"]["name"]
    lines = [
        f"Card: {name}, torch {results['card']['torch']}, batch {results['batch']}. "
        f"Measured copy bandwidth {results['floors']['copy_GBps']:.0f} GB/s, "
        f"bf16 matmul {results['floors']['bf16_matmul_TFLOPs']:.0f} TFLOP/s.",
        "",
    ]
    for precision in ("fp32", "bf16"):
        for size in ("tiny", "small", "base"):
            columns = [(b, m) for b, modes in MODES.items() for m in modes if _lookup(results, b, size, m, precision)]
            if not columns:
                continue
            tables = {c: _lookup(results, *c[:1], size, c[1], precision) for c in columns}
            tokens = sorted({t for table in tables.values() for t in table})
            lines += [f"### {size}, {precision}: time (ms) / peak memory (MiB)", ""]
            lines += ["| tokens | " + " | ".join(f"{b} {m}" for b, m in columns) + " |"]
            lines += ["| --- |" + " --- |" * len(columns)]
            for t in tokens:
                cells = [
                    f"{tables[c][t]['ms']:.1f} / {tables[c][t]['peak_mib']:.0f}" if t in tables[c] else "-"
                    for c in columns
                ]
                lines += [f"| {t} | " + " | ".join(cells) + " |"]
            lines += [""]
    f = results["floors"]
    lines += ["### How far SSAMBA (bf16, fastest mode) sits from its floor", ""]
    lines += [
        "| size | tokens | scan GB | scan GFLOP | encoder GB | encoder GFLOP | floor ms | measured ms | x floor |"
    ]
    lines += ["| --- |" + " --- |" * 8]
    for size in ("tiny", "small", "base"):
        modes = [_lookup(results, "ssamba", size, m, "bf16") for m in MODES["ssamba"]]
        for t in (512, 4096, 22000, 75000):
            measured = [m[t]["ms"] for m in modes if t in m]
            if not measured:
                continue
            fl = floors(size, t, f["copy_GBps"], f["bf16_matmul_TFLOPs"])
            lines += [
                f"| {size} | {t} | {fl['scan_GB']:.2f} | {fl['scan_GFLOP']:.0f} | {fl['encoder_GB']:.2f} | "
                f"{fl['encoder_GFLOP']:.0f} | {fl['encoder_floor_ms']:.2f} | {min(measured):.1f} | "
                f"{min(measured) / fl['encoder_floor_ms']:.0f} |"
            ]
    lines += [""]
    write_text(out / "benchmarks" / "efficiency.md", "\n".join(lines) + "\n")

    styles = {
        "mamba": ("tab:blue", "-"),
        "triton": ("tab:green", "-"),
        "triton+graph": ("tab:olive", "-"),
        "explicit": ("tab:red", "--"),
        "sdpa": ("tab:purple", "--"),
        "sdpa+graph": ("tab:pink", "--"),
    }
    for precision in ("fp32", "bf16"):
        fig, axes = plt.subplots(2, 3, figsize=(15, 8), squeeze=False)
        for col, size in enumerate(("tiny", "small", "base")):
            ax_t, ax_m = axes[0][col], axes[1][col]
            for s in results["series"]:
                pts = [p for p in s["points"] if not p.get("oom")]
                if s["precision"] != precision or s["size"] != size or not pts:
                    continue
                color, style = styles[s["mode"]]
                label = f"{s['backbone']} {s['mode']}"
                x = [p["tokens"] for p in pts]
                ax_t.plot(x, [p["ms"] for p in pts], style, color=color, marker="o", ms=3, label=label)
                ax_m.plot(x, [p["peak_mib"] / 1024 for p in pts], style, color=color, marker="o", ms=3, label=label)
            for ax, title in ((ax_t, "time (ms)"), (ax_m, "peak memory (GiB)")):
                ax.set_xscale("log")
                ax.set_yscale("log")
                ax.set_xlabel("tokens")
                ax.set_title(f"{size}: {title}")
                ax.grid(alpha=0.3, which="both")
            ax_t.legend(fontsize=7)
        fig.suptitle(f"encoder inference, {precision}, batch {results['batch']}, {name}")
        fig.tight_layout()
        (out / "figures").mkdir(parents=True, exist_ok=True)
        fig.savefig(out / "figures" / f"efficiency_{precision}.png", dpi=100)
        plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
