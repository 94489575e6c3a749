"""Where the GPU time of one encoder forward or one SSL training step goes, kernel by kernel.

    python -m benchmarks.kernel_profile --backbone ssamba --size tiny --tokens 22000 [--phase train]

Runs warm-up iterations, then profiles --iters more with torch.profiler and writes, per kernel
name, the GPU time per iteration and the launches per iteration, biggest first, to
<out>/profile_<backbone>_<size>_<phase>_<tokens>_batch<batch>[_<tag>].json and .md (--tag names a
variant, e.g. the kernels: a rerun of another variant or batch writes beside it, not over it). The
totals say how much of the wall time the GPU was busy (the rest is launch and Python overhead).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.efficiency import frames_for
from benchmarks.provenance import provenance
from benchmarks.throughput import ssl_optimizer, train_step
from src.models.components import build_encoder, encoder_config
from src.models.ssl_module import SSLModule
from src.utils.errors import command
from src.utils.io import write_json, write_text
from src.utils.profiling import device_time, idle_words, kernel_markdown, kernel_table


def make_step(args):
    frames = frames_for(args.tokens)
    x = torch.randn(args.batch, 1, 128, frames, device="cuda")
    bf16 = args.precision == "bf16"
    if args.phase == "inference":
        overrides = {"attention": args.attention} if args.backbone == "ssast" else {}
        model = build_encoder(encoder_config(args.backbone, args.size, **overrides)).cuda().eval()

        def step():
            with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
                model(x)

        return step
    num_mask = min(400, int(0.75 * args.tokens))
    encoder = {"backbone": args.backbone, "size": args.size, "target_length": frames}
    module = SSLModule(encoder, mask_patches=num_mask).cuda()
    optimizer = ssl_optimizer(module)
    return lambda: train_step(lambda spec: module.losses(spec, num_mask)["loss"], optimizer, x, bf16)


@command
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="ssamba", choices=["ssamba", "ssast"])
    parser.add_argument("--size", default="tiny")
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    parser.add_argument("--phase", default="inference", choices=["inference", "train"])
    parser.add_argument("--attention", default="sdpa", help="SSAST only: sdpa or explicit")
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--tag", default="", help="suffix of the file names, e.g. the kernels profiled")
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks/profiles"))
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("this profile needs a CUDA GPU", file=sys.stderr)
        return 2
    step = make_step(args)
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.iters):
        step()
    torch.cuda.synchronize()
    wall_ms = 1e3 * (time.perf_counter() - start) / args.iters
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(args.iters):
            step()
        torch.cuda.synchronize()
    rows = kernel_table(prof, args.iters)
    gpu_ms = sum(r["us"] for r in rows) / 1e3
    name = f"profile_{args.backbone}_{args.size}_{args.phase}_{args.tokens}_batch{args.batch}"
    name += f"_{args.tag}" if args.tag else ""
    result = {
        "card": torch.cuda.get_device_name(),
        "measured": provenance(),
        "kernels_env": os.environ.get("SSAMBA_KERNELS", "auto"),
        **{k: v for k, v in vars(args).items() if k not in ("out", "top")},
        "wall_ms": wall_ms,
        "gpu_busy_ms": gpu_ms,
        "launches": sum(r["launches"] for r in rows),
        "idle": device_time(prof, args.iters)[1],
        "kernels": rows,
    }
    write_json(args.out / f"{name}.json", result)
    lines = [
        f"{args.backbone}-{args.size} {args.phase}, {args.tokens} tokens, batch {args.batch}, {args.precision}, "
        f"{result['card']}: wall {wall_ms:.2f} ms per iteration (unprofiled), GPU busy {gpu_ms:.2f} ms, "
        f"{result['launches']:.0f} kernel launches",
        "",
        f"GPU idle an iteration, by the gaps' length: {idle_words(result['idle']['gaps_us'])}",
        "",
        *kernel_markdown(rows, args.top),
    ]
    write_text(args.out / f"{name}.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
