"""Residual add + LayerNorm / RMSNorm in one Triton kernel each way (what mamba-ssm's layer_norm_fn
does for the stock Mamba blocks), for the encoder's pre-norm residual stream:

    residual_out = residual + scale * hidden      (or hidden alone for the first layer)
    out          = norm(residual_out) * weight (+ bias)

hidden, residual: (..., D); scale: (B,) per sample (drop path's keep / (1 - p)) or None. One read of
each input, one write of each output; the backward reads residual_out again and writes the gradients
of hidden and residual, and per program the sums that give weight's and bias's. What is normalised is
residual_out as stored (in its dtype), so the result equals the unfused add then norm.

The pair kernels do a pair_flip pair's two steps at once (both layers read the same stream, each
with its own norm and drop path): hidden = hidden_f + hidden_b (the previous pair's two outputs),
x_s = residual + scale_s * hidden and out_s = norm_s(x_s) for s = f, b, and residual_out = x_f + x_b,
each rounded as the unfused adds round it. One kernel each way in place of two add + norm kernels and
the two adds around them both ways (the pair's sums, and autograd's sums of the gradients of the
input both layers read); the backward recomputes x_s from the stored hidden and residual.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

ROWS = 8  # rows per block: (ROWS, D) tiles, a row's statistics reduced inside the tile
# the pair backward's tiles: at 8 rows it took 138 registers (one block an SM); at 2 rows, 4 warps,
# SSAMBA-tiny's graphed step 95.2 against 95.7-96.0 ms at 8 (one H100, one call; 4 rows: 95.3)
PAIR_BACKWARD_ROWS = 2


@triton.jit
def _tile(r0, rows_end, dim, R: tl.constexpr, BD: tl.constexpr):
    """Rows r0 .. r0 + R of (rows, dim) row-major, those before rows_end valid -> (rows, row_ok, cols,
    col_ok, m: the tile's valid entries, at: their offsets)."""
    rows = r0 + tl.arange(0, R)
    cols = tl.arange(0, BD)
    row_ok, col_ok = rows < rows_end, cols < dim
    m = row_ok[:, None] & col_ok[None, :]
    return rows, row_ok, cols, col_ok, m, rows[:, None].to(tl.int64) * dim + cols[None, :]


@triton.jit
def _normalize(x, m, w, b, dim, eps, HAS_BIAS: tl.constexpr, RMS: tl.constexpr):
    """A (R, BD) fp32 tile's rows normalised (m: the tile's valid entries; w, b: (1, BD)) -> y, mean, rstd."""
    if RMS:
        mean = tl.zeros((x.shape[0],), dtype=tl.float32)
        xc = x
    else:
        mean = tl.sum(x, axis=1) / dim  # (R,)
        xc = tl.where(m, x - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=1) / dim + eps)  # (R,)
    y = xc * rstd[:, None] * w
    if HAS_BIAS:
        y += b
    return y, mean, rstd


@triton.jit
def _normalize_grad(x, m, mean, rstd, w, dy, dim, RMS: tl.constexpr):
    """d x of _normalize's y from dy ((R, BD) fp32; mean, rstd (R,)), and x-hat (for weight's gradient)."""
    if RMS:
        xhat = x * rstd[:, None]
    else:
        xhat = tl.where(m, x - mean[:, None], 0.0) * rstd[:, None]
    wdy = w * dy
    c1 = tl.sum(xhat * wdy, axis=1) / dim
    if RMS:
        dx = (wdy - xhat * c1[:, None]) * rstd[:, None]
    else:
        c2 = tl.sum(wdy, axis=1) / dim
        dx = (wdy - (xhat * c1[:, None] + c2[:, None])) * rstd[:, None]
    return dx, xhat


@triton.jit
def _tile_grad(x, m, at, rows, row_ok, mean_ptr, rstd_ptr, dy_ptr, w, dim, RMS: tl.constexpr):
    """A tile's d out and its rows' statistics loaded -> (d x, d out * x-hat, d out): d x and what
    weight's and bias's gradients sum."""
    mean = tl.load(mean_ptr + rows, mask=row_ok, other=0.0)
    rstd = tl.load(rstd_ptr + rows, mask=row_ok, other=0.0)
    dy = tl.load(dy_ptr + at, mask=m, other=0.0).to(tl.float32)
    dx, xhat = _normalize_grad(x, m, mean, rstd, w, dy, dim, RMS)
    return dx, dy * xhat, dy


@triton.jit
def _add_norm_fwd_kernel(
    h_ptr, r_ptr, scale_ptr, w_ptr, b_ptr, r_out_ptr, y_ptr, mean_ptr, rstd_ptr,
    rows_total, dim, rows_per_sample, eps,
    HAS_RESIDUAL: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_BIAS: tl.constexpr, RMS: tl.constexpr,
    R: tl.constexpr, BD: tl.constexpr,
):  # fmt: skip
    rows, row_ok, cols, col_ok, m, at = _tile(tl.program_id(0) * R, rows_total, dim, R, BD)
    x = tl.load(h_ptr + at, mask=m, other=0.0).to(tl.float32)
    if HAS_SCALE:
        x *= tl.load(scale_ptr + rows // rows_per_sample, mask=row_ok, other=0.0)[:, None]
    if HAS_RESIDUAL:
        x += tl.load(r_ptr + at, mask=m, other=0.0).to(tl.float32)
    x = x.to(r_out_ptr.dtype.element_ty)
    tl.store(r_out_ptr + at, x, mask=m)
    w = tl.load(w_ptr + cols, mask=col_ok, other=0.0)[None, :]
    b = tl.load(b_ptr + cols, mask=col_ok, other=0.0)[None, :]
    y, mean, rstd = _normalize(x.to(tl.float32), m, w, b, dim, eps, HAS_BIAS, RMS)
    tl.store(mean_ptr + rows, mean, mask=row_ok)
    tl.store(rstd_ptr + rows, rstd, mask=row_ok)
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
        rows, row_ok, _, _, m, at = _tile(r0, last, dim, R, BD)
        x = tl.load(r_out_ptr + at, mask=m, other=0.0).to(tl.float32)
        dx, dw_part, db_part = _tile_grad(x, m, at, rows, row_ok, mean_ptr, rstd_ptr, dy_ptr, w, dim, RMS)
        dw += dw_part
        db += db_part
        if HAS_DR_OUT:
            dx += tl.load(dr_out_ptr + at, mask=m, other=0.0).to(tl.float32)
        if HAS_RESIDUAL:
            tl.store(dr_ptr + at, dx.to(dr_ptr.dtype.element_ty), mask=m)
        if HAS_SCALE:
            dx *= tl.load(scale_ptr + rows // rows_per_sample, mask=row_ok, other=0.0)[:, None]
        tl.store(dh_ptr + at, dx.to(dh_ptr.dtype.element_ty), mask=m)
    tl.store(dw_ptr + tl.program_id(0) * dim + cols, tl.sum(dw, axis=0), mask=col_ok)
    tl.store(db_ptr + tl.program_id(0) * dim + cols, tl.sum(db, axis=0), mask=col_ok)


@triton.jit
def _pair_input(h, r_ptr, scale_ptr, at, m, rows, row_ok, rows_per_sample, x_dtype: tl.constexpr,
                HAS_RESIDUAL: tl.constexpr, HAS_SCALE: tl.constexpr):  # fmt: skip
    """One layer of a pair's x = residual + scale * hidden (hidden alone for the first pair), rounded
    to the residual stream's dtype as the unfused step stores it; fp32 (R, BD)."""
    x = h
    if HAS_RESIDUAL:
        if HAS_SCALE:
            x *= tl.load(scale_ptr + rows // rows_per_sample, mask=row_ok, other=0.0)[:, None]
        x += tl.load(r_ptr + at, mask=m, other=0.0).to(tl.float32)
    return x.to(x_dtype).to(tl.float32)


@triton.jit
def _add_norm_pair_fwd_kernel(
    hf_ptr, hb_ptr, r_ptr, sf_ptr, sb_ptr, wf_ptr, bf_ptr, wb_ptr, bb_ptr,
    h_out_ptr, r_out_ptr, yf_ptr, yb_ptr, stats_ptr,
    rows_total, dim, rows_per_sample, eps,
    HAS_HB: tl.constexpr, HAS_RESIDUAL: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_BIAS: tl.constexpr,
    RMS: tl.constexpr, R: tl.constexpr, BD: tl.constexpr,
):  # fmt: skip
    """hidden = hf + hb (stored to h_out for the backward), both layers' normed inputs, and the pair's
    residual_out; stats (4, rows): mean and rstd of f, then of b."""
    rows, row_ok, cols, col_ok, m, at = _tile(tl.program_id(0) * R, rows_total, dim, R, BD)
    h = tl.load(hf_ptr + at, mask=m, other=0.0).to(tl.float32)
    if HAS_HB:
        h = (h + tl.load(hb_ptr + at, mask=m, other=0.0).to(tl.float32)).to(h_out_ptr.dtype.element_ty)
        tl.store(h_out_ptr + at, h, mask=m)
        h = h.to(tl.float32)
    x_dtype = r_out_ptr.dtype.element_ty
    xf = _pair_input(h, r_ptr, sf_ptr, at, m, rows, row_ok, rows_per_sample, x_dtype, HAS_RESIDUAL, HAS_SCALE)
    xb = _pair_input(h, r_ptr, sb_ptr, at, m, rows, row_ok, rows_per_sample, x_dtype, HAS_RESIDUAL, HAS_SCALE)
    tl.store(r_out_ptr + at, (xf + xb).to(x_dtype), mask=m)
    w = tl.load(wf_ptr + cols, mask=col_ok, other=0.0)[None, :]
    b = tl.load(bf_ptr + cols, mask=col_ok, other=0.0)[None, :]
    y, mean, rstd = _normalize(xf, m, w, b, dim, eps, HAS_BIAS, RMS)
    tl.store(yf_ptr + at, y.to(yf_ptr.dtype.element_ty), mask=m)
    tl.store(stats_ptr + rows, mean, mask=row_ok)
    tl.store(stats_ptr + rows_total + rows, rstd, mask=row_ok)
    w = tl.load(wb_ptr + cols, mask=col_ok, other=0.0)[None, :]
    b = tl.load(bb_ptr + cols, mask=col_ok, other=0.0)[None, :]
    y, mean, rstd = _normalize(xb, m, w, b, dim, eps, HAS_BIAS, RMS)
    tl.store(yb_ptr + at, y.to(yb_ptr.dtype.element_ty), mask=m)
    tl.store(stats_ptr + 2 * rows_total + rows, mean, mask=row_ok)
    tl.store(stats_ptr + 3 * rows_total + rows, rstd, mask=row_ok)


@triton.jit
def _add_norm_pair_bwd_kernel(
    dyf_ptr, dyb_ptr, dr_out_ptr, h_ptr, r_ptr, sf_ptr, sb_ptr, wf_ptr, wb_ptr, stats_ptr,
    dh_ptr, dr_ptr, dwb_ptr,
    rows_total, dim, rows_per_sample, rows_per_program,
    X_DTYPE: tl.constexpr, HAS_DR_OUT: tl.constexpr, HAS_RESIDUAL: tl.constexpr, HAS_SCALE: tl.constexpr,
    RMS: tl.constexpr, R: tl.constexpr, BD: tl.constexpr,
):  # fmt: skip
    """d out_f, d out_b, d residual_out -> d x_f, d x_b -> d hidden = sum of scale_s d x_s (the same for
    hf and hb) and d residual = d x_f + d x_b; this program's sums for the weights and biases, dwb
    (programs, 4, D): weight f, bias f, weight b, bias b."""
    cols = tl.arange(0, BD)
    col_ok = cols < dim
    wf = tl.load(wf_ptr + cols, mask=col_ok, other=0.0)[None, :]
    wb = tl.load(wb_ptr + cols, mask=col_ok, other=0.0)[None, :]
    dwf = tl.zeros((R, BD), dtype=tl.float32)
    dbf = tl.zeros((R, BD), dtype=tl.float32)
    dwb = tl.zeros((R, BD), dtype=tl.float32)
    dbb = tl.zeros((R, BD), dtype=tl.float32)
    first = tl.program_id(0) * rows_per_program
    last = tl.minimum(first + rows_per_program, rows_total)
    for r0 in range(first, last, R):
        rows, row_ok, _, _, m, at = _tile(r0, last, dim, R, BD)
        h = tl.load(h_ptr + at, mask=m, other=0.0).to(tl.float32)
        d_out = tl.zeros((R, BD), dtype=tl.float32)
        if HAS_DR_OUT:
            d_out = tl.load(dr_out_ptr + at, mask=m, other=0.0).to(tl.float32)
        x = _pair_input(h, r_ptr, sf_ptr, at, m, rows, row_ok, rows_per_sample, X_DTYPE, HAS_RESIDUAL, HAS_SCALE)
        dxf, dw_part, db_part = _tile_grad(x, m, at, rows, row_ok, stats_ptr, stats_ptr + rows_total, dyf_ptr, wf,
                                           dim, RMS)  # fmt: skip
        dxf += d_out
        dwf += dw_part
        dbf += db_part
        x = _pair_input(h, r_ptr, sb_ptr, at, m, rows, row_ok, rows_per_sample, X_DTYPE, HAS_RESIDUAL, HAS_SCALE)
        dxb, dw_part, db_part = _tile_grad(x, m, at, rows, row_ok, stats_ptr + 2 * rows_total,
                                           stats_ptr + 3 * rows_total, dyb_ptr, wb, dim, RMS)  # fmt: skip
        dxb += d_out
        dwb += dw_part
        dbb += db_part
        if HAS_RESIDUAL:
            tl.store(dr_ptr + at, (dxf + dxb).to(dr_ptr.dtype.element_ty), mask=m)
            if HAS_SCALE:
                dxf *= tl.load(sf_ptr + rows // rows_per_sample, mask=row_ok, other=0.0)[:, None]
                dxb *= tl.load(sb_ptr + rows // rows_per_sample, mask=row_ok, other=0.0)[:, None]
        tl.store(dh_ptr + at, (dxf + dxb).to(dh_ptr.dtype.element_ty), mask=m)
    out = dwb_ptr + tl.program_id(0) * 4 * dim + cols
    tl.store(out, tl.sum(dwf, axis=0), mask=col_ok)
    tl.store(out + dim, tl.sum(dbf, axis=0), mask=col_ok)
    tl.store(out + 2 * dim, tl.sum(dwb, axis=0), mask=col_ok)
    tl.store(out + 3 * dim, tl.sum(dbb, axis=0), mask=col_ok)


def _launch_shape(dim: int, rows: int = ROWS) -> dict:
    block = triton.next_power_of_2(dim)
    return dict(R=rows, BD=block, num_warps=min(8, max(1, rows * block // 256)))


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
        programs, rows_per_program = _backward_split(rows, r_out.device)
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


class AddNormPair(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden_f, hidden_b, residual, scale_f, scale_b, weight_f, bias_f, weight_b, bias_b, eps, rms,
                residual_dtype, out_dtype):  # fmt: skip
        shape, dim = hidden_f.shape, hidden_f.shape[-1]
        hf = hidden_f.reshape(-1, dim).contiguous()
        hb = hidden_b.reshape(-1, dim).contiguous() if hidden_b is not None else None
        r = residual.reshape(-1, dim).contiguous() if residual is not None else None
        rows = hf.shape[0]
        # the summed input is stored where there are two to sum (the backward reads it)
        h = hf if hb is None else torch.empty_like(hf, dtype=torch.promote_types(hf.dtype, hb.dtype))
        r_out = torch.empty(rows, dim, device=hf.device, dtype=residual_dtype)
        y = torch.empty(2, rows, dim, device=hf.device, dtype=out_dtype)
        stats = torch.empty(4, rows, device=hf.device, dtype=torch.float32)  # mean f, rstd f, mean b, rstd b
        weight_f, weight_b = weight_f.contiguous(), weight_b.contiguous()
        unused = stats  # any tensor, for the pointers a launch does not read
        _add_norm_pair_fwd_kernel[(triton.cdiv(rows, ROWS),)](
            hf, _or(hb, unused), _or(r, unused), _or(scale_f, unused), _or(scale_b, unused),
            weight_f, _or(bias_f, weight_f), weight_b, _or(bias_b, weight_b), h, r_out, y[0], y[1], stats,
            rows, dim, rows // shape[0], eps,
            HAS_HB=hb is not None, HAS_RESIDUAL=r is not None, HAS_SCALE=scale_f is not None,
            HAS_BIAS=bias_f is not None, RMS=rms, **_launch_shape(dim),
        )  # fmt: skip
        ctx.save_for_backward(h, r, scale_f, scale_b, weight_f, weight_b, stats)
        ctx.config = (shape, hb is not None, residual_dtype, bias_f is not None, rms)
        return y[0].view(shape), y[1].view(shape), r_out.view(shape)

    @staticmethod
    def backward(ctx, dy_f, dy_b, dr_out):
        h, r, scale_f, scale_b, weight_f, weight_b, stats = ctx.saved_tensors
        shape, has_hb, residual_dtype, has_bias, rms = ctx.config
        rows, dim = h.shape
        dy_f, dy_b, dr_out = (None if d is None else d.reshape(rows, dim).contiguous() for d in (dy_f, dy_b, dr_out))
        dy_f, dy_b = (torch.zeros_like(h) if d is None else d for d in (dy_f, dy_b))  # an output left unused
        programs, rows_per_program = _backward_split(rows, h.device)
        dh = torch.empty(rows, dim, device=h.device, dtype=h.dtype)
        dr = torch.empty_like(r) if r is not None else None
        dwb = torch.empty(programs, 4, dim, device=h.device, dtype=torch.float32)
        _add_norm_pair_bwd_kernel[(programs,)](
            dy_f, dy_b, _or(dr_out, dy_f), h, _or(r, h), _or(scale_f, stats), _or(scale_b, stats),
            weight_f, weight_b, stats, dh, _or(dr, dh), dwb, rows, dim, rows // shape[0], rows_per_program,
            X_DTYPE=_TL_DTYPES[residual_dtype], HAS_DR_OUT=dr_out is not None, HAS_RESIDUAL=r is not None,
            HAS_SCALE=scale_f is not None, RMS=rms, **_launch_shape(dim, PAIR_BACKWARD_ROWS),
        )  # fmt: skip
        sums = dwb.sum(0)  # (4, D): weight f, bias f, weight b, bias b
        d_bias_f, d_bias_b = (sums[1], sums[3]) if has_bias else (None, None)
        d_hidden = dh.view(shape)  # hf and hb were summed: the same gradient each (autograd casts it)
        d_residual = None if dr is None else dr.view(shape)
        return (
            d_hidden, d_hidden if has_hb else None, d_residual, None, None, sums[0].to(weight_f.dtype), d_bias_f,
            sums[2].to(weight_b.dtype), d_bias_b, None, None, None, None,
        )  # fmt: skip


def _or(tensor: Tensor | None, other: Tensor) -> Tensor:
    return other if tensor is None else tensor


_TL_DTYPES = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}


def _backward_split(rows: int, device: torch.device) -> tuple[int, int]:
    """(programs, rows_per_program) of a backward launch: a whole number of tiles a program, at most 4
    programs an SM (each keeps partial sums of the weights' gradients, summed after)."""
    cuda = device.type == "cuda"
    sms = torch.cuda.get_device_properties(device).multi_processor_count if cuda else 4  # interpreted: as if 4
    programs = min(triton.cdiv(rows, ROWS), 4 * sms)
    rows_per_program = triton.cdiv(triton.cdiv(rows, programs), ROWS) * ROWS
    return triton.cdiv(rows, rows_per_program), rows_per_program


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


def add_norm_pair_triton(
    hidden_f: Tensor,
    hidden_b: Tensor | None,
    residual: Tensor | None,
    scales: tuple[Tensor, Tensor] | None,
    weights: tuple[Tensor, Tensor],
    biases: tuple[Tensor, Tensor] | None,
    eps: float,
    rms: bool,
    residual_dtype: torch.dtype,
    out_dtype: torch.dtype,
) -> tuple[Tensor, Tensor, Tensor]:
    """A pair_flip pair's two steps: (norm_f(x_f), norm_b(x_b), x_f + x_b), x_s = residual + scale_s *
    (hidden_f + hidden_b); hidden_b None: hidden_f alone; residual None: x_s = hidden (scales unused)."""
    scale_f, scale_b = (None, None) if scales is None else (s.float().contiguous() for s in scales)
    bias_f, bias_b = (None, None) if biases is None else biases
    return AddNormPair.apply(
        hidden_f, hidden_b, residual, scale_f, scale_b, weights[0], bias_f, weights[1], bias_b, eps, rms,
        residual_dtype, out_dtype,
    )  # fmt: skip
