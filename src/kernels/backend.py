"""The one place that chooses which implementation runs the kernels: from the `backend=` argument,
else $SSAMBA_KERNELS, else "auto".

- "triton": the project's kernels (scan_kernels.py via scan_triton.py, conv_triton.py,
  norm_triton.py, mixer_triton.py): every parameter set in one launch per pass, straight on the
  (B, L, E) layout, forward and backward. "auto" picks it on CUDA.
- "mamba": mamba-ssm's selective_scan_fn and causal-conv1d, one launch per set on the (B, E, L)
  layout they want. The reference the Triton kernels are tested and benchmarked against.
- "portable": plain PyTorch (portable.py); "auto" picks it on the CPU.
Triton also runs on the CPU under TRITON_INTERPRET=1 (its interpreter: for tests).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

import torch
from torch import Tensor

from src.utils.errors import UserError

BACKENDS = ("auto", "triton", "mamba", "portable")
ENV_VAR = "SSAMBA_KERNELS"
INSTALL_HINT = (
    "install mamba-ssm and causal-conv1d with `pip install -e '.[cuda]' --no-build-isolation` "
    "(built for your torch and CUDA)"
)


@functools.cache
def mamba_ops() -> tuple[Callable, Callable] | None:
    """(selective_scan_fn, causal_conv1d_fn) from mamba-ssm and causal-conv1d, or None."""
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
    return torch.cuda.is_available() and mamba_ops() is not None


def resolve_backend(x: Tensor, backend: str | None = None) -> str:
    """ "triton", "mamba" or "portable" for tensors on x's device: the argument, else $SSAMBA_KERNELS,
    else auto (Triton on CUDA, portable elsewhere)."""
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
    if choice == "mamba" and not (x.is_cuda and mamba_ops() is not None):
        where = "the tensors are on the CPU" if not x.is_cuda else "mamba-ssm or causal-conv1d does not import"
        raise RuntimeError(f"mamba-ssm's kernels were requested but {where}; {INSTALL_HINT}, or use {ENV_VAR}=triton")
    return choice
