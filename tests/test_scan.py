import pytest
import torch

from src.models.components import scan
from src.models.components.scan import resolve_backend, selective_scan, selective_scan_portable
from tests.helpers.reference import selective_scan_reference

CASES = [
    # batch, dim, d_state, length, groups (None: (B, N, L); 0: time-invariant (D, N)), z, D, delta_bias
    (2, 8, 4, 37, None, True, True, True),
    (1, 6, 16, 1, None, False, False, False),
    (2, 8, 4, 101, 2, True, True, False),
    (3, 4, 3, 64, 1, False, True, True),
    (2, 6, 5, 23, 0, True, False, True),
    (1, 4, 2, 257, None, True, True, True),
]


def make_inputs(batch, dim, d_state, length, groups, with_z, with_D, with_bias, dtype=torch.float32):
    def bc():
        if groups == 0:
            return torch.randn(dim, d_state)
        if groups is None:
            return torch.randn(batch, d_state, length)
        return torch.randn(batch, groups, d_state, length)

    inputs = dict(
        u=torch.randn(batch, dim, length),
        delta=torch.randn(batch, dim, length) * 0.5,
        A=-torch.rand(dim, d_state) * 4 - 0.1,
        B=bc(),
        C=bc(),
        D=torch.randn(dim) if with_D else None,
        z=torch.randn(batch, dim, length) if with_z else None,
        delta_bias=torch.randn(dim) * 0.5 if with_bias else None,
    )
    return {k: (v.to(dtype).requires_grad_() if v is not None else None) for k, v in inputs.items()}


def detached(inputs):
    return {k: (v.detach() if v is not None else None) for k, v in inputs.items()}


@pytest.mark.parametrize("case", CASES)
def test_portable_scan_matches_float64_reference_forward_and_backward(case):
    inputs = make_inputs(*case)
    y, last = selective_scan_portable(**inputs, delta_softplus=True, return_last_state=True)
    y_ref, last_ref = selective_scan_reference(**inputs, delta_softplus=True)
    torch.testing.assert_close(y.double(), y_ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(last.double(), last_ref, rtol=1e-4, atol=1e-5)

    grad_out = torch.randn_like(y)
    leaves = [v for v in inputs.values() if v is not None]
    grads = torch.autograd.grad(y, leaves, grad_out)
    grads_ref = torch.autograd.grad(y_ref, leaves, grad_out.double())
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g.double(), g_ref.double(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("chunk_size", [1, 3, 16, 200])
def test_portable_scan_does_not_depend_on_chunking(chunk_size):
    inputs = make_inputs(2, 4, 8, 77, None, True, True, True)
    expected = selective_scan_portable(**inputs, delta_softplus=True)
    got = selective_scan_portable(**inputs, delta_softplus=True, chunk_size=chunk_size)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_portable_scan_keeps_input_dtype_and_accumulates_in_fp32():
    inputs = make_inputs(2, 8, 4, 50, None, True, True, True)
    low = {k: (v.bfloat16() if v is not None else None) for k, v in detached(inputs).items()}
    y = selective_scan_portable(**low, delta_softplus=True)
    assert y.dtype == torch.bfloat16
    ref, _ = selective_scan_reference(**low, delta_softplus=True)
    torch.testing.assert_close(y.double(), ref, rtol=2e-2, atol=2e-2)


def test_state_decays_without_overflow_on_long_sequences():
    # large steps make exp(-cumsum) tricks overflow; the chunked scan must stay finite and exact
    inputs = make_inputs(1, 4, 16, 3000, None, False, True, False)
    with torch.no_grad():
        inputs["delta"].fill_(5.0)
        inputs["A"].copy_(-torch.arange(1, 17.0).repeat(4, 1))
    y = selective_scan_portable(**inputs)
    y_ref, _ = selective_scan_reference(**inputs)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y.double(), y_ref, rtol=1e-4, atol=1e-5)


def test_backend_override_by_argument_and_environment(monkeypatch):
    x = torch.zeros(1, 2, 3)
    assert resolve_backend(x, "portable") == "portable"
    assert resolve_backend(x) == "portable"  # CPU tensors never take the fused path
    monkeypatch.setenv(scan.ENV_VAR, "portable")
    assert resolve_backend(x) == "portable"
    monkeypatch.setenv(scan.ENV_VAR, "fused")
    with pytest.raises(RuntimeError, match="fused kernels were requested but the tensors are on the CPU"):
        resolve_backend(x)
    monkeypatch.setenv(scan.ENV_VAR, "fastest")
    with pytest.raises(ValueError, match="unknown kernel backend 'fastest'"):
        resolve_backend(x)


def test_dispatcher_runs_portable_path_on_cpu():
    inputs = detached(make_inputs(2, 4, 4, 20, None, True, True, True))
    torch.testing.assert_close(
        selective_scan(**inputs, delta_softplus=True), selective_scan_portable(**inputs, delta_softplus=True)
    )


def test_complex_A_is_refused():
    inputs = detached(make_inputs(1, 2, 2, 4, None, False, False, False))
    inputs["A"] = torch.complex(inputs["A"], inputs["A"])
    with pytest.raises(ValueError, match="complex A"):
        selective_scan(**inputs)
