"""model.cuda_graph: the SSL step's forward and backward replayed as CUDA graphs give the eager step's
losses and gradients (run on the GPU machine; skipped on CPU)."""

import pytest
import torch

from src.models.ssl_module import SSLModule

pytestmark = pytest.mark.gpu


def step(module, call) -> tuple[dict, dict]:
    module.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = call()
    out["loss"].backward()
    return {k: v.detach().float().clone() for k, v in out.items()}, {
        n: p.grad.detach().clone() for n, p in module.named_parameters() if p.grad is not None
    }


@pytest.mark.parametrize("backbone", ["ssamba", "ssast"])  # model.cuda_graph=auto graphs either's pretraining
def test_the_graphed_step_gives_the_eager_steps_losses_and_gradients(backbone):
    torch.manual_seed(0)
    encoder = dict(backbone=backbone, size="tiny", depth=2, target_length=256, drop_path_rate=0.0)
    module = SSLModule(encoder, mask_patches=60, cuda_graph=True).cuda().train()
    spec = torch.randn(4, 1, 128, 256, device="cuda")
    eager, eager_grads = step(module, lambda: module.losses(spec, 60, seed=5))
    for call in range(3):  # the first call captures, the others replay; the masks follow the seed
        graphed, graphed_grads = step(module, lambda: module._graphed_losses(spec, 60, seed=5))
        for key in eager:
            torch.testing.assert_close(graphed[key], eager[key], rtol=1e-3, atol=1e-5, msg=f"call {call}: {key}")
        assert graphed_grads.keys() == eager_grads.keys()
        for name, grad in eager_grads.items():
            torch.testing.assert_close(graphed_grads[name], grad, rtol=1e-2, atol=1e-5, msg=f"call {call}: {name}")
    other, _ = step(module, lambda: module._graphed_losses(spec, 60, seed=6))  # new masks, copied in
    assert not torch.equal(other["loss"], eager["loss"])
