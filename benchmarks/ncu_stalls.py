"""Where the scan kernels' warps wait, from Nsight Compute: per kernel launch its duration,
instructions, registers, occupancy, DRAM and L2 figures, the share of each warp-stall reason in the
sampled stalls, and the instructions that waited longest on global memory (long scoreboard).

On the GPU machine (ncu ships there; --clock-control none leaves the clocks as they run):

    ncu --clock-control none --profile-from-start off --set full --import-source yes \\
        --kernel-name regex:scan_ -o scan python -m benchmarks.ncu_stalls step --shape 64x384x513
    ncu -i scan.ncu-rep --page details > details.txt
    ncu -i scan.ncu-rep --page source --csv --print-source sass > source.csv

(`step` runs three forward + backward passes of one layer's scans, then a fourth between
cudaProfilerStart and Stop, which is what ncu profiles), then, anywhere:

    python -m benchmarks.ncu_stalls summary details.txt source.csv --label "..." --commit SHA \\
        --device "..." --torch 2.11.0+cu130 --date "2026-12-06 12:05 UTC" --json docs/benchmarks/scan_ncu.json

appends one run to the JSON (its provenance given, since ncu's exports do not carry it).
"""

from __future__ import annotations

import argparse
import csv
import json
import re
from collections import Counter
from pathlib import Path

from src.utils.io import write_json

DETAILS = {  # metric name in `--page details` -> key
    "Duration": "duration",
    "Executed Instructions": "instructions",
    "Registers Per Thread": "registers",
    "Achieved Occupancy": "achieved_occupancy_pct",
    "DRAM Throughput": "dram_throughput_pct",
    "L2 Hit Rate": "l2_hit_rate_pct",
    "Issue Slots Busy": "issue_slots_busy_pct",
}


def details(path: Path) -> list[dict]:
    """Per launch, in order: its kernel name and the DETAILS metrics (durations in us)."""
    launches = []
    for line in path.read_text().splitlines():
        head = re.match(r"\s{2}(\w+) \(\d+, \d+, \d+\)x\(\d+, \d+, \d+\)", line)
        if head:
            launches.append({"kernel": head.group(1)})
            continue
        fields = re.match(r"\s{4}(.+?)\s{2,}(\S+)?\s+([\d,.]+)\s*$", line)
        if launches and fields and fields.group(1) in DETAILS:
            key, unit = DETAILS[fields.group(1)], fields.group(2)
            value = float(fields.group(3).replace(",", ""))
            if key == "duration":
                value *= {"ms": 1000.0, "us": 1.0, "ns": 0.001}[unit]
                key = "duration_us"
            launches[-1].setdefault(key, value)
    return launches


def _share(row: list[str], header: dict, total: int) -> float:
    return round(100 * int(row[header["stall_long_sb"]] or 0) / total, 1)


def stalls(path: Path, top: int = 5) -> list[dict]:
    """Per launch, in order: each stall reason's share of the sampled warp states (percent), and the
    `top` SASS instructions with the most long-scoreboard samples (their share of all samples)."""
    launches, header = [], None
    for row in csv.reader(path.open()):
        if row[:1] == ["Kernel Name"]:
            launches.append([])
        elif row[:1] == ["Address"]:
            header = {name: i for i, name in enumerate(row)}
        elif row and launches:
            launches[-1].append(row)
    out = []
    for rows in launches:
        reasons = [h for h in header if h.startswith("stall_") and "Not Issued" not in h]
        counts = Counter({r[6:]: sum(int(row[header[r]] or 0) for row in rows) for r in reasons})
        total = sum(counts.values()) or 1
        waits = sorted(rows, key=lambda row: -int(row[header["stall_long_sb"]] or 0))[:top]
        out.append(
            {
                "stall_pct": {r: round(100 * c / total, 1) for r, c in counts.most_common() if c},
                "long_scoreboard_top": [
                    {"sass": row[header["Source"]].strip(), "pct": _share(row, header, total)} for row in waits
                ],
            }
        )
    return out


def step(shape: tuple[int, int, int]) -> None:
    """Three forward + backward passes of one layer's scans (compiled and warm), then one between
    cudaProfilerStart and Stop."""
    import torch

    from benchmarks.scan import REVERSE, leaves, make_inputs
    from src.kernels.scan_triton import selective_scan_triton

    inputs = make_inputs(*shape)

    def once():
        a = leaves(inputs)()
        y = selective_scan_triton(**a, reverse=REVERSE)
        y.backward(torch.ones_like(y))

    for _ in range(3):
        once()
    torch.cuda.synchronize()
    torch.cuda.profiler.start()
    once()
    torch.cuda.synchronize()
    torch.cuda.profiler.stop()


def main(argv=None) -> int:
    from benchmarks.report import parse_shape

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("step", help="the step ncu profiles")
    run.add_argument("--shape", type=parse_shape, default=parse_shape("64x384x513"))
    summary = commands.add_parser("summary", help="the JSON from ncu's exports")
    summary.add_argument("details", type=Path)
    summary.add_argument("source", type=Path)
    for name in ("label", "commit", "device", "torch", "date"):
        summary.add_argument(f"--{name}", required=True)
    summary.add_argument("--json", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.command == "step":
        step(args.shape)
        return 0
    launches = [{**a, **b} for a, b in zip(details(args.details), stalls(args.source), strict=True)]
    record = json.loads(args.json.read_text()) if args.json.exists() else {"runs": []}
    measured = {"commit": args.commit, "date": args.date, "torch": args.torch, "device": args.device}
    record["runs"].append({"run": args.label, "measured": measured, "launches": launches})
    write_json(args.json, record)
    for launch in launches:
        print(launch["kernel"], launch.get("duration_us"), "us;", launch["stall_pct"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
