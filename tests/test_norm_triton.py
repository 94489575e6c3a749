"""The fused residual add + norm (norm_triton.py) against the unfused add then torch's norm, through
encoder.norm_step (src.kernels.add_norm with a norm module's weights), forward and backward:
interpreted without a GPU, compiled on one."""

import pytest
import torch

from src.models.components.encoder import DropPath, make_norm, norm_step
from tests.helpers.triton_cpu import INTERPRETED  # conftest switched the interpreter on without a GPU

DEVICE = "cpu" if INTERPRETED else "cuda"


def run(backend, monkeypatch, kind, first, drop, residual_in_fp32):
    monkeypatch.setenv("SSAMBA_KERNELS", backend)
    gen = torch.Generator().manual_seed(0)
    norm = make_norm(kind, 24, 1e-5).to(DEVICE)
    with torch.no_grad():  # weights and bias away from 1 and 0
        for p in norm.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen).to(DEVICE))
    drop_path = DropPath(drop).train()
    hidden = torch.randn(8, 7, 24, generator=gen).to(DEVICE).requires_grad_()
    residual = None if first else torch.randn(8, 7, 24, generator=gen).to(DEVICE).requires_grad_()
    torch.manual_seed(1)  # the same drop-path draws on both backends
    keep = drop_path.draw(hidden)
    assert drop == 0 or 0 < keep.sum() < len(keep), "this seed must drop some samples and keep others"
    torch.manual_seed(1)
    normed, residual_out = norm_step(hidden, residual, norm, drop_path, residual_in_fp32)
    # both outputs feed the loss, as in the encoder (the residual stream goes on to the next layer)
    w_out, w_res = torch.randn(normed.shape, generator=gen).to(DEVICE), torch.randn(normed.shape, generator=gen)
    loss = (normed * w_out).sum() + (residual_out * w_res.to(DEVICE)).sum()
    loss.backward()
    grads = [hidden.grad] + ([] if first else [residual.grad]) + [p.grad for p in norm.parameters()]
    return [normed.detach(), residual_out.detach()] + grads, residual_out.dtype


@pytest.mark.parametrize(
    "kind, first, drop, residual_in_fp32",
    [("layernorm", False, 0.5, False), ("rmsnorm", False, 0.0, True), ("layernorm", True, 0.5, False)],
)
def test_fused_add_norm_matches_add_then_norm(kind, first, drop, residual_in_fp32, monkeypatch):
    want, want_dtype = run("portable", monkeypatch, kind, first, drop, residual_in_fp32)
    got, got_dtype = run("triton", monkeypatch, kind, first, drop, residual_in_fp32)
    assert got_dtype == want_dtype
    names = ["normed", "residual_out", "d hidden"] + ([] if first else ["d residual"]) + ["d weight", "d bias"]
    for name, a, b in zip(names, got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")
