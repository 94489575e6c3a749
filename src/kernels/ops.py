"""The kernels' API: the depthwise conv, the selective scan, the residual add + norm and the whole
bimamba-v2 mixer stretch, each on the backend backend.py chooses (Triton, mamba-ssm, portable).

Layout: the S parameter sets of a layer (bimamba-v2: the forward and the backward direction) stacked
in front, in the (B, L, ...) order the projections produce:
    x: (B, L, E), the conv's input, shared     conv weight: (S, E, K)   conv bias: (S, E)
    u, delta: (S, B, L, E)   B, C: (S, B, L, N)   z: (B, L, E), shared   A: (S, E, N)   D, delta_bias: (S, E)
    reverse: S bools; a reversed set runs from the last step to the first (the anti-causal conv and a
    right-to-left scan), which is what the official code gets by flipping the sequence.
    y_t = (C_t . h_t + D u_t) * silu(z_t),  h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t,
    dt_t = softplus(delta_t + delta_bias);  -> y: (S, B, L, E) in u's dtype.
The Triton kernels take this layout as it is; mamba-ssm's and the portable scan run one set at a
time on the (B, E, L) layout, so their inputs are transposed and reversed sets flipped.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from src.kernels import portable
from src.kernels.backend import mamba_ops, resolve_backend
from src.utils.devices import autocast_dtype


def conv1d_silu(x: Tensor, weight: Tensor, bias: Tensor, reverse: Sequence[bool], backend: str | None = None) -> Tensor:
    """silu(depthwise conv) per set: x (B, L, E), weight (S, E, K), bias (S, E) -> (S, B, L, E);
    causal for a set that runs forward, anti-causal for a reversed one."""
    chosen = resolve_backend(x, backend)
    if chosen == "triton":
        from src.kernels.conv_triton import conv1d_silu_triton  # imports triton

        return conv1d_silu_triton(x, weight, bias, tuple(reverse))
    outs = []
    for s, backwards in enumerate(reverse):
        xs, w, b = _scan_order(x, backwards), weight[s].to(x.dtype), bias[s].to(x.dtype)  # xs: (B, E, L)
        if chosen == "mamba":
            u = mamba_ops()[1](xs.contiguous(), w, b, activation="silu")
        else:
            u = portable.conv1d_silu_bel(xs, w, b)
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
        from src.kernels.scan_triton import selective_scan_triton  # imports triton

        return selective_scan_triton(u, delta, A, B, C, D, z, delta_bias, tuple(reverse), delta_softplus)
    scan_bel = mamba_ops()[0] if chosen == "mamba" else portable.scan_portable_bel
    ys = []
    for s, backwards in enumerate(reverse):
        u_s, delta_s, B_s, C_s, z_s = (
            None if t is None else _scan_order(t, backwards).contiguous() for t in (u[s], delta[s], B[s], C[s], z)
        )
        D_s = None if D is None else D[s].float()
        bias_s = None if delta_bias is None else delta_bias[s].float()
        y = scan_bel(u_s, delta_s, A[s].float(), B_s, C_s, D_s, z_s, bias_s, delta_softplus)  # (B, E, L)
        ys.append(_time_order(y, backwards))
    return torch.stack(ys)


def add_norm(
    hidden: Tensor,
    residual: Tensor | None,
    weight: Tensor,
    bias: Tensor | None,
    eps: float,
    rms: bool = False,
    scale: Tensor | None = None,
    residual_in_fp32: bool = False,
    out_dtype: torch.dtype | None = None,
) -> tuple[Tensor, Tensor]:
    """The pre-norm residual stream's step: residual_out = residual + scale * hidden (hidden alone
    when residual is None; scale (B,) is drop path's keep / (1 - p), or None), then LayerNorm (RMSNorm
    with rms) with weight and bias. Returns (normed, residual_out); residual_out in fp32 with
    residual_in_fp32; normed in out_dtype (None: the autocast dtype where autocast is on, else the
    weight's on Triton, the norm's own result elsewhere). On Triton one kernel each way."""
    if resolve_backend(hidden) != "triton":
        return portable.add_norm(hidden, residual, scale, weight, bias, eps, rms, residual_in_fp32, out_dtype)
    from src.kernels.norm_triton import add_norm_triton  # imports triton

    residual_dtype = _residual_dtype((hidden, residual), residual_in_fp32)
    if out_dtype is None:
        out_dtype = autocast_dtype(hidden.device.type, weight.dtype)
    return add_norm_triton(hidden, residual, scale, weight, bias, eps, rms, residual_dtype, out_dtype)


def add_norm_pair(
    hidden_f: Tensor,
    hidden_b: Tensor | None,
    residual: Tensor | None,
    weights: tuple[Tensor, Tensor],
    biases: tuple[Tensor, Tensor] | None,
    eps: float,
    rms: bool = False,
    scales: tuple[Tensor, Tensor] | None = None,
    residual_in_fp32: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """A pair_flip pair's two add_norm steps, which read the same stream: hidden = hidden_f + hidden_b
    (the previous pair's two outputs; hidden_f alone where hidden_b is None), x_s = residual + scale_s
    * hidden (hidden alone where residual is None) for s = f, b, each normed with its own weights.
    Returns (normed_f, normed_b, x_f + x_b), the last the pair's residual stream out; dtypes as
    add_norm's. On Triton one kernel each way (which also sums the gradients of the input both
    layers read); elsewhere add_norm twice."""
    if resolve_backend(hidden_f) != "triton":
        hidden = hidden_f if hidden_b is None else hidden_f + hidden_b
        scales, biases = scales or (None, None), biases or (None, None)
        steps = [
            portable.add_norm(hidden, residual, scale, weight, bias, eps, rms, residual_in_fp32, None)
            for scale, weight, bias in zip(scales, weights, biases)
        ]
        return steps[0][0], steps[1][0], steps[0][1] + steps[1][1]
    from src.kernels.norm_triton import add_norm_pair_triton  # imports triton

    residual_dtype = _residual_dtype((hidden_f, hidden_b, residual), residual_in_fp32)
    out_dtype = autocast_dtype(hidden_f.device.type, weights[0].dtype)
    return add_norm_pair_triton(
        hidden_f, hidden_b, residual, scales, weights, biases, eps, rms, residual_dtype, out_dtype
    )


def bimamba_inner(
    hidden: Tensor,
    in_weight: Tensor,
    in_bias: Tensor | None,
    conv_weight: Tensor,
    conv_bias: Tensor,
    x_proj: Tensor,
    dt_proj: Tensor,
    A: Tensor,
    D: Tensor,
    dt_bias: Tensor,
    reverse: Sequence[bool],
) -> Tensor:
    """A bimamba-v2 mixer from in_proj's input to out_proj's input, every set, summed:
        hidden: (B, L, d)   in_weight: (2E, d)   in_bias: (2E,) or None   conv_weight: (S, E, K)
        conv_bias: (S, E)   x_proj: (S, R' + 2N, E)   dt_proj: (S, E, R')   A: (S, N, E)   D, dt_bias: (S, E)
        ->   y: (B, L, E)
    dt_rank R padded to R', a multiple of 8, with zero rows of x_proj and zero columns of dt_proj (B's and
    C's columns start 16-byte aligned, and delta's matmuls sum over whole 16-byte rows).
    xz = [x | z] = in_proj(hidden); u = silu(conv(x)) per set; [dt | B | C] = u x_proj^T;
    delta = dt dt_proj^T; the gated scans. On Triton one autograd Function that stores neither xz nor
    any (S, B, L, E) activation and recomputes them in its backward (mamba-ssm's mamba_inner_fn, with
    in_proj); elsewhere the same steps on conv1d_silu and selective_scan."""
    if resolve_backend(hidden) == "triton":
        from src.kernels.mixer_triton import bimamba_inner_triton  # imports triton

        weights = (conv_weight, conv_bias, x_proj, dt_proj, A, D, dt_bias)
        return bimamba_inner_triton(hidden, in_weight, in_bias, *weights, tuple(reverse))
    xz = F.linear(hidden, in_weight, in_bias)  # (B, L, 2E)
    sets, batch, length = A.shape[0], xz.shape[0], xz.shape[1]
    N, E, R = A.shape[1], A.shape[2], dt_proj.shape[2]
    x, z = xz.chunk(2, dim=-1)  # (B, L, E) each, views
    u = conv1d_silu(x, conv_weight, conv_bias, reverse)  # (S, B, L, E)
    x_dbl = torch.bmm(u.view(sets, batch * length, E), x_proj.transpose(1, 2))  # (S, B*L, R' + 2N)
    dt, B, C = x_dbl.split([R, N, N], dim=-1)  # views
    delta = torch.bmm(dt, dt_proj.transpose(1, 2))  # (S, B*L, E); the bias goes in as delta_bias
    as_steps = (sets, batch, length, -1)
    y = selective_scan(
        u, delta.view(as_steps), A.transpose(1, 2), B.view(as_steps), C.view(as_steps), D, z, dt_bias, reverse
    )  # (S, B, L, E)
    return y.sum(0)


def _residual_dtype(inputs: Sequence[Tensor | None], residual_in_fp32: bool) -> torch.dtype:
    """The residual stream's dtype after an add: fp32 with residual_in_fp32, else what the inputs
    there are promote to."""
    if residual_in_fp32:
        return torch.float32
    return functools.reduce(torch.promote_types, (t.dtype for t in inputs if t is not None))


def _scan_order(x: Tensor, backwards: bool) -> Tensor:
    """(B, L, X) -> (B, X, L) in a set's scan order."""
    x = x.transpose(1, 2)
    return x.flip(-1) if backwards else x


def _time_order(x: Tensor, backwards: bool) -> Tensor:
    """The inverse of _scan_order: (B, X, L) in scan order -> (B, L, X)."""
    return (x.flip(-1) if backwards else x).transpose(1, 2)
