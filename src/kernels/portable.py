"""The kernels in plain PyTorch: what runs on the CPU (and anywhere with SSAMBA_KERNELS=portable),
differentiable by autograd. Layouts as in ops.py; the scan here takes one set in mamba-ssm's
(B, E, L) layout, which ops.py's per-set loop feeds it."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

BLOCK_STATES = 2**21  # portable scan: states per block of time steps (8 MiB of fp32)


def conv1d_silu_bel(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """silu(causal depthwise conv) of one set in the (B, E, L) layout: weight (E, K), bias (E)."""
    length = x.shape[-1]
    return F.silu(
        F.conv1d(x, weight.unsqueeze(1), bias, padding=weight.shape[-1] - 1, groups=weight.shape[0])[..., :length]
    )


def add_norm(
    hidden: Tensor,
    residual: Tensor | None,
    scale: Tensor | None,
    weight: Tensor,
    bias: Tensor | None,
    eps: float,
    rms: bool,
    residual_in_fp32: bool,
    out_dtype: torch.dtype | None,
) -> tuple[Tensor, Tensor]:
    """ops.add_norm's steps one by one: the residual add, then F.layer_norm / F.rms_norm (what
    nn.LayerNorm and nn.RMSNorm call)."""
    if residual is None:
        residual = hidden
    else:
        if scale is not None:  # drop path: each sample's branch times keep / (1 - p)
            hidden = (hidden * scale.view(-1, *(1,) * (hidden.dim() - 1))).to(hidden.dtype)
        residual = residual + hidden
    x, shape = residual.to(weight.dtype), weight.shape
    normed = F.rms_norm(x, shape, weight, eps) if rms else F.layer_norm(x, shape, weight, bias, eps)
    if out_dtype is not None:
        normed = normed.to(out_dtype)
    return normed, residual.float() if residual_in_fp32 else residual


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
