"""The fused residual add + norm (norm_triton.py) against the unfused add then torch's norm, through
encoder.norm_step (src.kernels.add_norm with a norm module's weights), and the pair kernel against
two of those steps and the sums around them (encoder.pair_norm_step), forward and backward:
interpreted without a GPU, compiled on one."""

import pytest
import torch
import torch.nn as nn

from src.models.components.encoder import MambaBlock, make_norm, norm_step, pair_norm_step
from tests.helpers.triton_cpu import INTERPRETED  # conftest switched the interpreter on without a GPU

DEVICE = "cpu" if INTERPRETED else "cuda"
# (norm, first layer, drop-path rate, residual in fp32)
CASES = [("layernorm", False, 0.5, False), ("rmsnorm", False, 0.0, True), ("layernorm", True, 0.5, False)]


def drop_path_scale(drop, batch, gen):
    """Drop path's (batch,) keep / (1 - p), or None at p = 0; the same draws on both backends."""
    if drop == 0:
        return None
    keep = torch.bernoulli(torch.full((batch,), 1 - drop), generator=gen)
    assert 0 < keep.sum() < batch, "this seed must drop some samples and keep others"
    return (keep / (1 - drop)).to(DEVICE)


def run(backend, monkeypatch, kind, first, drop, residual_in_fp32):
    monkeypatch.setenv("SSAMBA_KERNELS", backend)
    gen = torch.Generator().manual_seed(0)
    norm = make_norm(kind, 24, 1e-5).to(DEVICE)
    with torch.no_grad():  # weights and bias away from 1 and 0
        for p in norm.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen).to(DEVICE))
    hidden = torch.randn(8, 7, 24, generator=gen).to(DEVICE).requires_grad_()
    residual = None if first else torch.randn(8, 7, 24, generator=gen).to(DEVICE).requires_grad_()
    scale = drop_path_scale(drop, 8, gen)
    normed, residual_out = norm_step(hidden, residual, norm, scale, residual_in_fp32)
    # both outputs feed the loss, as in the encoder (the residual stream goes on to the next layer)
    w_out, w_res = torch.randn(normed.shape, generator=gen).to(DEVICE), torch.randn(normed.shape, generator=gen)
    loss = (normed * w_out).sum() + (residual_out * w_res.to(DEVICE)).sum()
    loss.backward()
    grads = [hidden.grad] + ([] if first else [residual.grad]) + [p.grad for p in norm.parameters()]
    return [normed.detach(), residual_out.detach()] + grads, residual_out.dtype


@pytest.mark.parametrize("kind, first, drop, residual_in_fp32", CASES)
def test_fused_add_norm_matches_add_then_norm(kind, first, drop, residual_in_fp32, monkeypatch):
    want, want_dtype = run("portable", monkeypatch, kind, first, drop, residual_in_fp32)
    got, got_dtype = run("triton", monkeypatch, kind, first, drop, residual_in_fp32)
    assert got_dtype == want_dtype
    names = ["normed", "residual_out", "d hidden"] + ([] if first else ["d residual"]) + ["d weight", "d bias"]
    for name, a, b in zip(names, got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")


def run_pair(backend, monkeypatch, kind, first, drop, residual_in_fp32):
    """encoder.pair_norm_step over two layers' norms and drop-path scales: the previous pair's two outputs
    (or the embedding alone, first) and the stream in; both normed inputs and the stream out feed the
    loss. Returns the outputs and every gradient."""
    monkeypatch.setenv("SSAMBA_KERNELS", backend)
    gen = torch.Generator().manual_seed(0)
    blocks = []
    for _ in range(2):
        norm = make_norm(kind, 24, 1e-5).to(DEVICE)
        with torch.no_grad():
            for p in norm.parameters():
                p.add_(0.3 * torch.randn(p.shape, generator=gen).to(DEVICE))
        blocks.append(MambaBlock(24, nn.Identity(), norm, residual_in_fp32))
    hidden_f = torch.randn(8, 7, 24, generator=gen).to(DEVICE).requires_grad_()
    hidden_b = None if first else torch.randn(8, 7, 24, generator=gen).to(DEVICE).requires_grad_()
    residual = None if first else torch.randn(8, 7, 24, generator=gen).to(DEVICE).requires_grad_()
    scales = [drop_path_scale(drop, 8, gen) for _ in blocks]
    normed_f, normed_b, residual_out = pair_norm_step(hidden_f, hidden_b, residual, *blocks, scales)
    outputs = [normed_f, normed_b, residual_out]
    loss = sum((t * torch.randn(t.shape, generator=gen).to(DEVICE)).sum() for t in outputs)
    loss.backward()
    inputs = [hidden_f] if first else [hidden_f, hidden_b, residual]
    grads = [t.grad for t in inputs] + [p.grad for block in blocks for p in block.norm.parameters()]
    return [t.detach() for t in outputs] + grads, residual_out.dtype


@pytest.mark.parametrize("kind, first, drop, residual_in_fp32", CASES)
def test_fused_pair_step_matches_two_add_norms_and_the_sums(kind, first, drop, residual_in_fp32, monkeypatch):
    want, want_dtype = run_pair("portable", monkeypatch, kind, first, drop, residual_in_fp32)
    got, got_dtype = run_pair("triton", monkeypatch, kind, first, drop, residual_in_fp32)
    assert got_dtype == want_dtype
    inputs = ["d hidden_f"] if first else ["d hidden_f", "d hidden_b", "d residual"]
    params = [f"d {p} {s}" for s in "fb" for p in (["weight"] if kind == "rmsnorm" else ["weight", "bias"])]
    names = ["normed_f", "normed_b", "residual_out"] + inputs + params
    assert len(names) == len(got) == len(want)
    for name, a, b in zip(names, got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")
