"""How fast a feature store builds, per CPU core, and what AudioSet-2M + LibriSpeech then takes.

    python -m benchmarks.build_rate [--clips 192] [--out docs]

Writes --clips 10-second clips as AudioSet is kept (16 kHz mono 16-bit WAV, docs/data.md), then
times `python -m src.data.shards build --target-length 1024` over them with 1 worker and with one
per core of this machine, each into a fresh store, in a fresh process (the import and the worker
start-up counted, as a real build pays them once). clips/s per worker is the per-core rate; the
estimate divides the paper's 2.3M clips by it times 100 cores (a SLURM build of 100 one-core parts,
or fewer parts of several cores), and says what the file system must then carry: each clip is
read (its WAV) and written (its fp16 rows). Writes <out>/benchmarks/build_rate.json and .md, and
the table into docs/benchmarks.md and docs/data.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from benchmarks import report
from benchmarks.provenance import measured_line, provenance
from src.utils.io import write_json, write_jsonl, write_text

PAPER_CLIPS = 2_300_000
CLUSTER_CORES = 100
CLIP_BYTES = 160_000 * 2 + 128 * 1024 * 2  # a 10 s 16-bit WAV read, its 1024 x 128 fp16 rows written


def write_clips(folder: Path, clips: int) -> Path:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(clips):
        path = folder / f"clip{i:05d}.wav"
        tone = np.sin(2 * np.pi * rng.uniform(100, 4000) * np.arange(160_000) / 16_000)
        sf.write(path, (0.3 * tone + 0.05 * rng.standard_normal(160_000)).astype(np.float32), 16_000, subtype="PCM_16")
        rows.append({"id": f"clip{i:05d}", "path": str(path), "labels": [], "split": "unbalanced"})
    manifest = folder / "manifest.jsonl"
    write_jsonl(manifest, rows)
    return manifest


def timed_build(manifest: Path, out: Path, workers: int) -> float:
    command = [sys.executable, "-m", "src.data.shards", "build", "--manifest", str(manifest), "--out", str(out)]
    command += ["--target-length", "1024", "--shard-size", "32", "--workers", str(workers)]
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - start


def table(record: dict) -> str:
    lines = [
        f"{record['clips']} clips of 10 s (16 kHz mono 16-bit WAV) into a store at 1024 frames, "
        f"`python -m src.data.shards build` in a fresh process each.",
        "",
        "| workers | wall s | clips/s | clips/s per worker | 2.3M clips on 100 cores at that rate "
        "| the file system's load then |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in record["rows"]:
        per_core = r["clips_per_s"] / r["workers"]
        minutes = PAPER_CLIPS / (per_core * CLUSTER_CORES) / 60
        load = per_core * CLUSTER_CORES * CLIP_BYTES / 1e9
        lines.append(
            f"| {r['workers']} | {r['wall_s']:.1f} | {r['clips_per_s']:.0f} | {per_core:.0f} | {minutes:.0f} min "
            f"| {load:.1f} GB/s |"
        )
    lines += ["", measured_line(record)]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=1536)
    parser.add_argument("--out", type=Path, default=Path("docs"))
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        manifest = write_clips(Path(tmp), args.clips)
        for workers in sorted({1, os.cpu_count() or 1}):
            wall = timed_build(manifest, Path(tmp) / f"store{workers}", workers)
            rows.append({"workers": workers, "wall_s": wall, "clips_per_s": args.clips / wall})
            print(rows[-1], flush=True)
    record = {"clips": args.clips, "cpus": os.cpu_count(), "rows": rows, "measured": provenance()}
    write_json(args.out / "benchmarks" / "build_rate.json", record)
    write_text(args.out / "benchmarks" / "build_rate.md", table(record))
    for doc in ("benchmarks.md", "data.md"):
        report.render_docs(doc=args.out / doc, data=args.out / "benchmarks", names=["build-rate"])
    print(table(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
