"""The pretraining step never makes the host wait for the GPU (run on the GPU machine; skipped on
CPU): under torch.cuda.set_sync_debug_mode("error") any synchronizing operation raises. A step
that syncs stops the host from queueing the next kernels while the GPU drains its queue."""

import types
from pathlib import Path

import pytest
import torch
import yaml

from src.models.optim import make_optimizer
from src.models.ssl_module import SSLModule
from src.utils.callbacks import StopOnNonFiniteLoss

pytestmark = pytest.mark.gpu
ROOT = Path(__file__).resolve().parents[1]


def test_the_ssl_training_step_and_its_nan_guard_never_sync(tmp_path):
    torch.manual_seed(0)
    recipe = yaml.safe_load((ROOT / "configs" / "model" / "ssl.yaml").read_text())["optimizer"]
    encoder = dict(backbone="ssamba", size="tiny", depth=2, target_length=256)
    module = SSLModule(encoder, mask_patches=60, optimizer=recipe).cuda().train()
    optimizer = make_optimizer(module.parameters(), **recipe)  # fused on CUDA
    guard = StopOnNonFiniteLoss(str(tmp_path))
    trainer = types.SimpleNamespace(optimizers=[optimizer], global_step=0)
    spec = torch.randn(4, 1, 128, 256, device="cuda")

    def step(k: int) -> None:
        trainer.global_step = k
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = module.losses(spec, 60, seed=k)["loss"]
        guard.on_before_backward(trainer, module, loss)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for k in range(3):  # Triton compiles and autotunes here, which may sync
        step(k)
        guard._check_pending(trainer)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step(3)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    guard._check_pending(trainer)  # the flag of a finite loss: the run goes on
