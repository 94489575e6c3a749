"""Pretraining throughput on GPUs, and what the data loader delivers.

    python benchmarks/throughput.py model [--sizes tiny small base] [--batch-per-gpu 32]
    torchrun --nproc-per-node 2 benchmarks/throughput.py model ...        # DDP, one process per GPU
    python benchmarks/throughput.py loader --store DIR [--workers 8]      # samples/s from fp16 shards
    python benchmarks/throughput.py synthetic-store --out DIR [--clips 4096]

`model` times full SSL steps (two masked passes, InfoNCE + 10 MSE, backward, AdamW) in bf16-mixed
with fp32 parameters on the fused kernels, after warm-up; it appends its result to
--json (default docs/benchmarks/throughput.json). `loader` reads a feature store through the
pretraining Dataset and a DataLoader as training does.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.data.datamodules import PretrainDataset  # noqa: E402
from src.data.shards import FeatureStore  # noqa: E402
from src.models.ssl_module import SSLModule  # noqa: E402
from src.utils.io import write_json, write_jsonl  # noqa: E402


def _append(path: Path, record: dict) -> None:
    rows = json.loads(path.read_text()) if path.exists() else []
    write_json(path, rows + [record])


def model_throughput(args) -> None:
    distributed = "LOCAL_RANK" in os.environ
    if distributed:
        torch.distributed.init_process_group("nccl")
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    else:
        rank, world = 0, 1
    for size in args.sizes:
        torch.manual_seed(0)
        module = SSLModule({"backbone": args.backbone, "size": size, "input_tdim": 1024}, mask_patches=400).cuda()
        net = Objective(module)
        if distributed:
            net = torch.nn.parallel.DistributedDataParallel(net)
        optimizer = ssl_optimizer(module)
        x = torch.randn(args.batch_per_gpu, 1, 128, 1024, device="cuda")
        seconds = time_steps(net, optimizer, x, args.warmup, args.steps)
        samples = args.steps * args.batch_per_gpu * world
        record = {
            "what": "ssl_pretraining_step",
            "backbone": args.backbone,
            "size": size,
            "gpus": world,
            "batch_per_gpu": args.batch_per_gpu,
            "samples_per_s": samples / seconds,
            "ms_per_step": 1000 * seconds / args.steps,
            "peak_mib": torch.cuda.max_memory_allocated() / 2**20,
            "card": torch.cuda.get_device_name(),
        }
        if rank == 0:
            print(json.dumps(record), flush=True)
            _append(args.json, record)
        del module, net, optimizer
        torch.cuda.empty_cache()
    if distributed:
        torch.distributed.destroy_process_group()


def ssl_optimizer(module: torch.nn.Module) -> torch.optim.Optimizer:
    """The pretraining recipe's AdamW."""
    return torch.optim.AdamW(module.parameters(), lr=1e-4, weight_decay=5e-8, betas=(0.95, 0.999))


def train_step(loss_fn, optimizer, x, bf16: bool = True) -> None:
    """One full step: forward (bf16-mixed), backward, optimizer."""
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
        loss = loss_fn(x)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def time_steps(net, optimizer, x, warmup: int, steps: int) -> float:
    """Seconds for `steps` full training steps after `warmup` ones."""
    for _ in range(warmup):
        train_step(net, optimizer, x)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        train_step(net, optimizer, x)
    torch.cuda.synchronize()
    return time.perf_counter() - start


class Objective(torch.nn.Module):
    """The SSL loss as a forward(), so DistributedDataParallel sees it."""

    def __init__(self, module: SSLModule):
        super().__init__()
        self.module = module

    def forward(self, x):
        return self.module.losses(x, 400)["loss"]


def loader_throughput(args) -> None:
    store = FeatureStore(args.store)
    dataset = PretrainDataset(store, list(range(len(store))), 1024, -4.27, 4.57, train=True)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=args.batch, shuffle=True, num_workers=args.workers, pin_memory=True,
        persistent_workers=args.workers > 0, drop_last=True,
    )  # fmt: skip
    it = iter(loader)
    for _ in range(3):
        next(it)
    start, n = time.perf_counter(), 0
    for _ in range(args.batches):
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            batch = next(it)
        n += batch["fbank"].shape[0]
    seconds = time.perf_counter() - start
    record = {"what": "loader", "workers": args.workers, "batch": args.batch, "samples_per_s": n / seconds}
    print(json.dumps(record), flush=True)
    _append(args.json, record)


def synthetic_store(args) -> None:
    """A feature store of random fbanks in the real format (for loader and DDP runs on a bare machine)."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    per_shard, index = 1024, []
    n_shards = -(-args.clips // per_shard)
    for k in range(n_shards):
        rows = min(per_shard, args.clips - k * per_shard)
        arr = np.lib.format.open_memmap(
            out / f"shard_{k:05d}.npy", mode="w+", dtype=np.float16, shape=(rows, 128, 1024)
        )
        arr[:] = (rng.standard_normal((rows, 128, 1024), dtype=np.float32) * 4.5 - 4.3).astype(np.float16)
        arr.flush()
        (out / f"shard_{k:05d}.json").write_text(json.dumps({"rows": rows, "ids": [], "n_frames": [], "bad": []}))
        base = {"n_frames": 1024, "labels": [], "split": "train", "fold": None}
        index += [{"id": f"c{k}_{r}", "shard": k, "row": r, **base} for r in range(rows)]
    write_jsonl(out / "index.jsonl", index)
    write_json(out / "meta.json", {"complete": True, "num_shards": n_shards, "clips": args.clips, "shape": [128, 1024],
                                   "classes": [], "manifest": "synthetic", "manifest_sha256": ""})  # fmt: skip
    print(f"synthetic store with {args.clips} clips at {out}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("model")
    m.add_argument("--sizes", nargs="+", default=["tiny", "small", "base"])
    m.add_argument("--backbone", default="ssamba")
    m.add_argument("--batch-per-gpu", type=int, default=32)
    m.add_argument("--warmup", type=int, default=5)
    m.add_argument("--steps", type=int, default=20)
    m.add_argument("--json", type=Path, default=Path("docs/benchmarks/throughput.json"))
    ld = sub.add_parser("loader")
    ld.add_argument("--store", required=True)
    ld.add_argument("--workers", type=int, default=8)
    ld.add_argument("--batch", type=int, default=64)
    ld.add_argument("--batches", type=int, default=60)
    ld.add_argument("--json", type=Path, default=Path("docs/benchmarks/throughput.json"))
    s = sub.add_parser("synthetic-store")
    s.add_argument("--out", required=True)
    s.add_argument("--clips", type=int, default=4096)
    args = parser.parse_args(argv)
    {"model": model_throughput, "loader": loader_throughput, "synthetic-store": synthetic_store}[args.command](args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
