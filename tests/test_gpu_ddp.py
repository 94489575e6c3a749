"""DDP on 2 GPUs gives the gradients of one GPU on the same global batch, in fp32 and under bf16
autocast, on the default kernels (the Triton scan and conv on CUDA) (GPU machine only)."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from src.models.finetune_module import FinetuneModule

pytestmark = pytest.mark.gpu
ENC = dict(backbone="ssamba", size=None, embed_dim=64, depth=2, target_length=128, drop_path_rate=0.0)


def make_model(device):
    torch.manual_seed(0)
    return FinetuneModule(encoder=ENC, num_classes=5, fstride=16, tstride=16, loss="bce").to(device)


def make_batch():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, 1, 128, 128, generator=g)
    y = torch.nn.functional.one_hot(torch.randint(0, 5, (8,), generator=g), 5).float()
    return x, y


def loss_of(model, forward, x, y, bf16: bool):
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
        return model.loss(forward(x.cuda()), y.cuda())


def _worker(rank: int, world: int, port: int, out: str, bf16: bool) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("nccl", rank=rank, world_size=world)
    torch.cuda.set_device(rank)
    model = make_model(f"cuda:{rank}")
    ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[rank])
    x, y = make_batch()
    per_rank = len(x) // world
    part = slice(rank * per_rank, (rank + 1) * per_rank)
    loss = loss_of(model, ddp, x[part], y[part], bf16)
    loss.backward()  # DDP averages the per-rank mean losses' gradients = the global mean's gradient
    if rank == 0:
        torch.save({k: p.grad.cpu() for k, p in model.named_parameters()}, out)
    dist.destroy_process_group()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16-autocast"])
def test_two_gpu_ddp_gradients_equal_one_gpu(tmp_path, bf16):
    model = make_model("cuda:0")
    x, y = make_batch()
    loss_of(model, model, x, y, bf16).backward()
    single = {k: p.grad.cpu() for k, p in model.named_parameters()}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "ddp_grads.pt")
    mp.spawn(_worker, args=(2, port, out, bf16), nprocs=2, join=True)
    ddp = torch.load(out, weights_only=True)
    for name, grad in single.items():
        err = (ddp[name] - grad).abs().max() / grad.abs().max().clamp_min(1e-6)
        # fp32: only the order of the sums differs; bf16: so do the roundings of per-rank activations
        assert err < (2e-2 if bf16 else 1e-3), f"{name}: relative difference {err:.2e}"
