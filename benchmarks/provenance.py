"""What a benchmark record measured: the commit (with "+changes" when the working tree differed from
it), the date, torch's version and the card or CPU. Every script stores it under "measured"."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def commit() -> str:
    """The checked-out commit, short; "+changes" when tracked files differ from it (a copy of a working
    tree, as the GPU machine runs); "unknown" outside a git checkout. SSAMBA_COMMIT names it where the
    run has no .git (a copy of the tree sent to another machine)."""
    if os.environ.get("SSAMBA_COMMIT"):
        return os.environ["SSAMBA_COMMIT"]
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        if sha.returncode != 0:
            return "unknown"
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True
        )
        return sha.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")
    except OSError:  # no git
        return "unknown"


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"CPU: {platform.processor() or platform.machine()}"


def provenance(device: str | None = None) -> dict:
    import torch

    return {
        "commit": commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "torch": torch.__version__,
        "device": device or device_name(),
    }


def measured_line(record: dict) -> str:
    """The sentence under a table: what it measured."""
    m = record.get("measured") or {}
    return (
        f"Measured on {m.get('device', '?')}, commit {m.get('commit', '?')}, {m.get('date', '?')}, "
        f"torch {m.get('torch', '?')}."
    )
