"""What the official masking costs per batch: the vectorised draw (model.masking=official, the
default) against gen_maskid_patch ported line by line (official_loop), on the CPU.

    python -m benchmarks.masking [--repeats 20] [--out docs]

Batch 64 at the pretraining grid (8 x 64 patches, 1024 frames) with 400 masked, and the demo's
(8 x 8, 24 masked); the median of --repeats draws after one warm-up, in one torch thread and with
the machine's threads. Writes <out>/benchmarks/masking.json and the table in <out>/benchmarks/masking.md.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from benchmarks.provenance import measured_line, provenance
from src.models.components.masking import make_mask
from src.utils.io import write_json, write_text

CASES = (((8, 64), 400), ((8, 8), 24))
BATCH = 64


def median_ms(strategy: str, grid, num_mask: int, repeats: int) -> float:
    make_mask(strategy, BATCH, grid, num_mask, seed=0)  # warm-up
    times = []
    for seed in range(1, repeats + 1):
        start = time.perf_counter()
        make_mask(strategy, BATCH, grid, num_mask, seed=seed)
        times.append(1e3 * (time.perf_counter() - start))
    return statistics.median(times)


def table(record: dict) -> str:
    lines = [
        "| grid (f x t) | masked | torch threads | official (vectorised) ms | official_loop ms | loop / vectorised |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in record["rows"]:
        lines.append(
            f"| {r['grid'][0]} x {r['grid'][1]} | {r['num_mask']} | {r['threads']} | {r['official_ms']:.1f} | "
            f"{r['official_loop_ms']:.1f} | {r['official_loop_ms'] / r['official_ms']:.1f}x |"
        )
    lines += ["", f"Batch {BATCH}, median of {record['repeats']} draws. {measured_line(record)}"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("docs"))
    args = parser.parse_args(argv)
    rows, machine_threads = [], torch.get_num_threads()
    for threads in sorted({1, machine_threads}):
        torch.set_num_threads(threads)
        for grid, num_mask in CASES:
            row = {"grid": list(grid), "num_mask": num_mask, "threads": threads}
            for strategy in ("official", "official_loop"):
                row[f"{strategy}_ms"] = median_ms(strategy, grid, num_mask, args.repeats)
            rows.append(row)
            print(row, flush=True)
    torch.set_num_threads(machine_threads)
    record = {"batch": BATCH, "repeats": args.repeats, "rows": rows, "measured": provenance()}
    write_json(args.out / "benchmarks" / "masking.json", record)
    write_text(args.out / "benchmarks" / "masking.md", table(record))
    print(table(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
