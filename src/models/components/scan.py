"""Selective scan (Mamba's S6 recurrence) and the causal depthwise conv that feeds it.

This is the one place that decides which implementation runs:
- "fused": the CUDA kernels of mamba-ssm (selective_scan_fn) and causal-conv1d, used whenever the
  tensors are on CUDA and the packages import;
- "portable": the same math in plain PyTorch (fp32 accumulation, differentiable, chunked), used on
  CPU and wherever the kernels are missing.
The choice can be forced with the `backend=` argument or the SSAMBA_KERNELS environment variable
(auto | fused | portable | triton), e.g. to compare the paths in tests and benchmarks. Inference
without autograd may also run both directions of a mixer in one Triton launch (triton_scan.py,
see use_bidirectional_kernel).

Shapes follow mamba-ssm's selective_scan_fn:
    u, delta, z: (B, D, L)   A: (D, N) real
    B, C: (D, N) time-invariant, (B, N, L) time-varying, or (B, G, N, L) time-varying in G groups
    D, delta_bias: (D,)
    returns y (B, D, L) in u's dtype, and the final state (B, D, N) in fp32 if return_last_state.
"""

from __future__ import annotations

import functools
import math
import os

import torch
import torch.nn.functional as F
from torch import Tensor

BACKENDS = ("auto", "fused", "portable", "triton")  # triton: the one-launch inference scan
ENV_VAR = "SSAMBA_KERNELS"
SINGLE_PASS_MAX = 128  # portable scan: sequences up to this length run in one chunk
ONE_LAUNCH_MAX_TOKENS = 2048  # auto: the one-launch Triton scan up to this length, mamba-ssm's above
INSTALL_HINT = (
    "install the CUDA kernels with `pip install -e '.[cuda]' --no-build-isolation` "
    "(mamba-ssm and causal-conv1d matching your torch and CUDA)"
)


@functools.cache
def _fused_selective_scan():
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception:  # ImportError, or a wheel built for another torch/CUDA
        return None
    return selective_scan_fn


@functools.cache
def _fused_causal_conv1d():
    try:
        from causal_conv1d import causal_conv1d_fn
    except Exception:
        return None
    return causal_conv1d_fn


def fused_kernels_available() -> bool:
    return torch.cuda.is_available() and _fused_selective_scan() is not None


def resolve_backend(x: Tensor, backend: str | None = None) -> str:
    """'fused' or 'portable' for a tensor, honouring the argument, then SSAMBA_KERNELS."""
    choice = backend or os.environ.get(ENV_VAR, "auto")
    if choice not in BACKENDS:
        raise ValueError(f"unknown kernel backend {choice!r} (from backend= or ${ENV_VAR}); use one of {BACKENDS}")
    if choice == "portable":
        return "portable"
    choice = "auto" if choice == "triton" else choice  # training under "triton" uses the fused kernels
    fused_ok = x.is_cuda and _fused_selective_scan() is not None
    if choice == "fused" and not fused_ok:
        where = "the tensors are on the CPU" if not x.is_cuda else "mamba-ssm does not import"
        raise RuntimeError(f"fused kernels were requested but {where}; {INSTALL_HINT}, or use {ENV_VAR}=portable")
    return "fused" if fused_ok else "portable"


@functools.cache
def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


def use_bidirectional_kernel(x: Tensor) -> bool:
    """Whether a mixer runs both directions in one Triton launch (triton_scan.py). It has no
    backward, so only without autograd, on CUDA. Under SSAMBA_KERNELS=auto only up to
    ONE_LAUNCH_MAX_TOKENS, where it was measured at least as fast as the per-direction mamba-ssm
    kernels (docs/benchmarks.md); SSAMBA_KERNELS=triton forces it at every length."""
    choice = os.environ.get(ENV_VAR, "auto")
    if choice not in ("auto", "triton") or not x.is_cuda or torch.is_grad_enabled() or not _triton_available():
        return False
    return choice == "triton" or x.shape[1] <= ONE_LAUNCH_MAX_TOKENS


def causal_conv1d(x: Tensor, weight: Tensor, bias: Tensor | None, backend: str | None = None) -> Tensor:
    """silu(depthwise causal conv1d): x (B, D, L), weight (D, 1, K) or (D, K) -> (B, D, L)."""
    weight = weight.reshape(weight.shape[0], -1)  # (D, K)
    fused_conv = _fused_causal_conv1d()
    if resolve_backend(x, backend) == "fused" and fused_conv is not None:
        return fused_conv(x, weight, bias, activation="silu")
    width = weight.shape[1]
    y = F.conv1d(x, weight.unsqueeze(1), bias, padding=width - 1, groups=x.shape[1])
    return F.silu(y[..., : x.shape[-1]])


def selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    backend: str | None = None,
):
    """y_t = C_t . s_t + D u_t with s_t = exp(delta_t A) s_{t-1} + delta_t B_t u_t, gated by silu(z)."""
    if A.is_complex():
        raise ValueError("complex A is not supported; SSAMBA uses real A = -exp(A_log)")
    if resolve_backend(u, backend) == "fused":
        return _fused_selective_scan()(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    return selective_scan_portable(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)


def selective_scan_portable(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    chunk_size: int | None = None,
):
    """The recurrence in chunks of ~sqrt(L) steps, all chunks advanced together: about 2 sqrt(L)
    vectorised steps instead of L, on tensors of (B, D, n_chunks, N), never (B, D, L, N).
    Sequences of at most SINGLE_PASS_MAX steps run as one chunk (pass 2 alone).
      pass 1: scan every chunk from a zero state; keep only its final state;
      carry:  walk the chunk ends to get the true state entering each chunk;
      pass 2: scan every chunk again from that state, reading out y at each step."""
    out_dtype = u.dtype
    batch, dim, length = u.shape
    u, delta, A = u.float(), delta.float(), A.float()
    if delta_bias is not None:
        delta = delta + delta_bias.float()[:, None]
    if delta_softplus:
        delta = F.softplus(delta)

    chunk = chunk_size or _default_chunk(length)
    n_chunks = -(-length // chunk)
    pad = n_chunks * chunk - length  # padded steps have delta = 0: decay 1, no input

    def steps(x: Tensor) -> Tensor:  # (..., L) -> (chunk, ..., n_chunks): step t of every chunk
        x = F.pad(x, (0, pad)).unflatten(-1, (n_chunks, chunk))
        return x.movedim(-1, 0).contiguous()

    delta_t = steps(delta).unsqueeze(-1)  # (T, B, D, n_chunks, 1)
    delta_u_t = steps(delta * u).unsqueeze(-1)  # (T, B, D, n_chunks, 1)
    A = A[None, :, None, :]  # (1, D, 1, N)
    B_at, C_at = _per_step(B, dim, steps), _per_step(C, dim, steps)

    def step(state: Tensor, t: int) -> Tensor:
        return torch.exp(delta_t[t] * A) * state + delta_u_t[t] * B_at(t)  # (B, D, n_chunks, N)

    state = u.new_zeros(batch, dim, n_chunks, A.shape[-1])
    if n_chunks > 1:
        # pass 1: chunk-final states from a zero start
        for t in range(chunk):
            state = step(state, t)
        # carry: state entering chunk c = decay(c-1) * entering(c-1) + local final(c-1)
        chunk_decay = torch.exp(delta_t.sum(0) * A)  # (B, D, n_chunks, N)
        carry = torch.zeros_like(state[:, :, 0])
        entering = []
        for c in range(n_chunks):
            entering.append(carry)
            carry = chunk_decay[:, :, c] * carry + state[:, :, c]
        state = torch.stack(entering, dim=2)
    # pass 2: the true states, read out through C
    ys = []
    for t in range(chunk):
        state = step(state, t)
        ys.append((state * C_at(t)).sum(-1))  # (B, D, n_chunks)
    y = torch.stack(ys, dim=-1).flatten(-2)[..., :length]  # (B, D, L)

    if D is not None:
        y = y + D.float()[:, None] * u
    if z is not None:
        y = y * F.silu(z.float())
    y = y.to(out_dtype)
    if return_last_state:
        return y, state[:, :, -1]
    return y


def _default_chunk(length: int) -> int:
    """Short sequences: one chunk (a single pass; the steps are cheap). Long ones: ~sqrt(L) steps
    per chunk, so two passes of sqrt(L) steps replace L sequential steps."""
    if length <= SINGLE_PASS_MAX:
        return max(length, 1)
    return math.isqrt(length - 1) + 1


def _per_step(M: Tensor, dim: int, steps):
    """B or C as a function of the step t, broadcastable to (B, D, n_chunks, N)."""
    if M.dim() == 2:  # (D, N): time-invariant
        constant = M.float()[None, :, None, :]
        return lambda t: constant
    grouped = M.float() if M.dim() == 4 else M.float().unsqueeze(1)  # (B, G, N, L)
    per_group = dim // grouped.shape[1]
    at = steps(grouped).transpose(-1, -2)  # (T, B, G, n_chunks, N)
    if per_group == dim:
        return lambda t: at[t]
    return lambda t: at[t].repeat_interleave(per_group, dim=1)
