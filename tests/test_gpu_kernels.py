"""Fused CUDA kernels against the portable path (run on the GPU machine; skipped on CPU).

Tolerances, as max |a - b| / max(max |b|, 1e-3) over a tensor (the floor covers gradients that are
exactly zero in theory, e.g. dA for a sequence of one step):
  fp32:  forward 2e-4, gradients 2e-3   (both accumulate in fp32; they differ in exp/sum order)
  bf16:  forward 2e-2, gradients 5e-2   (bf16 inputs and outputs, fp32 accumulation inside)
"""

import pytest
import torch

from src.models.components import build_encoder
from src.models.components.bimamba import BiMambaMixer
from src.models.components.scan import fused_kernels_available, resolve_backend, selective_scan

pytestmark = pytest.mark.gpu
TOL = {torch.float32: (2e-4, 2e-3), torch.bfloat16: (2e-2, 5e-2)}


def rel_err(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-3)).item()


@pytest.fixture(autouse=True)
def _need_kernels():
    if not fused_kernels_available():
        pytest.skip("mamba-ssm's fused kernels do not import here")


def test_fused_path_is_chosen_on_cuda():
    assert resolve_backend(torch.zeros(1, device="cuda")) == "fused"
    assert resolve_backend(torch.zeros(1, device="cuda"), "portable") == "portable"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("length", [1, 129, 512, 2049])
def test_fused_and_portable_scan_agree(dtype, length):
    b, d, n = 2, 64, 16
    dev = "cuda"
    u = torch.randn(b, d, length, device=dev, dtype=dtype, requires_grad=True)
    delta = (0.5 * torch.randn(b, d, length, device=dev)).to(dtype).requires_grad_()
    A = (-torch.rand(d, n, device=dev) * 4 - 0.1).requires_grad_()
    B = torch.randn(b, n, length, device=dev, dtype=dtype, requires_grad=True)
    C = torch.randn(b, n, length, device=dev, dtype=dtype, requires_grad=True)
    D = torch.randn(d, device=dev, requires_grad=True)
    z = torch.randn(b, d, length, device=dev, dtype=dtype, requires_grad=True)
    bias = (0.5 * torch.randn(d, device=dev)).requires_grad_()
    leaves = [u, delta, A, B, C, D, z, bias]
    fwd_tol, grad_tol = TOL[dtype]
    outs, grads = {}, {}
    grad_out = torch.randn(b, d, length, device=dev, dtype=dtype)
    for backend in ("fused", "portable"):
        y, last = selective_scan(u, delta, A, B, C, D, z, bias, True, True, backend=backend)
        outs[backend] = (y, last)
        grads[backend] = torch.autograd.grad(y, leaves, grad_out)
    assert outs["fused"][0].dtype == outs["portable"][0].dtype == dtype
    assert rel_err(outs["fused"][0], outs["portable"][0]) < fwd_tol
    assert rel_err(outs["fused"][1], outs["portable"][1]) < fwd_tol
    for name, g_fused, g_port in zip("u delta A B C D z bias".split(), grads["fused"], grads["portable"]):
        assert rel_err(g_fused, g_port) < grad_tol, name


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_and_portable_mixer_agree(dtype, monkeypatch):
    mixer = BiMambaMixer(64, backward_dt_init="mamba").cuda()
    hidden = torch.randn(2, 300, 64, device="cuda")
    fwd_tol, grad_tol = TOL[dtype]
    results = {}
    for backend in ("fused", "portable"):
        monkeypatch.setenv("SSAMBA_KERNELS", backend)
        mixer.zero_grad()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            out = mixer(hidden)
        out.float().pow(2).mean().backward()
        results[backend] = (out.detach(), {k: p.grad.clone() for k, p in mixer.named_parameters()})
    assert rel_err(results["fused"][0], results["portable"][0]) < fwd_tol
    for name, g in results["fused"][1].items():
        assert rel_err(g, results["portable"][1][name]) < grad_tol, name


def test_fused_and_portable_encoder_agree_in_bf16(monkeypatch):
    encoder = build_encoder("ssamba", "tiny", depth=4).cuda().eval()
    x = torch.randn(2, 1, 128, 1024, device="cuda")
    outs = {}
    for backend in ("fused", "portable"):
        monkeypatch.setenv("SSAMBA_KERNELS", backend)
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            outs[backend] = encoder(x)
    assert rel_err(outs["fused"], outs["portable"]) < 2e-2


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("frames", [1024, 8192])  # 512 tokens (one chunk) and 4096 (chunked)
def test_one_launch_inference_matches_the_per_direction_kernels(dtype, frames, monkeypatch):
    encoder = build_encoder("ssamba", "tiny", depth=4, input_tdim=frames).cuda().eval()
    x = torch.randn(2, 1, 128, frames, device="cuda")
    outs = {}
    for backend in ("triton", "fused"):  # triton: one launch for both directions; fused: mamba-ssm
        monkeypatch.setenv("SSAMBA_KERNELS", backend)
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            outs[backend] = encoder(x)
    assert rel_err(outs["triton"], outs["fused"]) < (1e-3 if dtype == torch.float32 else 3e-2)


def test_ssl_step_on_cuda_with_seeded_masks():
    from src.models.components.masking import make_mask
    from src.models.ssl_module import SSLModule

    masks = [make_mask("cluster", 4, (8, 16), 60, seed=123, device=torch.device("cuda")) for _ in range(2)]
    assert masks[0].is_cuda and torch.equal(masks[0], masks[1])  # the same seed draws the same masks
    encoder = dict(backbone="ssamba", size="tiny", depth=2, input_tdim=256, drop_path_rate=0.0)
    module = SSLModule(encoder, mask_patches=60).cuda()
    spec = torch.randn(2, 1, 128, 256, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        first = module.losses(spec, 60, seed=123)
        again = module.losses(spec, 60, seed=123)
    torch.testing.assert_close(first["loss"], again["loss"])
    first["loss"].backward()
    assert module.encoder.mask_embed.grad is not None
