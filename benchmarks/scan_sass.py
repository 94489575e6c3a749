"""What ptxas makes of the scan kernels for an H100 (sm_90), on any machine: ptxas and cuobjdump
ship in Triton's wheel, so no GPU or CUDA driver is needed. Compiled with the launch flags the
defaults give at tiny's pretraining shape (batch 64, 513 steps, 384 channels), B's and C's rows
loaded a state a lane (ScanTiling.bc_lanes, the default), and with them loaded whole into every
lane (keys ending in _whole_rows); per kernel (the forward; the backward's second pass; the carry
between the backward's chunks, there and at batch 4 and 22001 steps, carry_long): the SASS's
instruction counts by opcode, those of each innermost loop (the forward's tile; the backward's walk
forward and walk back, each a 2-step tile; the carry's group of chunks), registers a thread, stack
bytes (spills land there) and the warps an SM then holds (a program is one warp).

    python -m benchmarks.scan_sass [--out docs/benchmarks/scan_sass.json]

Prints the JSON without --out. Run in a process of its own without TRITON_INTERPRET (under the
interpreter the kernels are not compiled at all); tests/test_scan_sass.py checks the counts the
kernels' design rests on."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import subprocess
import tempfile
from collections import Counter
from pathlib import Path

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from benchmarks.provenance import measured_line, provenance
from benchmarks.report import DATA, render_docs
from src.kernels import scan_kernels
from src.kernels.scan_triton import _Launch, default_tilings
from src.utils.io import write_json, write_text

BF16 = {"u_ptr", "dt_ptr", "b_ptr", "c_ptr", "z_ptr", "dy_ptr", "y_ptr", "du_ptr", "ddt_ptr", "dz_ptr"}
SHAPE = (2, 64, 513, 384)  # tiny at batch 64: (sets, batch, length, channels)
LONG = (4, 22001)  # issue 31's long sequence: (batch, length)


def compile_sm90(kernel, flags: dict, ints: dict) -> tuple[str, int, int]:
    """The SASS of kernel compiled for sm_90 with flags (its constexprs, num_warps, maxnreg) and its
    integer arguments specialised as a launch specialises them (1 a constant, multiples of 16 known
    as such, except those the kernel keeps unspecialised); pointers 16-byte aligned. With it, the
    registers a thread takes and its stack frame in bytes (spills land there)."""
    options = {k: flags[k] for k in ("num_warps", "maxnreg") if k in flags}
    signature, constants, attributes = {}, {}, {}
    for i, name in enumerate(kernel.arg_names):
        if kernel.params[i].is_constexpr:
            signature[name], constants[(i,)] = "constexpr", flags[name]
        elif name.endswith("_ptr"):
            signature[name] = "*bf16" if name in BF16 else "*fp32"
            if name == "scratch_ptr":  # as ScanTiling.scratch keeps it
                signature[name] = {32: "*fp32", 24: "*i32", 16: "*bf16"}[flags["SCRATCH_BITS"]]
            attributes[(i,)] = [["tt.divisibility", 16]]
        elif kernel.params[i].do_not_specialize:
            signature[name] = "i32"
        elif ints[name] == 1:
            signature[name], constants[(i,)] = "constexpr", 1
        else:
            signature[name] = "i32"
            if ints[name] % 16 == 0:
                attributes[(i,)] = [["tt.divisibility", 16]]
    compiled = triton.compile(
        ASTSource(kernel, signature, constants, attributes), target=GPUTarget("cuda", 90, 32), options=options
    )
    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        sass = subprocess.run([cuobjdump, "-sass", f.name], capture_output=True, text=True, check=True).stdout
        usage = subprocess.run([cuobjdump, "-res-usage", f.name], capture_output=True, text=True, check=True).stdout
    registers, stack = re.search(r"REG:(\d+) STACK:(\d+)", usage).groups()
    return sass, int(registers), int(stack)


def counts(sass: str) -> dict[str, int]:
    """Instructions by opcode with its modifiers (LDG.E.128, SHFL.BFLY, ...)."""
    found = Counter()
    for line in sass.splitlines():
        match = re.match(r"\s+/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)", line)
        if match:
            found[match.group(1)] += 1
    return dict(found)


def innermost_loop_bodies(sass: str) -> list[str]:
    """The SASS of every innermost loop, in address order: the body between a backward branch and
    its target, holding no other backward branch."""
    lines = [m for m in (re.match(r"\s+/\*([0-9a-f]+)\*/\s+(.*)", line) for line in sass.splitlines()) if m]
    addresses = [int(m.group(1), 16) for m in lines]
    loops = []
    for i, m in enumerate(lines):
        target = re.search(r"\bBRA\b[^;]*?0x([0-9a-f]+)", m.group(2))
        if target and int(target.group(1), 16) < addresses[i]:
            loops.append((addresses.index(int(target.group(1), 16)), i))
    inner = [(a, b) for a, b in loops if not any(a <= c and d < b for c, d in loops if (c, d) != (a, b))]
    return ["\n".join(m.group(0) for m in lines[a : b + 1]) for a, b in inner]


def innermost_loops(sass: str) -> list[dict[str, int]]:
    """The instruction counts (as counts()) of every innermost loop (innermost_loop_bodies)."""
    return [counts(body) for body in innermost_loop_bodies(sass)]


def loads_before_stores(body: str) -> bool:
    """Whether every global load of a SASS body comes before its first global store."""
    ops = re.findall(r"\b(LDG|STG)\b", body)
    return "STG" not in ops or "LDG" not in ops[ops.index("STG") :]


def warps_per_sm(registers: int) -> int:
    """Warps an SM holds at this many registers a thread (allocated 8 at a time; 64K registers and
    at most 32 one-warp programs an SM)."""
    return min(32, 65536 // (-(-registers // 8) * 8 * 32))


def compile_variants() -> dict:
    """Per kernel (forward; backward, its second pass), at the default launch and with whole rows
    (and the backward with an fp32 scratch), and the carry between chunks: the flags, the SASS's
    instruction counts (all and per innermost loop), registers, stack bytes."""
    sets, batch, length, dim = SHAPE
    meta = dict(dtype=torch.bfloat16, device="meta")
    u, delta = torch.empty(SHAPE, **meta), torch.empty(SHAPE, **meta)
    z = torch.empty(batch, length, 2 * dim, **meta)[..., dim:]  # in the mixer: views, as there
    x_dbl = torch.empty(sets, batch, length, 16 + 2 * 16, **meta)  # dt_rank padded to 16, then B, C
    B, C = x_dbl[..., 16:32], x_dbl[..., 32:]
    A = torch.empty(sets, 16, dim, device="meta")
    D = bias = torch.empty(sets, dim, device="meta")
    forward, backward = default_tilings(sets, batch, dim, length, u.dtype)
    whole_rows = dict(bc_lanes=False, scratch="fp32", keep_last_tile=False)  # (24 bits would spill there)
    variants = [  # (key, kernel, launch): the defaults, whole rows of B and C, an fp32 scratch
        (name + variant, name, replace_launch)
        for variant, replace_launch in (("", {}), ("_whole_rows", whole_rows))
        for name in ("forward", "backward")
    ] + [("backward_scratch_fp32", "backward", dict(scratch="fp32"))]
    out = {}
    for key, name, replace_launch in variants:
        default_tiling = forward if name == "forward" else backward
        tiling = dataclasses.replace(default_tiling, **replace_launch)
        run = _Launch(u, delta, A, B, C, D, z, bias, (False, True), True, tiling)
        ints = dict(zip(("batch", "length", "chunk_len", "n_chunks", "n_ckpts"), run.sizes))
        names = [f"s{t}_{d}" for t in ("u", "dt", "b", "c") for d in ("s", "b", "l")] + ["sz_b", "sz_l"]
        ints.update(zip(names, run.strides), rev_mask=run.rev_mask, zero=0)
        ints.update(zip(("sdy_s", "sdy_b", "sdy_l"), u.stride()[:3]))
        flags = dict(run.flags)
        if name == "forward":
            flags.update(HAS_H_START=run.n_chunks > 1, WRITE_Y=True, WRITE_CKPT=True, WRITE_END=False)
            kernel = scan_kernels.scan_forward_kernel
        else:
            flags.update(HAS_G_START=run.n_chunks > 1, CARRY_ONLY=False, ATOMIC=True)
            flags.update(run.scatter_flags(tiling, atomic=True), **run.scratch_flags(tiling))
            kernel = scan_kernels.scan_backward_kernel
        sass, registers, stack = compile_sm90(kernel, flags, ints)
        out[key] = _record(tiling == default_tiling, flags, sass, registers, stack)
    # the carry between the backward's chunks: tiny's at batch 64 (2 chunks), and at LONG (86)
    for key, (carry_batch, carry_length) in (("carry", (batch, length)), ("carry_long", LONG)):
        carry_u = torch.empty(sets, carry_batch, carry_length, dim, **meta)  # u and delta
        carry_bc = torch.empty(sets, carry_batch, carry_length, 16, **meta)  # B and C
        tiling = default_tilings(sets, carry_batch, dim, carry_length, carry_u.dtype)[1]
        run = _Launch(carry_u, carry_u, A, carry_bc, carry_bc, D, None, bias, (False, True), True, tiling)
        flags = run.carry_launch(backward=True)[1]
        sass, registers, stack = compile_sm90(
            scan_kernels.chunk_carry_kernel, flags, dict(batch=carry_batch, n_chunks=run.n_chunks, zero=0)
        )
        out[key] = _record(True, flags, sass, registers, stack)
        out[key]["n_chunks"] = run.n_chunks
        out[key]["loads_before_stores"] = [loads_before_stores(body) for body in innermost_loop_bodies(sass)]
    return out


def _record(default: bool, flags: dict, sass: str, registers: int, stack: int) -> dict:
    """One compiled kernel's entry: its flags, instruction counts (all, and per innermost loop),
    registers, stack bytes, the warps an SM holds."""
    loops, opcodes = innermost_loops(sass), counts(sass)
    return dict(
        default=default,
        flags=flags, instructions=sum(opcodes.values()), loop_instructions=[sum(x.values()) for x in loops],
        registers=registers, stack=stack, warps_per_sm=warps_per_sm(registers), sass=opcodes, loops=loops,
    )  # fmt: skip


def markdown(record: dict) -> str:
    """The table: a row a kernel and launch."""
    kernels = record["kernels"]
    rows = [
        "| kernel | launch | registers | warps an SM | stack bytes | instructions | per innermost loop |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, k in kernels.items():
        name, flags = key.partition("_")[0], k["flags"]
        loops = " + ".join(str(n) for n in k["loop_instructions"])
        if name == "carry":
            name, launch = (
                "carry between chunks",
                f"{k['n_chunks']} chunks, {flags['GROUP']} chunks' loads at once, {flags['BD']} channels a program",
            )
        else:
            launch = "bc_lanes" if flags["BC_LANES"] else "whole rows of B and C"
            if "SCRATCH_BITS" in flags:
                launch += f", a {flags['SCRATCH_BITS']}-bit scratch"
            if flags.get("KEEP_LAST"):
                launch += ", the last tile kept"
        launch += " (the default)" if k["default"] else ""
        cells = [name, launch, k["registers"], k["warps_per_sm"], k["stack"], k["instructions"], loops]
        rows.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(rows) + "\n\n" + measured_line(record) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="write the JSON here (and a .md table beside it)")
    args = parser.parse_args()
    kernels = compile_variants()
    if args.out is None:
        print(json.dumps(kernels))
        return
    record = {"measured": provenance(f"ptxas for sm_90 (Triton {triton.__version__}), no GPU"), "kernels": kernels}
    write_json(args.out, record)
    write_text(args.out.with_suffix(".md"), markdown(record))
    if args.out.resolve() == (DATA / "scan_sass.json").resolve():
        render_docs(names=["scan-sass"])
    print(markdown(record))


if __name__ == "__main__":
    main()
