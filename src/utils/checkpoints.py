"""Checkpoint files and run folders that survive kills and refuse to be shared.

Lightning writes a checkpoint through fsspec's transaction, whose temp file lies in $TMPDIR: on
another filesystem (a tmpfs, a node-local disk) the final move is a copy onto the target, and a
kill during it leaves a truncated file. AtomicCheckpointIO writes beside the target and renames,
so the previous checkpoint stays whole until the new one is complete; what a kill leaves behind
is a hidden temp file, which `remove_partial_writes` clears when the next run starts. A run folder
is held by one training at a time (`RunFolderLock`).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

from src.utils.errors import UserError
from src.utils.io import atomic_path

PARTIAL = ".*.tmp"  # what atomic_path names its temp files: .<name>.<random>.tmp


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict, path: _PATH, storage_options=None) -> None:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())  # on disk before the rename makes it the checkpoint


def remove_partial_writes(folder: str | Path) -> list[Path]:
    """Delete the temp files killed writes left in folder; returns them."""
    leftovers = sorted(Path(folder).glob(PARTIAL)) if Path(folder).is_dir() else []
    for path in leftovers:
        path.unlink(missing_ok=True)
    return leftovers


class RunFolderLock:
    """An exclusive lock on <run folder>/.lock for as long as the training runs. The kernel drops
    it when the process ends, however it ends, so a killed run never leaves a stale lock."""

    def __init__(self, folder: str | Path):
        self.path = Path(folder) / ".lock"
        self._file = None

    def __enter__(self) -> RunFolderLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a+")
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.close()
            raise UserError(
                f"{self.path.parent} is in use by another training; give this one its own folder "
                "(the default hydra.run.dir), or wait for the other to end before resuming in it"
            ) from None
        return self

    def __exit__(self, *exc) -> None:
        fcntl.flock(self._file, fcntl.LOCK_UN)
        self._file.close()
