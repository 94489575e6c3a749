"""The project's Triton kernels on a GPU, against mamba-ssm's CUDA kernels and the float64 reference
(run on the GPU machine; skipped on CPU).

Tolerances:
- against the reference, mamba-ssm's own (tests/ops/test_selective_scan.py, for both kernels):
  output rtol/atol 6e-4/2e-3 in fp32 and 3e-2/5e-2 in bf16; gradients as that test had them
  (du x2, ddelta x5 rtol and x10 atol, dA atol x5, dB and dC as the output, dD, dz and
  ddelta_bias max(1e-3, output tolerance)).
- against mamba-ssm's kernels, as max |a - b| / max |b| over a tensor (the floor of 1e-3 covers
  gradients that are exactly zero in theory, e.g. dA for a sequence of one step):
  fp32 forward 2e-4, gradients 2e-3; bf16 forward 2e-2, gradients 5e-2.
"""

from dataclasses import replace

import pytest
import torch

from src.kernels import conv1d_silu, mamba_kernels_available, resolve_backend, selective_scan
from src.kernels.scan_triton import ScanTiling, default_tilings, selective_scan_triton
from src.models.components.bimamba import BiMambaMixer
from tests.helpers.encoders import make_encoder
from tests.helpers.reference import stacked_scan_reference

pytestmark = pytest.mark.gpu
VS_MAMBA = {torch.float32: (2e-4, 2e-3), torch.bfloat16: (2e-2, 5e-2)}
REVERSE = (False, True)


def rel_err(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-3)).item()


def mamba_tolerances(dtype, has_z=True):
    """name -> (rtol, atol), from mamba-ssm's test_selective_scan."""
    rtol, atol = (6e-4, 2e-3) if dtype == torch.float32 else (3e-2, 5e-2)
    rtolw, atolw = (max(1e-3, rtol), max(1e-3, atol)) if has_z else (1e-3, 1e-3)
    return {
        "y": (rtol, atol),
        "u": (2 * rtol, 2 * atol),
        "delta": (5 * rtol, 10 * atol),
        "A": (rtolw, 5 * atolw),
        "B": (rtol, atol),
        "C": (rtol, atol),
        "D": (rtolw, atolw),
        "z": (rtolw, atolw),
        "delta_bias": (rtolw, atolw),
    }


@pytest.fixture(autouse=True)
def _need_kernels():
    if not mamba_kernels_available():
        pytest.skip("mamba-ssm's kernels do not import here")


def scan_inputs(batch, dim, length, dtype, d_state=16, has_z=True):
    """mamba-ssm's test distributions, two sets, in the mixer's layout."""
    dev = "cuda"
    return dict(
        u=torch.randn(2, batch, length, dim, device=dev, dtype=dtype),
        delta=(0.5 * torch.rand(2, batch, length, dim, device=dev)).to(dtype),
        A=-0.5 * torch.rand(2, dim, d_state, device=dev),
        B=torch.randn(2, batch, length, d_state, device=dev, dtype=dtype),
        C=torch.randn(2, batch, length, d_state, device=dev, dtype=dtype),
        D=torch.randn(2, dim, device=dev),
        z=torch.randn(batch, length, dim, device=dev, dtype=dtype) if has_z else None,
        delta_bias=0.5 * torch.rand(2, dim, device=dev),
    )


def run_scan(scan, inputs, grad_y):
    leaves = {k: v.detach().clone().requires_grad_() for k, v in inputs.items() if v is not None}
    y = scan({**inputs, **leaves})
    grads = torch.autograd.grad(y, list(leaves.values()), grad_y)
    return {"y": y, **dict(zip(leaves, grads))}


def test_triton_is_the_default_on_cuda():
    assert resolve_backend(torch.zeros(1, device="cuda")) == "triton"
    assert resolve_backend(torch.zeros(1, device="cuda"), "mamba") == "mamba"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("length", [1, 129, 513, 2049])
@pytest.mark.parametrize("has_z", [True, False])
@pytest.mark.parametrize(
    "launch",
    [
        "16 channels, one chunk",
        "32 channels, chunks",
        "32 channels, 8 of them masked",
        "rows of B and C a state a lane, 8 channels masked",
        "Triton's layout",
        "the defaults",
        "the defaults, an fp32 scratch, the last tile not kept",
    ],
)
def test_triton_scan_against_reference_and_mamba(dtype, length, has_z, launch):
    # the kinds of launch default_tilings picks and the sweep times: 32 channels a lane each (dB and
    # dC summed by the warp reduce-scatter, masked lanes included), Triton's layout (4 states x 4
    # channels a thread), 16 channels, with and without chunks
    dim, tiling = 64, None  # None: default_tilings
    if launch == "16 channels, one chunk":
        tiling = (ScanTiling(block_d=16, min_programs=1), ScanTiling(block_d=16, min_programs=1, max_registers=168))
    elif launch == "32 channels, chunks":
        tiling = ScanTiling(block_d=32, min_programs=4096)
    elif launch == "32 channels, 8 of them masked":
        dim, tiling = 56, ScanTiling(block_d=32, min_programs=4096)
    elif launch == "rows of B and C a state a lane, 8 channels masked":  # ScanTiling.bc_lanes, both kernels
        dim, tiling = 56, ScanTiling(block_d=32, min_programs=4096, bc_lanes=True)
    elif launch == "Triton's layout":
        tiling = ScanTiling(block_d=32, lane_states=False)
    elif launch == "the defaults, an fp32 scratch, the last tile not kept":  # the 16-bit defaults' other half
        tiling = tuple(replace(t, scratch="fp32", keep_last_tile=False) for t in default_tilings(2, 2, dim, length))
    inputs = scan_inputs(2, dim, length, dtype, has_z=has_z)
    grad_y = torch.randn(2, 2, length, dim, device="cuda", dtype=dtype)
    ours = run_scan(lambda a: selective_scan_triton(**a, reverse=REVERSE, tiling=tiling), inputs, grad_y)
    mamba = run_scan(lambda a: selective_scan(**a, reverse=REVERSE, backend="mamba"), inputs, grad_y)
    ref = run_scan(lambda a: stacked_scan_reference(**a, reverse=REVERSE), inputs, grad_y.double())
    assert ours["y"].dtype == dtype
    for name, (rtol, atol) in mamba_tolerances(dtype, has_z).items():
        if name not in ours:
            continue
        expected = ref[name].to(ours[name].dtype)
        assert torch.allclose(ours[name], expected, rtol=rtol, atol=atol), (name, rel_err(ours[name], expected))
        if name == "y":  # the test's own check: mamba-ssm's output meets its tolerance too
            assert torch.allclose(mamba[name], expected, rtol=rtol, atol=atol)
        fwd_tol, grad_tol = VS_MAMBA[dtype]
        assert rel_err(ours[name], mamba[name]) < (fwd_tol if name == "y" else grad_tol), name


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_conv_matches_causal_conv1d(dtype):
    x = torch.randn(3, 257, 96, device="cuda", dtype=dtype)
    weight, bias = torch.randn(2, 96, 4, device="cuda"), torch.randn(2, 96, device="cuda")
    grad = torch.randn(2, 3, 257, 96, device="cuda", dtype=dtype)
    results = {}
    for backend in ("triton", "mamba"):
        leaves = [t.detach().clone().requires_grad_() for t in (x, weight, bias)]
        u = conv1d_silu(*leaves, REVERSE, backend=backend)
        results[backend] = (u, *torch.autograd.grad(u, leaves, grad))
    fwd_tol, grad_tol = VS_MAMBA[dtype]
    for i, name in enumerate(["u", "x", "weight", "bias"]):
        assert rel_err(results["triton"][i], results["mamba"][i]) < (fwd_tol if i == 0 else grad_tol), name


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("reverse", [False, True])
def test_triton_and_mamba_mixer_agree(dtype, reverse, monkeypatch):
    mixer = BiMambaMixer(64, backward_dt_init="mamba").cuda()
    hidden = torch.randn(2, 300, 64, device="cuda")
    assert_backends_agree(mixer, lambda: mixer(hidden, reverse=reverse), dtype, monkeypatch)


def assert_backends_agree(module, forward, dtype, monkeypatch, backends=("triton", "mamba")):
    """forward() and the gradients of every parameter of module, on the first backend against the
    second, under bf16 autocast for dtype bf16, within VS_MAMBA's tolerances."""
    fwd_tol, grad_tol = VS_MAMBA[dtype]
    results = {}
    for backend in backends:
        monkeypatch.setenv("SSAMBA_KERNELS", backend)
        module.zero_grad()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            out = forward()
        out.float().pow(2).mean().backward()
        grads = {k: p.grad.clone() for k, p in module.named_parameters() if p.grad is not None}
        results[backend] = (out.detach(), grads)
    (ours, our_grads), (ref, ref_grads) = (results[b] for b in backends)
    assert rel_err(ours, ref) < fwd_tol
    assert our_grads.keys() == ref_grads.keys()
    for name, g in our_grads.items():
        assert rel_err(g, ref_grads[name]) < grad_tol, name


@pytest.mark.parametrize("frames", [1024, 8192])  # 512 tokens and 4096 (chunked)
def test_triton_and_mamba_encoder_agree_in_bf16(frames, monkeypatch):
    encoder = make_encoder("ssamba", "tiny", depth=4, target_length=frames).cuda().eval()
    x = torch.randn(2, 1, 128, frames, device="cuda")
    outs = {}
    for backend in ("triton", "mamba"):
        monkeypatch.setenv("SSAMBA_KERNELS", backend)
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            outs[backend] = encoder(x)
    assert rel_err(outs["triton"], outs["mamba"]) < 3e-2


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_and_mamba_encoder_gradients_agree(dtype, monkeypatch):
    """Training through the whole encoder: the fused mixer and the fused add + norm (Triton) against
    mamba-ssm's kernels with torch's add and norm, output and every parameter's gradient."""
    torch.manual_seed(0)
    encoder = make_encoder("ssamba", "tiny", depth=4, target_length=512, drop_path_rate=0.0).cuda().train()
    x = torch.randn(3, 1, 128, 512, device="cuda")
    assert_backends_agree(encoder, lambda: encoder(x), dtype, monkeypatch)


def test_ssl_step_on_cuda_with_seeded_masks():
    from src.models.components.masking import make_mask
    from src.models.ssl_module import SSLModule

    masks = [make_mask("cluster", 4, (8, 16), 60, seed=123, device=torch.device("cuda")) for _ in range(2)]
    assert masks[0].is_cuda and torch.equal(masks[0], masks[1])  # the same seed draws the same masks
    encoder = dict(backbone="ssamba", size="tiny", depth=2, target_length=256, drop_path_rate=0.0)
    module = SSLModule(encoder, mask_patches=60).cuda()
    spec = torch.randn(2, 1, 128, 256, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        first = module.losses(spec, 60, seed=123)
        again = module.losses(spec, 60, seed=123)
    torch.testing.assert_close(first["loss"], again["loss"])
    first["loss"].backward()
    assert module.encoder.mask_embed.grad is not None
    assert all(torch.isfinite(p.grad).all() for p in module.parameters() if p.grad is not None)
