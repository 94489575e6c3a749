"""Residual add + LayerNorm / RMSNorm in one Triton kernel each way (what mamba-ssm's layer_norm_fn
does for the stock Mamba blocks), for the encoder's pre-norm residual stream:

    residual_out = residual + scale * hidden      (or hidden alone for the first layer)
    out          = norm(residual_out) * weight (+ bias)

hidden, residual: (..., D); scale: (B,) per sample (drop path's keep / (1 - p)) or None. One read of
each input, one write of each output; the backward reads residual_out again and writes the gradients
of hidden and residual, and per program the sums that give weight's and bias's. What is normalised is
residual_out as stored (in its dtype), so the result equals the unfused add then norm.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

ROWS = 8  # rows per block: (ROWS, D) tiles, a row's statistics reduced inside the tile


@triton.jit
def _add_norm_fwd_kernel(
    h_ptr, r_ptr, scale_ptr, w_ptr, b_ptr, r_out_ptr, y_ptr, mean_ptr, rstd_ptr,
    rows_total, dim, rows_per_sample, eps,
    HAS_RESIDUAL: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_BIAS: tl.constexpr, RMS: tl.constexpr,
    R: tl.constexpr, BD: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * R + tl.arange(0, R)
    cols = tl.arange(0, BD)
    row_ok, col_ok = rows < rows_total, cols < dim
    m = row_ok[:, None] & col_ok[None, :]
    at = rows[:, None].to(tl.int64) * dim + cols[None, :]
    x = tl.load(h_ptr + at, mask=m, other=0.0).to(tl.float32)
    if HAS_SCALE:
        x *= tl.load(scale_ptr + rows // rows_per_sample, mask=row_ok, other=0.0)[:, None]
    if HAS_RESIDUAL:
        x += tl.load(r_ptr + at, mask=m, other=0.0).to(tl.float32)
    x = x.to(r_out_ptr.dtype.element_ty)
    tl.store(r_out_ptr + at, x, mask=m)
    x = x.to(tl.float32)
    if RMS:
        xc = x
    else:
        mean = tl.sum(x, axis=1) / dim  # (R,)
        xc = tl.where(m, x - mean[:, None], 0.0)
        tl.store(mean_ptr + rows, mean, mask=row_ok)
    rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=1) / dim + eps)  # (R,)
    tl.store(rstd_ptr + rows, rstd, mask=row_ok)
    y = xc * rstd[:, None] * tl.load(w_ptr + cols, mask=col_ok, other=0.0)[None, :]
    if HAS_BIAS:
        y += tl.load(b_ptr + cols, mask=col_ok, other=0.0)[None, :]
    tl.store(y_ptr + at, y.to(y_ptr.dtype.element_ty), mask=m)


@triton.jit
def _add_norm_bwd_kernel(
    dy_ptr, dr_out_ptr, r_out_ptr, scale_ptr, w_ptr, mean_ptr, rstd_ptr, dh_ptr, dr_ptr, dw_ptr, db_ptr,
    rows_total, dim, rows_per_sample, rows_per_program,
    HAS_DR_OUT: tl.constexpr, HAS_RESIDUAL: tl.constexpr, HAS_SCALE: tl.constexpr, RMS: tl.constexpr,
    R: tl.constexpr, BD: tl.constexpr,
):  # fmt: skip
    """d out -> d residual_out (+ what flows into residual_out from later on) -> d hidden (times
    scale) and d residual; weight's and bias's gradients summed over this program's rows."""
    cols = tl.arange(0, BD)
    col_ok = cols < dim
    w = tl.load(w_ptr + cols, mask=col_ok, other=0.0)[None, :]
    dw = tl.zeros((R, BD), dtype=tl.float32)
    db = tl.zeros((R, BD), dtype=tl.float32)
    first = tl.program_id(0) * rows_per_program
    last = tl.minimum(first + rows_per_program, rows_total)
    for r0 in range(first, last, R):
        rows = r0 + tl.arange(0, R)
        row_ok = rows < last
        m = row_ok[:, None] & col_ok[None, :]
        at = rows[:, None].to(tl.int64) * dim + cols[None, :]
        x = tl.load(r_out_ptr + at, mask=m, other=0.0).to(tl.float32)
        rstd = tl.load(rstd_ptr + rows, mask=row_ok, other=0.0)[:, None]
        if RMS:
            xhat = x * rstd
        else:
            xhat = tl.where(m, x - tl.load(mean_ptr + rows, mask=row_ok, other=0.0)[:, None], 0.0) * rstd
        dy = tl.load(dy_ptr + at, mask=m, other=0.0).to(tl.float32)
        wdy = w * dy
        dw += dy * xhat
        db += dy
        if RMS:
            dx = (wdy - xhat * (tl.sum(xhat * wdy, axis=1) / dim)[:, None]) * rstd
        else:
            c1 = tl.sum(xhat * wdy, axis=1) / dim
            c2 = tl.sum(wdy, axis=1) / dim
            dx = (wdy - (xhat * c1[:, None] + c2[:, None])) * rstd
        if HAS_DR_OUT:
            dx += tl.load(dr_out_ptr + at, mask=m, other=0.0).to(tl.float32)
        if HAS_RESIDUAL:
            tl.store(dr_ptr + at, dx.to(dr_ptr.dtype.element_ty), mask=m)
        if HAS_SCALE:
            dx *= tl.load(scale_ptr + rows // rows_per_sample, mask=row_ok, other=0.0)[:, None]
        tl.store(dh_ptr + at, dx.to(dh_ptr.dtype.element_ty), mask=m)
    tl.store(dw_ptr + tl.program_id(0) * dim + cols, tl.sum(dw, axis=0), mask=col_ok)
    tl.store(db_ptr + tl.program_id(0) * dim + cols, tl.sum(db, axis=0), mask=col_ok)


def _launch_shape(dim: int) -> dict:
    block = triton.next_power_of_2(dim)
    return dict(R=ROWS, BD=block, num_warps=min(8, max(1, ROWS * block // 256)))


class AddNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, residual, scale, weight, bias, eps, rms, residual_dtype, out_dtype):
        shape, dim = hidden.shape, hidden.shape[-1]
        h = hidden.reshape(-1, dim).contiguous()
        r = residual.reshape(-1, dim).contiguous() if residual is not None else h
        rows = h.shape[0]
        rows_per_sample = rows // shape[0]
        r_out = torch.empty(rows, dim, device=h.device, dtype=residual_dtype)
        y = torch.empty(rows, dim, device=h.device, dtype=out_dtype)
        mean = torch.empty(rows, device=h.device, dtype=torch.float32)
        rstd = torch.empty_like(mean)
        weight = weight.contiguous()
        _add_norm_fwd_kernel[(triton.cdiv(rows, ROWS),)](
            h, r, scale if scale is not None else rstd, weight, bias if bias is not None else weight,
            r_out, y, mean, rstd, rows, dim, rows_per_sample, eps,
            HAS_RESIDUAL=residual is not None, HAS_SCALE=scale is not None, HAS_BIAS=bias is not None, RMS=rms,
            **_launch_shape(dim),
        )  # fmt: skip
        ctx.save_for_backward(r_out, scale, weight, mean, rstd)
        ctx.config = (shape, hidden.dtype, None if residual is None else residual.dtype, bias is not None, rms)
        return y.view(shape), r_out.view(shape)

    @staticmethod
    def backward(ctx, dy, dr_out):
        r_out, scale, weight, mean, rstd = ctx.saved_tensors
        shape, hidden_dtype, residual_dtype, has_bias, rms = ctx.config
        rows, dim = r_out.shape
        dy = dy.reshape(rows, dim).contiguous()
        dr_out = dr_out.reshape(rows, dim).contiguous() if dr_out is not None else None
        programs = min(triton.cdiv(rows, ROWS), 4 * _sm_count(r_out.device))
        rows_per_program = triton.cdiv(triton.cdiv(rows, programs), ROWS) * ROWS
        programs = triton.cdiv(rows, rows_per_program)
        dh = torch.empty(rows, dim, device=dy.device, dtype=hidden_dtype)
        dr = torch.empty(rows, dim, device=dy.device, dtype=residual_dtype) if residual_dtype is not None else dh
        dw = torch.empty(programs, dim, device=dy.device, dtype=torch.float32)
        db = torch.empty_like(dw)
        _add_norm_bwd_kernel[(programs,)](
            dy, dr_out if dr_out is not None else dy, r_out, scale if scale is not None else rstd, weight, mean, rstd,
            dh, dr, dw, db, rows, dim, rows // shape[0], rows_per_program,
            HAS_DR_OUT=dr_out is not None, HAS_RESIDUAL=residual_dtype is not None, HAS_SCALE=scale is not None,
            RMS=rms, **_launch_shape(dim),
        )  # fmt: skip
        d_residual = dr.view(shape) if residual_dtype is not None else None
        d_bias = db.sum(0) if has_bias else None
        return dh.view(shape), d_residual, None, dw.sum(0).to(weight.dtype), d_bias, None, None, None, None


def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 4
    return torch.cuda.get_device_properties(device).multi_processor_count


def add_norm_triton(
    hidden: Tensor,
    residual: Tensor | None,
    scale: Tensor | None,
    weight: Tensor,
    bias: Tensor | None,
    eps: float,
    rms: bool,
    residual_dtype: torch.dtype,
    out_dtype: torch.dtype,
) -> tuple[Tensor, Tensor]:
    """(norm(residual_out), residual_out) with residual_out = residual + scale * hidden, or hidden for
    the first layer (scale then unused); residual_out in residual_dtype, the output in out_dtype."""
    if scale is not None:
        scale = scale.float().contiguous()
    return AddNorm.apply(hidden, residual, scale, weight, bias, eps, rms, residual_dtype, out_dtype)
