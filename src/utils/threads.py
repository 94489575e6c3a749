"""How many CPU threads torch uses in a run.

torch's default is one thread per core, each spinning while it waits for the others (OpenMP's
active wait): beside another busy process the spinning threads take the cores the work needs, and
a step of the demo on a shared 2-core machine took up to 30x as long as on an idle one. Two
settings fix it (docs/benchmarks/threads.md):
- the entry points set OMP_WAIT_POLICY=PASSIVE before torch loads OpenMP (unless it is set
  already): waiting threads sleep, and on the 2-core machine a demo step beside a busy neighbour
  took 1.7x its idle time rather than 32.6x; idle, the two policies were within the spread
  between runs (1.40 and 1.48 s);
- `threads: auto` gives each training process (one per device under DDP) its share of the
  physical cores it may run on. DataLoader workers are not subtracted: with passive waiting they
  share the cores well, and one thread where two cores exist was slower both idle and busy.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from src.utils.errors import UserError


def physical_cores() -> int:
    """Physical cores among the CPUs this process may run on (its affinity), not hyperthreads."""
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    cores, cpu, physical = set(), None, "0"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = (part.strip() for part in line.partition(":"))
            if key == "processor":
                cpu = int(value)
            elif key == "physical id":
                physical = value
            elif key == "core id" and cpu in allowed:
                cores.add((physical, value))
    except OSError:  # no /proc (macOS): logical CPUs
        pass
    return len(cores) or len(allowed)


def choose_threads(setting, processes: int = 1) -> int:
    """setting: "auto" or a number. auto: the physical cores / the training processes on this
    machine, at least 1."""
    if setting in (None, "auto"):
        return max(1, physical_cores() // max(1, processes))
    if isinstance(setting, bool) or not isinstance(setting, int) or setting < 1:
        raise UserError(f"threads={setting!r}: give a whole number of threads, at least 1, or auto")
    return setting


def set_threads(setting, processes: int = 1) -> int:
    """Apply choose_threads to torch (intra-op threads; inter-op threads to the same, when still
    allowed) and return the count."""
    n = choose_threads(setting, processes)
    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(n)
    except RuntimeError:  # only possible before the first parallel work; in-process tests may be later
        pass
    return n
