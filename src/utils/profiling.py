"""What the GPU ran in a torch.profiler stretch: per kernel name (copies and fills included) its
time and launches per step, how long the GPU was busy at all (overlapping work counted once), and
where it sat idle: short gaps between kernels (launch latency, also inside a CUDA graph) or long
ones, and what the host was doing during the long ones. benchmarks/kernel_profile.py and the
StepProfile callback share it."""

from __future__ import annotations

import heapq
from collections import defaultdict

import torch


def _device_events(prof) -> list:
    # device-side spans of record_function (e.g. "Optimizer.step#AdamW.step") overlap the kernels
    # they contain: not kernels, left out
    return [
        e
        for e in prof.events()
        if e.device_type == torch.autograd.DeviceType.CUDA and not getattr(e, "is_user_annotation", False)
    ]


def kernel_table(prof, steps: int) -> list[dict]:
    """[{"kernel", "us", "launches"}] per step, the most time first."""
    rows: dict[str, dict] = defaultdict(lambda: {"us": 0.0, "launches": 0})
    for event in _device_events(prof):
        row = rows[event.name]
        row["us"] += event.device_time_total / steps
        row["launches"] += 1 / steps
    return sorted(({"kernel": k, **v} for k, v in rows.items()), key=lambda r: -r["us"])


def kernel_markdown(kernels: list[dict], top: int, per: str = "iter") -> list[str]:
    """kernel_table's first `top` rows as a markdown table, each with its share of their sum."""
    total_us = sum(k["us"] for k in kernels) or 1.0
    lines = [f"| kernel | us / {per} | launches / {per} | share |", "| --- | --- | --- | --- |"]
    lines += [
        f"| `{k['kernel'][:90]}` | {k['us']:.0f} | {k['launches']:.0f} | {100 * k['us'] / total_us:.1f}% |"
        for k in kernels[:top]
    ]
    return lines


def busy_us(intervals: list[tuple[float, float]]) -> float:
    """The length of the union of (start, end) intervals: time the GPU ran anything."""
    return sum(end - start for start, end in _union(intervals))


def _union(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (start, end) intervals merged where they overlap, in order."""
    merged: list[list[float]] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(start, end) for start, end in merged]


GAP_BINS_US = (10.0, 100.0)  # under 10 us: launch latency; 10-100 us; 100 us and over: the host is late


def _gaps(busy: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """(start, end) of the idle stretches between merged busy intervals."""
    return [(end, next_start) for (_, end), (next_start, _) in zip(busy, busy[1:])]


def idle_gaps(intervals: list[tuple[float, float]], steps: int) -> dict[str, float]:
    """The GPU's idle time between its first and last work, per step, by the gaps' length (us)."""
    low, high = GAP_BINS_US
    bins = {f"under {low:.0f} us": 0.0, f"{low:.0f}-{high:.0f} us": 0.0, f"{high:.0f} us and over": 0.0}
    names = list(bins)
    for start, end in _gaps(_union(intervals)):
        gap = end - start
        bins[names[0] if gap < low else names[1] if gap < high else names[2]] += gap / steps
    return bins


def idle_words(gaps_us: dict[str, float]) -> str:
    """idle_gaps' bins in words, in ms: "under 10 us 5.62 ms, 10-100 us 1.49 ms, ..."."""
    return ", ".join(f"{name} {us / 1e3:.2f} ms" for name, us in gaps_us.items())


def host_during_long_gaps(gaps: list[tuple[float, float]], host_ops: list[tuple[str, float, float]], steps: int):
    """[{"op", "us"}] per step, the most first: each long gap's time given to the innermost host op
    (the shortest (name, start, end) span) running at the gap's middle, "(no op)" where none ran.
    One sweep over both sorted (a profile holds tens of thousands of host ops)."""
    totals: dict[str, float] = defaultdict(float)
    ops = sorted(host_ops, key=lambda op: op[1])
    running: list[tuple[float, float, str]] = []  # (duration, end, name): the shortest on top
    next_op = 0
    for start, end in sorted(gaps):
        middle = (start + end) / 2
        while next_op < len(ops) and ops[next_op][1] <= middle:
            name, op_start, op_end = ops[next_op]
            heapq.heappush(running, (op_end - op_start, op_end, name))
            next_op += 1
        while running and running[0][1] < middle:  # ended before this gap: before every later one too
            heapq.heappop(running)
        totals[running[0][2] if running else "(no op)"] += (end - start) / steps
    return sorted(({"op": k, "us": v} for k, v in totals.items()), key=lambda r: -r["us"])


def device_time(prof, steps: int, top: int = 10) -> tuple[float, dict]:
    """The GPU's busy time in the profiled stretch (us, overlapping work once) and its idle time:
    idle_gaps, and host_during_long_gaps for its gaps of 100 us and more. One pass over the events."""
    busy = _union([(e.time_range.start, e.time_range.end) for e in _device_events(prof)])
    long_gaps = [(start, end) for start, end in _gaps(busy) if end - start >= GAP_BINS_US[1]]
    host = [
        (e.name, e.time_range.start, e.time_range.end)
        for e in prof.events()
        if e.device_type == torch.autograd.DeviceType.CPU
    ]
    idle = {
        "gaps_us": idle_gaps(busy, steps),
        "long_gaps_by_host_op": host_during_long_gaps(long_gaps, host, steps)[:top],
    }
    return sum(end - start for start, end in busy), idle
