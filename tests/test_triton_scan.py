"""The one-launch bidirectional scan (Triton) against the portable scan: compiled on a GPU machine,
interpreted (TRITON_INTERPRET=1, numpy) elsewhere."""

import pytest
import torch

from src.models.components.bimamba import BiMambaMixer
from src.models.components.scan import selective_scan_portable
from src.models.components.triton_scan import bidirectional_scan
from tests.helpers.triton_cpu import INTERPRETED  # conftest switched the interpreter on without a GPU

DEVICE = "cpu" if INTERPRETED else "cuda"


@pytest.mark.parametrize("length,chunking", [(37, {}), (37, dict(chunk=8, single_chunk_max=4)), (1, {})])
def test_both_directions_match_the_portable_scan(length, chunking):
    S, b, d, n = 2, 2, 12, 4
    u, dt = torch.randn(S, b, d, length), 0.5 * torch.randn(S, b, d, length)
    B, C, z = torch.randn(S, b, n, length), torch.randn(S, b, n, length), torch.randn(b, d, length)
    A, D, bias = -3 * torch.rand(S, d, n), torch.randn(S, d), 0.5 * torch.randn(S, d)
    rev = torch.tensor([0, 1], dtype=torch.int32)
    args = [x.to(DEVICE) for x in (u, dt, B, C, z, A, D, bias, rev)]
    out = bidirectional_scan(*args, **chunking).cpu()
    for s in range(S):
        flip = (lambda x: x.flip(-1)) if rev[s] else (lambda x: x)
        ref = selective_scan_portable(
            flip(u[s]), flip(dt[s]), A[s], flip(B[s]), flip(C[s]), D[s], flip(z), bias[s], True
        )
        torch.testing.assert_close(out[s], flip(ref), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("reverse", [False, True])
def test_one_launch_mixer_equals_the_flipping_mixer(reverse):
    mixer = BiMambaMixer(16, d_state=4, backward_dt_init="mamba").to(DEVICE).eval()
    hidden = torch.randn(2, 23, 16, device=DEVICE)
    with torch.no_grad():
        expected = mixer.forward(hidden.flip(1)).flip(1) if reverse else mixer.forward(hidden)
        if DEVICE == "cuda":  # forward() itself takes the one-launch path on CUDA; force the other
            with pytest.MonkeyPatch.context() as mp:
                mp.setenv("SSAMBA_KERNELS", "portable")
                expected = mixer.forward(hidden.flip(1)).flip(1) if reverse else mixer.forward(hidden)
        got = mixer._forward_one_launch(hidden, reverse)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
