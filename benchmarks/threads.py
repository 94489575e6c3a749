"""A CPU run beside another busy process: this project's thread settings against torch's defaults.

    python -m benchmarks.threads [--steps 4] [--out docs]

Times training steps of the demo pretraining (the `pretrain_demo` experiment's model: SSAMBA, width
64, depth 4, 128 frames, batch 32, two masked passes, AdamW) in a fresh process per case, on an idle
machine and beside a neighbour (another process running the same training with torch's defaults, as
a second job on a shared machine would), with: the project's settings (`threads: auto` and
OMP_WAIT_POLICY=PASSIVE, src/utils/threads.py), torch's defaults (a thread per core, OpenMP's
active wait), and one thread (the cores less the demo's 2 DataLoader workers).
Writes <out>/benchmarks/threads.json, the table in <out>/benchmarks/threads.md and
<out>/figures/threads.png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

# loaded before any src module: OpenMP reads OMP_WAIT_POLICY once, as torch loads it, and src/__init__
# gives the commands PASSIVE, which must not reach the cases that measure OpenMP's own default
import torch

from benchmarks import report
from benchmarks.provenance import provenance
from src.utils.errors import command
from src.utils.io import atomic_path, write_json, write_text
from src.utils.threads import choose_threads, physical_cores

ROOT = Path(__file__).resolve().parents[1]

# (label, threads or None for torch's default, OMP_WAIT_POLICY or None for OpenMP's default)
SETTINGS = [("project (auto, passive wait)", "auto", "PASSIVE"), ("torch default", None, None), ("1 thread", 1, None)]


def worker(threads: int | None, steps: int, forever: bool) -> None:
    """Run demo pretraining steps; print the seconds of each after the first (or run until killed)."""
    from src.models.ssl_module import SSLModule

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    module = SSLModule(
        {"backbone": "ssamba", "size": None, "embed_dim": 64, "depth": 4, "drop_path_rate": 0.0, "target_length": 128},
        mask_patches=24,
        val_mask_patches=24,
    )
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-3)
    spec = torch.randn(32, 1, 128, 128)
    times = []
    step = 0
    while forever or step <= steps:
        start = time.perf_counter()
        loss = module.losses(spec, 24, seed=step)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step:
            times.append(time.perf_counter() - start)
        step += 1
    print(json.dumps({"threads": torch.get_num_threads(), "step_s": times}))


def run_case(label: str, threads, wait: str | None, steps: int, busy: bool, timeout: float) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.threads", "--worker", "--steps", str(steps)]
    plain = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}  # torch's defaults
    neighbour = None
    if busy:
        neighbour = subprocess.Popen([*cmd, "--forever"], cwd=ROOT, stdout=subprocess.DEVNULL, env=plain)
        time.sleep(5)  # let it get going
    threads = choose_threads(threads) if threads == "auto" else threads
    env = {**plain, **({"OMP_WAIT_POLICY": wait} if wait else {})}
    try:
        out = subprocess.run(
            [*cmd, *(["--threads", str(threads)] if threads else [])],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )
        result = json.loads(out.stdout.strip().splitlines()[-1])
    except subprocess.TimeoutExpired:
        result = {"threads": threads, "step_s": [], "timed_out_after_s": timeout}
    finally:
        if neighbour is not None:
            neighbour.kill()
            neighbour.wait()
    steps_s = result["step_s"]
    return {
        "busy": busy,
        "setting": label,
        "omp_wait_policy": wait or "(OpenMP default: active)",
        "threads": result["threads"],
        "median_step_s": statistics.median(steps_s) if steps_s else None,
        **result,
    }


def draw(result: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = result["cases"]
    fig, ax = plt.subplots(figsize=(9, 3.4))
    labels = [f"{'busy' if c['busy'] else 'idle'}\n{c['setting'].split(' (')[0]} ({c['threads']})" for c in cases]
    ax.bar(labels, [c["median_step_s"] or 0 for c in cases], color=["C0", "C1", "C2"] * 2)
    ax.set_ylabel("seconds per step")
    ax.set_yscale("log")
    ax.set_title("demo pretraining step on the CPU, idle and beside a busy neighbour")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=120, format="png")


@command
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=600, help="seconds a case may take")
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--forever", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.threads, args.steps, args.forever)
        return 0
    cases = []
    for busy in (False, True):
        for label, threads, wait in SETTINGS:
            case = run_case(label, threads, wait, args.steps, busy, args.timeout)
            print(
                f"{'busy' if busy else 'idle'}, {case['setting']} ({case['threads']} threads): "
                f"{case['median_step_s']} s per step"
            )
            cases.append(case)
    idle = {c["setting"]: c["median_step_s"] for c in cases if not c["busy"]}
    for case in cases:  # beside the neighbour, against the same setting on the idle machine
        case["slowdown"] = case["median_step_s"] / idle[case["setting"]] if case["median_step_s"] else None
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, "
        f"{physical_cores()} physical cores",
        "workload": "demo pretraining step: SSAMBA width 64, depth 4, 128 frames, batch 32, two masked passes, AdamW",
        "neighbour": "the same training in another process with torch's default threads",
        "cases": cases,
        "measured": provenance(f"CPU: {platform.processor() or platform.machine()}"),
    }
    write_json(args.out / "benchmarks" / "threads.json", result)
    table = report.threads_table(result)
    head = f"{result['machine']}; {result['workload']}; neighbour: {result['neighbour']}. Median of {args.steps} steps"
    write_text(args.out / "benchmarks" / "threads.md", f"{head} after one warm-up.\n\n{table}")
    draw(result, args.out / "figures" / "threads.png")
    report.render_docs(data=args.out / "benchmarks", names=["threads"])
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
