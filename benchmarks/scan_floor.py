"""The floor of a layer's scan: what the work needs of the card's slowest unit for it, from the card's
own measured peaks (benchmarks/scan.py puts it beside the measured times).

Work per pass of one bimamba-v2 layer's scans, S = 2 directions, U = S B L E N state updates:
  forward   U exps (the decay exp(dt A) of every update), 3 U FMAs (dt B u, a h + x, C . h), and the
            bytes of u, delta, z, B, C and y in bf16 plus the fp32 states kept every 64 steps;
  backward  2 U exps (the walk that recomputes the states, and the adjoint's decays), 10 U FMAs,
            and the bytes of u, delta, z, B, C, dy and the kept states read, du, ddelta, dz, dB, dC
            written.
The units work side by side, so a pass's floor is the slowest unit's time, max(exps / exp rate,
FMAs / FMA rate, bytes / bandwidth); forward + backward is the sum of the two passes' floors.
Peaks are measured on the card: exp2 and FMA chains in registers (Triton; ex2.approx is what the
scan kernels use), and a device-to-device copy.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BF16, FP32 = 2, 4
CKPT_EVERY = 64  # steps between the states the forward keeps for the backward (ScanTiling's default)
FMAS_PER_UPDATE = {"forward": 3, "backward": 10}
EXPS_PER_UPDATE = {"forward": 1, "backward": 2}


def work(batch: int, dim: int, length: int, d_state: int = 16, sets: int = 2) -> dict:
    """{"forward": {...}, "backward": {...}}: exps, FMAs and bytes of one layer's scans."""
    updates = sets * batch * length * dim * d_state
    per_set = batch * length * dim * BF16  # one (B, L, E) tensor of a set, bf16
    states = sets * batch * dim * d_state * -(-length // CKPT_EVERY) * FP32
    bc = 2 * sets * batch * length * d_state * BF16  # B and C
    forward_bytes = 2 * sets * per_set + per_set + bc + sets * per_set + states  # u, delta, z, B, C, y, states
    backward_bytes = (2 * sets * per_set + per_set + bc + sets * per_set + states) + (
        2 * sets * per_set + per_set + bc
    )  # reads: u, delta, z, B, C, dy, states; writes: du, ddelta, dz, dB, dC
    return {
        phase: {"exps": EXPS_PER_UPDATE[phase] * updates, "fmas": FMAS_PER_UPDATE[phase] * updates, "bytes": nbytes}
        for phase, nbytes in (("forward", forward_bytes), ("backward", backward_bytes))
    }


def floor_ms(batch: int, dim: int, length: int, peaks: dict, d_state: int = 16) -> dict:
    """{"forward", "forward_backward"}: floors in ms, with the unit that sets each pass's floor, from
    peaks {"exps_per_s", "fmas_per_s", "bytes_per_s"}."""
    passes = {}
    for phase, w in work(batch, dim, length, d_state).items():
        times = {
            "exp": w["exps"] / peaks["exps_per_s"],
            "fma": w["fmas"] / peaks["fmas_per_s"],
            "memory": w["bytes"] / peaks["bytes_per_s"],
        }
        bound = max(times, key=times.get)
        passes[phase] = (1e3 * times[bound], bound)
    return {
        "forward": passes["forward"][0],
        "forward_backward": passes["forward"][0] + passes["backward"][0],
        "bound": {"forward": passes["forward"][1], "backward": passes["backward"][1]},
    }


@triton.jit
def _chains_kernel(x_ptr, out_ptr, ITERS: tl.constexpr, BLOCK: tl.constexpr, EXP: tl.constexpr):
    """Four independent chains a lane, ITERS steps each: x <- exp2(-0.5 x) (EXP), else the FMA
    x <- 0.5 x + 0.25; both stay bounded."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    a = tl.load(x_ptr + offs)
    b, c, d = a + 0.25, a + 0.5, a + 0.75
    for _ in range(ITERS):
        if EXP:
            a, b, c, d = tl.exp2(-0.5 * a), tl.exp2(-0.5 * b), tl.exp2(-0.5 * c), tl.exp2(-0.5 * d)
        else:
            a, b, c, d = a * 0.5 + 0.25, b * 0.5 + 0.25, c * 0.5 + 0.25, d * 0.5 + 0.25
    tl.store(out_ptr + offs, a + b + c + d)


def chains(kind: str, x: torch.Tensor, iters: int, block: int = 256) -> torch.Tensor:
    """Run the exp or FMA chains over x (fp32, a multiple of block elements): 4 x iters ops an element."""
    out = torch.empty_like(x)
    _chains_kernel[(x.numel() // block,)](x, out, ITERS=iters, BLOCK=block, EXP=kind == "exp")
    return out


def measure_peaks(time_ms) -> dict:
    """The card's exp2 and FMA rates and its copy bandwidth, each the best of time_ms's median runs."""
    n, iters = 1 << 22, 256
    x = torch.rand(n, device="cuda")
    ops = 4 * iters * n
    exp_ms = time_ms(lambda: chains("exp", x, iters), 3, 10)
    fma_ms = time_ms(lambda: chains("fma", x, iters), 3, 10)
    big = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    copy = torch.empty_like(big)
    copy_ms = time_ms(lambda: copy.copy_(big), 3, 10)
    return {
        "exps_per_s": ops / (exp_ms * 1e-3),
        "fmas_per_s": ops / (fma_ms * 1e-3),
        "bytes_per_s": 2 * big.numel() / (copy_ms * 1e-3),  # read + write
    }
