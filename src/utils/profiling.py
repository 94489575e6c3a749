"""What the GPU ran in a torch.profiler stretch: per kernel name (copies and fills included) its
time and launches per step, and how long the GPU was busy at all (overlapping work counted once).
benchmarks/kernel_profile.py and the StepProfile callback share it."""

from __future__ import annotations

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
    total, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def device_busy_us(prof) -> float:
    return busy_us([(e.time_range.start, e.time_range.end) for e in _device_events(prof)])
