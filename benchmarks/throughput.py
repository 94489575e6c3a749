"""Pretraining throughput on GPUs, and what the data loader delivers.

    python -m benchmarks.throughput model [--sizes tiny small base] [--batch-per-gpu 64] [--cuda-graph]
                                      [--scan-ckpt-every N] [--scan-scratch fp24] [--scan-keep-last-tile]
    torchrun --nproc-per-node 2 -m benchmarks.throughput model ...        # DDP, one process per GPU
    python -m benchmarks.throughput loader --store DIR [--workers 8]      # samples/s from fp16 shards
    python -m benchmarks.throughput train --store DIR [--sizes tiny small base] [--devices 1 2]
                                      # bare steps, then src/train.py itself (loader, DDP) per device count
    python -m benchmarks.throughput synthetic-store --out DIR [--clips 4096]

`model` times full SSL steps (two masked passes, InfoNCE + 10 MSE, backward, AdamW) in bf16-mixed
with fp32 parameters on the fused kernels, after warm-up, for SSAMBA and SSAST of each size in one
invocation, and prints SSAMBA's throughput and peak memory as a ratio of SSAST's; it appends the
run to --json (default docs/benchmarks/throughput.json); --scan-ckpt-every, --scan-scratch and
--scan-keep-last-tile time the step with those ScanTiling fields replaced in the scan's default
launches (the scan's checkpoints that many steps apart, its backward's scratch format, its walk
back's first tile from registers): a launch's time and memory in the step, for benchmarks/scan.py's
sweep rows. `loader` reads a feature store
through the pretraining Dataset and a DataLoader as training does. `train` records in one run, per size, the bare
steps of SSAMBA and SSAST and src/train.py's pretraining per device count, with their ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from benchmarks.provenance import provenance
from src.data.datamodules import PretrainDataset
from src.data.shards import FeatureStore
from src.data.store_index import write_columns
from src.kernels import mixer_triton, scan_triton
from src.models.optim import make_optimizer
from src.models.ssl_module import SSLModule
from src.utils.errors import command
from src.utils.io import write_json, write_jsonl

ROOT = Path(__file__).resolve().parents[1]


def _append(path: Path, run: dict) -> None:
    """Add one invocation's records to the file's list of runs."""
    runs = json.loads(path.read_text())["runs"] if path.exists() else []
    write_json(path, {"runs": runs + [{**run, "measured": provenance()}]})


def model_throughput(args) -> None:
    distributed = "LOCAL_RANK" in os.environ
    if distributed:
        torch.distributed.init_process_group("nccl")
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    else:
        rank, world = 0, 1
    records = []
    for size in args.sizes:
        for backbone in args.backbones:
            with scan_launch(
                ckpt_every=args.scan_ckpt_every, scratch=args.scan_scratch, keep_last_tile=args.scan_keep_last_tile
            ):
                record = measure_ssl_step(
                    backbone,
                    size,
                    args.batch_per_gpu,
                    args.warmup,
                    args.steps,
                    world,
                    args.compile,
                    args.cuda_graph,
                )
            if backbone == "ssamba":  # the scan's launch, where it is not the default
                for name in ("scan_ckpt_every", "scan_scratch", "scan_keep_last_tile"):
                    if getattr(args, name):
                        record[name] = getattr(args, name)
            records.append(record)
            if rank == 0:
                print(json.dumps(record), flush=True)
    ratios = ratio_lines(records)
    if rank == 0:
        print("\n".join(ratios))
        card = torch.cuda.get_device_name()
        run = {"run": args.label or f"{card} x{world}", "card": card, "records": records, "ratios": ratios}
        _append(args.json, run)
    if distributed:
        torch.distributed.destroy_process_group()


@contextlib.contextmanager
def scan_launch(**fields):
    """Inside the block, the scan's default launch shapes (default_tilings, in both modules that ask
    it) with these ScanTiling fields replaced (ckpt_every, scratch, keep_last_tile; a None leaves one
    as it is)."""
    fields = {name: value for name, value in fields.items() if value is not None}
    if not fields:
        yield
        return
    own = scan_triton.default_tilings

    def replaced(*shape):
        return tuple(dataclasses.replace(t, **fields) for t in own(*shape))

    try:
        scan_triton.default_tilings = mixer_triton.default_tilings = replaced
        yield
    finally:
        scan_triton.default_tilings = mixer_triton.default_tilings = own


def measure_ssl_step(
    backbone: str, size: str, batch: int, warmup: int, steps: int, world: int, compile: str, cuda_graph: bool = False
) -> dict:
    """Full SSL steps (two masked passes of 400 of 512 patches, InfoNCE + 10 MSE, backward, the
    recipe's AdamW) of one model, bf16-mixed, after warm-up."""
    torch.manual_seed(0)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    module = SSLModule({"backbone": backbone, "size": size, "target_length": 1024}, mask_patches=400).cuda()
    if compile == "objective":
        module.objective = torch.compile(module.objective)
    net = Objective(module, cuda_graph)
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(net)
    optimizer = ssl_optimizer(module)
    x = torch.randn(batch, 1, 128, 1024, device="cuda")
    seconds = time_steps(net, optimizer, x, warmup, steps)
    return {
        "what": "ssl_pretraining_step",
        "backbone": backbone,
        "size": size,
        "gpus": world,
        "batch_per_gpu": batch,
        "compile": compile,
        "cuda_graph": cuda_graph,
        "samples_per_s": steps * batch * world / seconds,
        "ms_per_step": 1000 * seconds / steps,
        "peak_mib": torch.cuda.max_memory_allocated() / 2**20,
        "card": torch.cuda.get_device_name(),
        "kernels": os.environ.get("SSAMBA_KERNELS", "auto"),
    }


def ratio_lines(records: list[dict]) -> list[str]:
    """SSAMBA against SSAST of the same size: samples/s and peak memory."""
    lines = []
    for mamba in (r for r in records if r["backbone"] == "ssamba"):
        ast = next((r for r in records if r["backbone"] == "ssast" and r["size"] == mamba["size"]), None)
        if ast is not None:
            lines.append(
                f"{mamba['size']}: SSAMBA {mamba['samples_per_s']:.0f} samples/s, SSAST {ast['samples_per_s']:.0f}: "
                f"{mamba['samples_per_s'] / ast['samples_per_s']:.2f}x SSAST's throughput; peak memory "
                f"{mamba['peak_mib'] / 1024:.1f} GiB vs {ast['peak_mib'] / 1024:.1f} GiB: "
                f"{mamba['peak_mib'] / ast['peak_mib']:.2f}x"
            )
    return lines


def ssl_optimizer(module: torch.nn.Module) -> torch.optim.Optimizer:
    """The pretraining recipe's optimizer (AdamW, fused on CUDA) from configs/model/ssl.yaml, as the
    SSL module builds it."""
    recipe = yaml.safe_load((ROOT / "configs" / "model" / "ssl.yaml").read_text())["optimizer"]
    return make_optimizer(module.parameters(), **recipe)


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

    def __init__(self, module: SSLModule, cuda_graph: bool = False):
        super().__init__()
        self.module, self.cuda_graph = module, cuda_graph

    def forward(self, x):
        if self.cuda_graph:  # the masks drawn eagerly, forward and backward replayed (SSLModule cuda_graph)
            return self.module._graphed_losses(x, 400, seed=0)["loss"]
        return self.module.losses(x, 400)["loss"]


def loader_throughput(args) -> None:
    store = FeatureStore(args.store)
    dataset = PretrainDataset(store, list(range(len(store))), 1024, -4.27, 4.57, train=True)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=args.batch,
        shuffle=True,
        num_workers=args.workers,
        pin_memory=True,
        persistent_workers=args.workers > 0,
        drop_last=True,
    )
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
    _append(args.json, {"run": args.label or "loader", "records": [record]})


def train_throughput(args) -> None:
    """One run of what pretraining costs, on one card: per size, the bare SSL step of SSAMBA and of
    SSAST, each eager and as CUDA graphs (in this process, one GPU), and the real entry point,
    src/train.py, on a feature store for each device count and each model.cuda_graph of --graph at
    the same batch per GPU (data.batch_size is the global batch), training only: samples/s as the
    Throughput callback measures them (loader, DDP and logging included). The run records their
    ratios (train_ratios)."""
    records = []
    for size in args.sizes:
        for backbone, graph in (("ssamba", False), ("ssamba", True), ("ssast", False), ("ssast", True)):
            bare = measure_ssl_step(
                backbone, size, args.batch_per_gpu, args.bare_warmup, args.bare_steps, 1, "none", graph
            )
            records.append(bare)
            print(json.dumps(bare), flush=True)
        torch.cuda.empty_cache()
        for devices in args.devices:
            for graph in args.graph:
                loop = {"what": "src/train.py", "experiment": args.experiment, "size": size, "cuda_graph": graph}
                records.append({**loop, "batch_per_gpu": args.batch_per_gpu, **run_train(args, size, devices, graph)})
                print(json.dumps(records[-1]), flush=True)
    lines = train_ratios(records)
    print("\n".join(lines))
    card = torch.cuda.get_device_name()
    _append(
        args.json,
        {
            "run": args.label or f"{card}: src/train.py {args.experiment}",
            "card": card,
            "records": records,
            "ratios": lines,
        },
    )


def run_train(args, size: str, devices: int, graph: str) -> dict:
    """src/train.py's pretraining of one size on `devices` GPUs with model.cuda_graph=graph; its
    throughput.json."""
    run_dir = Path(args.runs) / f"{args.experiment}_{size}_devices{devices}_graph-{graph}"
    shutil.rmtree(run_dir, ignore_errors=True)  # a timing run, never resumed: the last one's folder goes
    store = Path(args.store).resolve()
    command = [sys.executable, "-m", "src.train", f"experiment={args.experiment}", f"encoder.size={size}"]
    command += ["callbacks=throughput", f"callbacks.throughput.warmup_steps={args.warmup}"]
    command += [f"data.sources=[{{path:'{store}',split:null,weight:1.0}}]", "data.val_source=null"]
    command += [f"data.num_workers={args.workers}", f"data.batch_size={args.batch_per_gpu * devices}"]
    command += [f"trainer.devices={devices}", f"trainer.max_steps={args.steps}", "trainer.limit_val_batches=0"]
    command += ["trainer.num_sanity_val_steps=0", "optimized_metric=train/loss", f"hydra.run.dir={run_dir}"]
    command += [f"model.cuda_graph={graph}"]
    command += args.overrides
    print(" ".join(command), flush=True)
    subprocess.run(command, check=True, cwd=ROOT)
    return json.loads((run_dir / "throughput.json").read_text())


def train_ratios(records: list[dict]) -> list[str]:
    """Per size and model.cuda_graph: the loop's samples/s on one GPU against SSAMBA's bare step run
    the same way (as CUDA graphs when the loop has them and the run timed it: what the loop loses)
    and against SSAST's faster bare step, and each device count against one."""
    lines = []
    bare = {
        (r["backbone"], r["size"], bool(r.get("cuda_graph"))): r for r in records if r["what"] == "ssl_pretraining_step"
    }
    loops = [r for r in records if r["what"] == "src/train.py"]
    for size, graph in dict.fromkeys((r["size"], r.get("cuda_graph", "false")) for r in loops):
        same = [r for r in loops if r["size"] == size and r.get("cuda_graph", "false") == graph]
        one = next((r for r in same if r["devices"] == 1), None)
        if one is None:
            continue
        graphed = graph != "false" and ("ssamba", size, True) in bare
        ssamba = bare.get(("ssamba", size, graphed))
        if ssamba is not None:
            ratio = one["samples_per_s"] / ssamba["samples_per_s"]
            way = "bare step as CUDA graphs" if graphed else "bare step"
            lines.append(f"{size}: src/train.py model.cuda_graph={graph} on 1 GPU at {ratio:.2f}x SSAMBA's {way}")
        ssast = [bare[k] for k in (("ssast", size, False), ("ssast", size, True)) if k in bare]
        if ssast:
            ratio = one["samples_per_s"] / max(r["samples_per_s"] for r in ssast)
            lines.append(f"{size}: src/train.py model.cuda_graph={graph} on 1 GPU at {ratio:.2f}x SSAST's bare step")
        for r in same:
            if r is not one:
                ratio = r["samples_per_s"] / one["samples_per_s"]
                lines.append(
                    f"{size}: model.cuda_graph={graph} {r['devices']} GPUs at {ratio:.2f}x one GPU's samples/s "
                    "through src/train.py"
                )
    return lines


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
    write_columns(out, index)
    meta = {"complete": True, "num_shards": n_shards, "clips": args.clips, "shape": [128, 1024], "target_length": 1024}
    write_json(out / "meta.json", {**meta, "classes": [], "manifest": "synthetic", "manifest_sha256": ""})
    print(f"synthetic store with {args.clips} clips at {out}")


@command
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("model")
    m.add_argument("--sizes", nargs="+", default=["tiny", "small", "base"])
    m.add_argument("--backbones", nargs="+", default=["ssamba", "ssast"], choices=["ssamba", "ssast"])
    m.add_argument("--compile", default="none", choices=["none", "objective"], help="torch.compile the heads + losses")
    m.add_argument("--cuda-graph", action="store_true", help="both steps as CUDA graphs (model.cuda_graph)")
    m.add_argument("--scan-ckpt-every", type=int, default=None, help="the scan's checkpoints this many steps apart")
    m.add_argument("--scan-scratch", choices=["fp32", "fp24", "bf16"], help="how the scan's backward keeps its scratch")
    m.add_argument(
        "--scan-keep-last-tile", action="store_true", default=None, help="the scan's ScanTiling.keep_last_tile on"
    )
    m.add_argument("--label", default="")
    m.add_argument("--batch-per-gpu", type=int, default=64)
    m.add_argument("--warmup", type=int, default=5)
    m.add_argument("--steps", type=int, default=20)
    m.add_argument("--json", type=Path, default=Path("docs/benchmarks/throughput.json"))
    ld = sub.add_parser("loader")
    ld.add_argument("--store", required=True)
    ld.add_argument("--workers", type=int, default=8)
    ld.add_argument("--batch", type=int, default=64)
    ld.add_argument("--batches", type=int, default=60)
    ld.add_argument("--label", default="")
    ld.add_argument("--json", type=Path, default=Path("docs/benchmarks/throughput.json"))
    t = sub.add_parser("train", help="bare steps, then src/train.py on a feature store per device count")
    t.add_argument("--store", required=True)
    t.add_argument("--sizes", nargs="+", default=["tiny"], choices=["tiny", "small", "base"])
    t.add_argument("--bare-warmup", type=int, default=5)
    t.add_argument("--bare-steps", type=int, default=20)
    t.add_argument("--experiment", default="pretrain")
    t.add_argument("--devices", nargs="+", type=int, default=[1, 2])
    t.add_argument(
        "--graph",
        nargs="+",
        default=["false", "auto"],
        choices=["false", "auto", "true"],
        help="model.cuda_graph settings of the loop (auto: on in one process)",
    )
    t.add_argument("--batch-per-gpu", type=int, default=64, help="data.batch_size is the global batch: this x devices")
    t.add_argument("--steps", type=int, default=60)
    t.add_argument("--warmup", type=int, default=10)
    t.add_argument("--workers", type=int, default=8)
    t.add_argument("--runs", default="logs/throughput")
    t.add_argument("--label", default="")
    t.add_argument("--json", type=Path, default=Path("docs/benchmarks/throughput.json"))
    t.add_argument("overrides", nargs="*", help="more Hydra overrides for src/train.py")
    s = sub.add_parser("synthetic-store")
    s.add_argument("--out", required=True)
    s.add_argument("--clips", type=int, default=4096)
    args = parser.parse_args(argv)
    commands = {"model": model_throughput, "loader": loader_throughput, "train": train_throughput}
    {**commands, "synthetic-store": synthetic_store}[args.command](args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
