import pytest
import torch

from src.kernels import backend, resolve_backend, selective_scan
from src.kernels.portable import BlockRecurrence, scan_portable_bel
from tests.helpers.reference import selective_scan_reference, stacked_scan_reference

CASES = [
    # sets' directions, batch, channels, states, length, z, D, delta_bias
    ((False, True), 2, 8, 4, 37, True, True, True),
    ((True,), 1, 6, 16, 1, False, False, False),
    ((True, False), 2, 8, 4, 101, True, True, False),
    ((False, True), 1, 4, 2, 257, True, True, True),  # longer than one portable chunk
]


def make_inputs(reverse, batch, dim, d_state, length, with_z, with_D, with_bias, dtype=torch.float32):
    sets = len(reverse)
    inputs = dict(
        u=torch.randn(sets, batch, length, dim),
        delta=torch.randn(sets, batch, length, dim) * 0.5,
        A=-torch.rand(sets, dim, d_state) * 4 - 0.1,
        B=torch.randn(sets, batch, length, d_state),
        C=torch.randn(sets, batch, length, d_state),
        D=torch.randn(sets, dim) if with_D else None,
        z=torch.randn(batch, length, dim) if with_z else None,
        delta_bias=torch.randn(sets, dim) * 0.5 if with_bias else None,
    )
    return {k: (v.to(dtype).requires_grad_() if v is not None else None) for k, v in inputs.items()}


@pytest.mark.parametrize("case", CASES)
def test_portable_scan_matches_float64_reference_forward_and_backward(case):
    reverse = case[0]
    inputs = make_inputs(*case)
    y = selective_scan(**inputs, reverse=reverse, backend="portable")
    y_ref = stacked_scan_reference(**inputs, reverse=reverse)
    torch.testing.assert_close(y.double(), y_ref, rtol=1e-4, atol=1e-5)
    grad_out = torch.randn_like(y)
    leaves = [v for v in inputs.values() if v is not None]
    grads = torch.autograd.grad(y, leaves, grad_out)
    grads_ref = torch.autograd.grad(y_ref, leaves, grad_out.double())
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g.double(), g_ref.double(), rtol=1e-4, atol=1e-4)


def one_set(length=77):
    """Inputs of scan_portable_bel: one set in mamba-ssm's (B, E, L) layout."""
    return dict(
        u=torch.randn(2, 4, length),
        delta=0.5 * torch.randn(2, 4, length),
        A=-torch.rand(4, 8) * 4 - 0.1,
        B=torch.randn(2, 8, length),
        C=torch.randn(2, 8, length),
        D=torch.randn(4),
        z=torch.randn(2, 4, length),
        delta_bias=0.5 * torch.randn(4),
    )


@pytest.mark.parametrize("steps_per_block", [1, 3, 16, 200])
@pytest.mark.parametrize("grad", [False, True])
def test_portable_scan_does_not_depend_on_its_blocks(steps_per_block, grad):
    """Blocks of 1, 3, 16 steps and one block of the whole sequence, with autograd on (a state per
    step kept) and off (in place): the same outputs as the float64 reference."""
    inputs = one_set()
    expected, _ = selective_scan_reference(**inputs, delta_softplus=True)
    with torch.set_grad_enabled(grad):
        if grad:
            inputs["u"].requires_grad_()
        got = scan_portable_bel(**inputs, delta_softplus=True, block_states=steps_per_block * 2 * 4 * 8)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)


def test_portable_scan_keeps_input_dtype_and_accumulates_in_fp32():
    inputs = {k: v.bfloat16() if v.dim() == 3 else v for k, v in one_set(50).items()}
    y = scan_portable_bel(**inputs, delta_softplus=True)
    assert y.dtype == torch.bfloat16
    ref, _ = selective_scan_reference(**inputs, delta_softplus=True)
    torch.testing.assert_close(y.double(), ref, rtol=2e-2, atol=2e-2)


def test_state_decays_without_overflow_on_long_sequences():
    # large steps make exp(-cumsum) tricks overflow; the scan must stay finite and exact
    inputs = one_set(3000)
    inputs["delta"].fill_(5.0)
    inputs["A"] = -torch.arange(1, 9.0).repeat(4, 1)
    del inputs["z"], inputs["delta_bias"]
    y = scan_portable_bel(**inputs)
    y_ref, _ = selective_scan_reference(**inputs)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y.double(), y_ref, rtol=1e-4, atol=1e-5)


def test_backend_override_by_argument_and_environment(monkeypatch):
    x = torch.zeros(1, 2, 3)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # as on a plain CPU machine
    assert resolve_backend(x) == "portable"  # CPU tensors take the portable path
    monkeypatch.setenv(backend.ENV_VAR, "portable")
    assert resolve_backend(x) == "portable"
    monkeypatch.setenv(backend.ENV_VAR, "mamba")
    with pytest.raises(RuntimeError, match="mamba-ssm's kernels were requested but the tensors are on the CPU"):
        resolve_backend(x)
    monkeypatch.setenv(backend.ENV_VAR, "triton")
    with pytest.raises(RuntimeError, match="the Triton kernels were requested but the tensors are on the CPU"):
        resolve_backend(x)
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # Triton's interpreter runs them on the CPU
    assert resolve_backend(x) == "triton"
    assert resolve_backend(x, "portable") == "portable"  # the argument wins over the environment
    monkeypatch.setenv(backend.ENV_VAR, "fastest")
    with pytest.raises(ValueError, match="unknown kernel backend 'fastest'"):
        resolve_backend(x)


def test_complex_A_is_refused():
    inputs = {k: v.detach() if v is not None else None for k, v in make_inputs(*CASES[1]).items()}
    inputs["A"] = torch.complex(inputs["A"], inputs["A"])
    with pytest.raises(ValueError, match="complex A"):
        selective_scan(**inputs, reverse=(True,))


@pytest.mark.parametrize("steps", [1, 2, 9])
def test_the_block_recurrence_backward_is_the_reverse_recurrence(steps):
    """The portable scan's training path: its own backward (one fused step each way, no autograd
    node per step) against numerical gradients in float64."""
    g = torch.Generator().manual_seed(steps)
    inputs = torch.randn(steps, 2, 3, 4, dtype=torch.float64, generator=g).requires_grad_()
    decay = torch.rand(steps, 2, 3, 4, dtype=torch.float64, generator=g).requires_grad_()
    state0 = torch.randn(2, 3, 4, dtype=torch.float64, generator=g).requires_grad_()
    assert torch.autograd.gradcheck(BlockRecurrence.apply, (inputs, decay, state0))
