"""The selective scan (Mamba's S6 recurrence) of a bimamba-v2 layer and the depthwise conv that
feeds it, and the one place that chooses their implementation.

Layout: the S parameter sets of a layer (bimamba-v2: the forward and the backward direction) stacked
in front, in the (B, L, ...) order the projections produce:
    x: (B, L, E), the conv's input, shared     conv weight: (S, E, K)   conv bias: (S, E)
    u, delta: (S, B, L, E)   B, C: (S, B, L, N)   z: (B, L, E), shared   A: (S, E, N)   D, delta_bias: (S, E)
    reverse: S bools; a reversed set runs from the last step to the first (the anti-causal conv and a
    right-to-left scan), which is what the official code gets by flipping the sequence.
    y_t = (C_t . h_t + D u_t) * silu(z_t),  h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t,
    dt_t = softplus(delta_t + delta_bias);  -> y: (S, B, L, E) in u's dtype.

Backends, from the `backend=` argument, else $SSAMBA_KERNELS, else "auto":
- "triton": the project's kernels (scan_kernels.py via scan_triton.py, conv_triton.py): every set
  in one launch per pass, straight on this layout, forward and backward. "auto" picks it on CUDA.
- "mamba": mamba-ssm's selective_scan_fn and causal-conv1d, one launch per set on the (B, E, L)
  layout they want: inputs transposed, reversed sets flipped, results flipped and transposed back.
  The reference the Triton kernels are tested and benchmarked against.
- "portable": plain PyTorch (blocks of steps, one fused multiply-add per step, differentiable);
  "auto" picks it on the CPU.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from src.utils.errors import UserError

BACKENDS = ("auto", "triton", "mamba", "portable")
ENV_VAR = "SSAMBA_KERNELS"
BLOCK_STATES = 2**21  # portable scan: states per block of time steps (8 MiB of fp32)
INSTALL_HINT = (
    "install mamba-ssm and causal-conv1d with `pip install -e '.[cuda]' --no-build-isolation` "
    "(built for your torch and CUDA)"
)


@functools.cache
def _mamba_ops() -> tuple[Callable, Callable] | None:
    try:
        from causal_conv1d import causal_conv1d_fn
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception:  # ImportError, or a wheel built for another torch/CUDA
        return None
    return selective_scan_fn, causal_conv1d_fn


@functools.cache
def _triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


def mamba_kernels_available() -> bool:
    return torch.cuda.is_available() and _mamba_ops() is not None


def resolve_backend(x: Tensor, backend: str | None = None) -> str:
    """ "triton", "mamba" or "portable" for tensors on x's device: the argument, else $SSAMBA_KERNELS,
    else auto (Triton on CUDA, portable elsewhere). Triton also runs on the CPU under
    TRITON_INTERPRET=1 (its interpreter: for tests)."""
    choice = backend or os.environ.get(ENV_VAR, "auto")
    if choice not in BACKENDS:
        raise UserError(f"unknown kernel backend {choice!r} (from backend= or ${ENV_VAR}); use one of {BACKENDS}")
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    triton_ok = _triton_importable() and (x.is_cuda or interpreted)
    if choice == "auto":
        return "triton" if x.is_cuda and triton_ok else "portable"
    if choice == "triton" and not triton_ok:
        where = "triton does not import" if x.is_cuda else "the tensors are on the CPU"
        raise RuntimeError(f"the Triton kernels were requested but {where}; use {ENV_VAR}=portable")
    if choice == "mamba" and not (x.is_cuda and _mamba_ops() is not None):
        where = "the tensors are on the CPU" if not x.is_cuda else "mamba-ssm or causal-conv1d does not import"
        raise RuntimeError(f"mamba-ssm's kernels were requested but {where}; {INSTALL_HINT}, or use {ENV_VAR}=triton")
    return choice


def depthwise_conv_silu(
    x: Tensor, weight: Tensor, bias: Tensor, reverse: Sequence[bool], backend: str | None = None
) -> Tensor:
    """silu(depthwise conv) per set: x (B, L, E), weight (S, E, K), bias (S, E) -> (S, B, L, E);
    causal for a set that runs forward, anti-causal for a reversed one."""
    chosen = resolve_backend(x, backend)
    if chosen == "triton":
        from src.models.components.conv_triton import depthwise_conv_silu_triton

        return depthwise_conv_silu_triton(x, weight, bias, tuple(reverse))
    outs = []
    for s, backwards in enumerate(reverse):
        xs = _scan_order(x, backwards)  # (B, E, L) in this set's order
        w, b = weight[s].to(x.dtype), bias[s].to(x.dtype)
        if chosen == "mamba":
            u = _mamba_ops()[1](xs.contiguous(), w, b, activation="silu")
        else:
            u = F.silu(F.conv1d(xs, w.unsqueeze(1), b, padding=w.shape[-1] - 1, groups=w.shape[0])[..., : x.shape[1]])
        outs.append(_time_order(u, backwards))
    return torch.stack(outs)


def selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    z: Tensor | None,
    delta_bias: Tensor | None,
    reverse: Sequence[bool],
    delta_softplus: bool = True,
    backend: str | None = None,
) -> Tensor:
    """The gated selective scan of every set: shapes in the module docstring; returns (S, B, L, E)."""
    if A.is_complex():
        raise ValueError("complex A is not supported; SSAMBA uses real A = -exp(A_log)")
    chosen = resolve_backend(u, backend)
    if chosen == "triton":
        from src.models.components.scan_triton import selective_scan_triton

        return selective_scan_triton(u, delta, A, B, C, D, z, delta_bias, tuple(reverse), delta_softplus)
    scan_bel = _mamba_ops()[0] if chosen == "mamba" else scan_portable_bel
    ys = []
    for s, backwards in enumerate(reverse):
        u_s, delta_s, B_s, C_s, z_s = (
            None if t is None else _scan_order(t, backwards).contiguous() for t in (u[s], delta[s], B[s], C[s], z)
        )
        y = scan_bel(
            u_s, delta_s, A[s].float(), B_s, C_s, None if D is None else D[s].float(), z_s,
            None if delta_bias is None else delta_bias[s].float(), delta_softplus,
        )  # fmt: skip
        ys.append(_time_order(y, backwards))
    return torch.stack(ys)


def _scan_order(x: Tensor, backwards: bool) -> Tensor:
    """(B, L, X) -> (B, X, L) in a set's scan order."""
    x = x.transpose(1, 2)
    return x.flip(-1) if backwards else x


def _time_order(x: Tensor, backwards: bool) -> Tensor:
    """The inverse of _scan_order: (B, X, L) in scan order -> (B, L, X)."""
    return (x.flip(-1) if backwards else x).transpose(1, 2)


class BlockRecurrence(torch.autograd.Function):
    """states[t] = inputs[t] + decay[t] * states[t - 1] over a block's steps, from state0: inputs,
    decay (T, B, E, N), state0 (B, E, N). The backward runs the same recurrence in reverse, one fused
    multiply-add per step, and forms the decays' gradients in one product: autograd through the
    steps would record a node per step (and an indexing's backward fills a zero tensor of the whole
    block, quadratic in the steps)."""

    @staticmethod
    def forward(ctx, inputs: Tensor, decay: Tensor, state0: Tensor) -> Tensor:
        steps, previous = [], state0
        for step_input, step_decay in zip(inputs, decay):  # a fresh tensor per step, stacked once:
            previous = torch.addcmul(step_input, step_decay, previous)  # faster than writing into slices
            steps.append(previous)
        states = torch.stack(steps)
        ctx.save_for_backward(decay, state0, states)
        return states

    @staticmethod
    def backward(ctx, grad_states: Tensor):
        decay, state0, states = ctx.saved_tensors
        grad_inputs = torch.empty_like(grad_states)  # dL/dstates[t], through every later step too
        grad_inputs[-1] = grad_states[-1]
        for t in range(len(grad_states) - 2, -1, -1):
            torch.addcmul(grad_states[t], decay[t + 1], grad_inputs[t + 1], out=grad_inputs[t])
        previous = torch.cat([state0[None], states[:-1]])  # states[t - 1]
        return grad_inputs, grad_inputs * previous, decay[0] * grad_inputs[0]


def scan_portable_bel(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    block_states: int = BLOCK_STATES,
) -> Tensor:
    """One set in mamba-ssm's layout (u, delta, z: (B, E, L); B, C: (B, N, L); A: (E, N)), scanned
    left to right. Time runs in blocks: for a block of steps the decays exp(dt A) and the inputs
    dt u B are computed at once, vectorised over steps, channels and states; then each step is one
    fused multiply-add on the (B, E, N) state; then the block's outputs are read through C in one
    batched product. Blocks hold about block_states states, which bounds the memory; autograd works
    through every step (the CPU training path)."""
    out_dtype = u.dtype
    batch, dim, length = u.shape
    u, delta, A = u.float(), delta.float(), A.float()
    if delta_bias is not None:
        delta = delta + delta_bias.float()[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    # time-major and contiguous: products of permuted views keep their strides, and a step's slice
    # of a strided block takes elementwise ops' slow path
    delta_t = delta.permute(2, 0, 1).contiguous()  # (L, B, E)
    delta_u_t = (delta * u).permute(2, 0, 1).contiguous()  # (L, B, E)
    B_t, C_t = (x.float().permute(2, 0, 1).contiguous() for x in (B, C))  # (L, B, N)
    steps_per_block = max(1, block_states // (batch * dim * A.shape[-1]))
    state = u.new_zeros(batch, dim, A.shape[-1])  # (B, E, N)
    ys = []
    for t0 in range(0, length, steps_per_block):
        t1 = min(length, t0 + steps_per_block)
        decay = torch.exp(delta_t[t0:t1, :, :, None] * A)  # (T, B, E, N)
        inputs = delta_u_t[t0:t1, :, :, None] * B_t[t0:t1, :, None, :]  # (T, B, E, N)
        states = BlockRecurrence.apply(inputs, decay, state)  # (T, B, E, N)
        state = states[-1]
        ys.append(states.flatten(0, 1) @ C_t[t0:t1].flatten(0, 1)[..., None])  # (T * B, E, 1)
    y = torch.cat(ys).view(length, batch, dim).permute(1, 2, 0)  # (B, E, L)
    if D is not None:
        y = y + D.float()[:, None] * u
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(out_dtype)
