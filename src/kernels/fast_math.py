"""exp2, log2 and the functions built on them for the Triton kernels, each either Triton's own or,
with FAST, single MUFU instructions as inline PTX (never under the interpreter, which runs no PTX);
and an L2 prefetch hint, also inline PTX."""

from __future__ import annotations

import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)


@triton.jit
def approx(x, PTX: tl.constexpr):
    """One MUFU instruction on x (fp32), as inline PTX."""
    return tl.inline_asm_elementwise(PTX, "=f,f", [x], dtype=tl.float32, is_pure=True, pack=1)


@triton.jit
def exp2(x, FAST: tl.constexpr):
    """2**x. FAST: ex2.approx.ftz, one MUFU.EX2 (subnormal results flush to zero), where tl.exp2's
    ex2.approx.f32 wraps the MUFU in a subnormal range fix."""
    if FAST:
        return approx(x, "ex2.approx.ftz.f32 $0, $1;")
    return tl.exp2(x)


@triton.jit
def log2(x, FAST: tl.constexpr):
    if FAST:
        return approx(x, "lg2.approx.ftz.f32 $0, $1;")
    return tl.log2(x)


@triton.jit
def softplus(x, FAST: tl.constexpr):
    return tl.where(x > 20.0, x, log2(1.0 + exp2(x * LOG2E, FAST), FAST) * LN2)


@triton.jit
def sigmoid(x, FAST: tl.constexpr):
    """1 / (1 + exp(-x)); FAST: the reciprocal as one MUFU.RCP too (rcp.approx.ftz: 1 ulp; 0 for an
    infinite denominator), where a division adds a range fix around it."""
    denominator = 1.0 + exp2(-x * LOG2E, FAST)
    if FAST:
        return approx(denominator, "rcp.approx.ftz.f32 $0, $1;")
    return 1.0 / denominator


PREFETCH_L2 = tl.constexpr("prefetch.global.L2 [$1]; mov.u32 $0, 0;")


@triton.jit
def prefetch_l2(pointer):
    """Asks L2 for the 32-byte sector at each address of pointer (a tensor of pointers): a hint that
    holds no register and is not waited for, so a load issued later finds it in L2 rather than
    DRAM. Addresses must be valid (prefetch.global on an unmapped one may fault)."""
    tl.inline_asm_elementwise(PREFETCH_L2, "=r,l", [pointer], dtype=tl.int32, is_pure=False, pack=1)
