"""A feature store's index at AudioSet-2M + LibriSpeech scale: load time and memory per process.

    python -m benchmarks.index_scale [--clips 2300000] [--workers 8] [--out docs]

Writes a synthetic store of --clips rows in the store's format (index.jsonl and meta.json as a build
writes them: AudioSet-style ids, two labels of 527 a clip, the unbalanced / balanced / eval splits,
no shards), then measures, each in a fresh process:
- index.jsonl read as Python objects (the index before its columns): load time, resident memory, and
  two forked workers that read every record (their extra private memory: the copy each makes);
- `python -m src.data.shards verify --upgrade`'s columns: the time to write them, the time to open
  them and the main process's resident memory;
- --workers DataLoader workers (fork, as Lightning's loaders) that each read every row's shard, row,
  frame count and labels (one epoch's index reads), their extra private memory (smaps_rollup:
  memory that is the worker's own, not shared pages of the index) and the loader's samples/s.
Writes <out>/benchmarks/index.json, the table in docs/benchmarks.md (report.py) and <out>/figures/index.png.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from benchmarks import report
from benchmarks.provenance import provenance
from src.data.store_index import upgrade_index
from src.utils.io import atomic_path, write_json, write_jsonl

ROOT = Path(__file__).resolve().parents[1]
SPLITS = (("unbalanced", 0.9826), ("balanced", 0.0097), ("eval", 0.0077))


def private_mib(pid: int | str = "self") -> float:
    """The process's own memory (private clean + dirty pages): what it does not share with others."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines() if ":" in line
    )
    return sum(int(fields[k].split()[0]) for k in ("Private_Clean", "Private_Dirty")) / 1024


def rss_mib() -> float:
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return int(status["VmRSS"].split()[0]) / 1024


def synthetic_store(root: Path, clips: int, seed: int = 0) -> None:
    """index.jsonl and a complete meta.json of `clips` rows (1024 a shard), as a build writes them."""
    rng = random.Random(seed)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    mids = [f"/m/0{rng.randrange(36**4):04x}{k}" for k in range(527)]
    cuts = [int(clips * sum(s for _, s in SPLITS[: k + 1])) for k in range(len(SPLITS))]
    rows = []
    for i in range(clips):
        split = next(name for (name, _), cut in zip(SPLITS, cuts) if i < cut) if i < cuts[-1] else SPLITS[-1][0]
        youtube = "".join(rng.choice(alphabet) for _ in range(11))
        rows.append(
            {
                "id": f"{split}/{youtube}_{rng.randrange(300)}000",
                "shard": i // 1024,
                "row": i % 1024,
                "n_frames": 998,
                "labels": rng.sample(mids, 2),
                "split": split,
                "fold": None,
            }
        )
    write_jsonl(root / "index.jsonl", rows)
    meta = {"complete": True, "clips": clips, "num_shards": -(-clips // 1024), "shape": [128, 1024]}
    write_json(root / "meta.json", {**meta, "target_length": 1024, "classes": mids, "manifest": "synthetic"})


class _EveryRecord(IterableDataset):
    """The same reads from index.jsonl's objects: every record's shard, row, frame count and labels."""

    def __init__(self, rows):
        self.rows = rows

    def __iter__(self):
        before = private_mib()
        total = sum(r["shard"] + r["row"] + r["n_frames"] + len(r["labels"]) for r in self.rows)
        yield {"worker_private_before_mib": before, "worker_private_after_mib": private_mib(), "sum": total}


def measure_jsonl(root: Path, workers: int) -> dict:
    """Load and memory of index.jsonl as Python objects; `workers` forked loader workers read every
    record (fewer than the columns' run: each may copy the whole index, gigabytes)."""
    from src.utils.io import read_jsonl

    before, start = rss_mib(), time.perf_counter()
    rows = read_jsonl(root / "index.jsonl")
    load_s = time.perf_counter() - start
    result = {"load_s": load_s, "rss_mib": rss_mib(), "growth_mib": rss_mib() - before, "rows": len(rows)}
    every = _EveryRecord(rows)
    reports = list(DataLoader(every, batch_size=None, num_workers=workers, multiprocessing_context="fork"))
    result["workers"] = [
        {**r, "extra_private_mib": r["worker_private_after_mib"] - r["worker_private_before_mib"]} for r in reports
    ]
    return result


def _touch_every_row(index) -> int:
    """One epoch's index reads: every row's shard, row, frame count and labels."""
    total = 0
    for start in range(0, len(index), 65536):
        stop = min(start + 65536, len(index))
        total += int(index.column("shard")[start:stop].sum()) + int(index.column("row")[start:stop].sum())
        total += int(index.column("n_frames")[start:stop].sum())
        total += int(
            index.column("labels")[index.column("label_start")[start] : index.column("label_start")[stop]].sum()
        )
    return total


class _EveryRow(IterableDataset):
    """An iterable dataset whose every worker reads every row, then yields its memory before and after."""

    def __init__(self, index):
        self.index = index

    def __iter__(self):
        before = private_mib()
        _touch_every_row(self.index)
        yield {"worker_private_before_mib": before, "worker_private_after_mib": private_mib(), "pid": os.getpid()}


class _Rows(Dataset):
    """A map-style dataset of index records (what a loader asks of the index per sample)."""

    def __init__(self, index):
        self.index = index

    def __len__(self):
        return len(self.index)

    def __getitem__(self, i):
        rec = self.index[i]
        return rec["shard"] * 1024 + rec["row"] + rec["n_frames"] + len(rec["labels"])


def measure_columns(root: Path, workers: int, samples: int) -> dict:
    from src.data.store_index import StoreIndex

    before, start = rss_mib(), time.perf_counter()
    index = StoreIndex(root)
    assert index.mapped, "the columns are not current"
    _touch_every_row(index)  # the main process reads them too (the sampler's weights, select)
    result = {"load_s": time.perf_counter() - start, "rss_mib": rss_mib(), "growth_mib": rss_mib() - before}
    result["main_private_mib"] = private_mib()
    every = _EveryRow(index)
    loader = DataLoader(every, batch_size=None, num_workers=workers, multiprocessing_context="fork")
    reports = list(loader)
    result["workers"] = [
        {**r, "extra_private_mib": r["worker_private_after_mib"] - r["worker_private_before_mib"]} for r in reports
    ]
    rows = _Rows(index)
    sampler = torch.randint(len(index), (samples,)).tolist()
    loader = DataLoader(rows, batch_size=64, sampler=sampler, num_workers=workers, multiprocessing_context="fork")
    start = time.perf_counter()
    seen = sum(len(batch) for batch in loader)
    result["loader_samples_per_s"] = seen / (time.perf_counter() - start)
    return result


def _in_fresh_process(what: str, root: Path, args) -> dict:
    command = [sys.executable, "-m", "benchmarks.index_scale", "--measure", what, "--root", str(root)]
    command += ["--workers", str(args.workers), "--samples", str(args.samples)]
    out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def draw(record: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    j, c = record["jsonl"], record["columns"]
    labels = ["index.jsonl:\nmain process", *(f"jsonl\nworker {k}" for k in range(len(j["workers"])))]
    labels += ["columns:\nmain process", *(f"columns\nworker {k}" for k in range(len(c["workers"])))]
    values = [j["growth_mib"], *(w["extra_private_mib"] for w in j["workers"])]
    values += [c["growth_mib"], *(w["extra_private_mib"] for w in c["workers"])]
    colors = ["C3"] * (1 + len(j["workers"])) + ["C0"] * (1 + len(c["workers"]))
    fig, ax = plt.subplots(figsize=(11, 3.8))
    ax.bar(labels, values, color=colors)
    ax.set_yscale("symlog")
    ax.set_ylabel("MiB the index costs")
    ax.set_title(f"a store index of {record['clips']:,} clips: index.jsonl as objects (red) or mapped columns (blue)")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=120, format="png")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=2_300_000)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--samples", type=int, default=200_000, help="samples the loader's rate is timed over")
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    parser.add_argument("--measure", choices=("jsonl", "columns"), help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure == "jsonl":
        print(json.dumps(measure_jsonl(args.root, args.workers)))
        return 0
    if args.measure == "columns":
        print(json.dumps(measure_columns(args.root, args.workers, args.samples)))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "store"
        start = time.perf_counter()
        synthetic_store(root, args.clips)
        print(f"synthetic index of {args.clips} clips in {time.perf_counter() - start:.0f} s", flush=True)
        jsonl = _in_fresh_process("jsonl", root, argparse.Namespace(**{**vars(args), "workers": min(2, args.workers)}))
        print("index.jsonl:", jsonl, flush=True)
        start = time.perf_counter()
        upgrade_index(root)  # what `python -m src.data.shards verify --upgrade` does before it checks
        upgrade_s = time.perf_counter() - start
        columns = _in_fresh_process("columns", root, args)
        disk = sum(p.stat().st_size for p in (root / "index").iterdir())
        jsonl_bytes = (root / "index.jsonl").stat().st_size
    record = {
        "clips": args.clips,
        "workers": args.workers,
        "jsonl": {**jsonl, "file_mib": jsonl_bytes / 2**20},
        "columns": {**columns, "write_s": upgrade_s, "disk_mib": disk / 2**20},
        "measured": provenance(),
    }
    write_json(args.out / "benchmarks" / "index.json", record)
    draw(record, args.out / "figures" / "index.png")
    report.render_docs(data=args.out / "benchmarks", names=["index"])
    print(report.index_table(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
