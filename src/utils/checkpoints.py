"""Checkpoint files that survive kills.

Lightning writes a checkpoint through fsspec's transaction, whose temp file lies in $TMPDIR: on
another filesystem (a tmpfs, a node-local disk) the final move is a copy onto the target, and a
kill during it leaves a truncated file. AtomicCheckpointIO writes beside the target (atomic_path)
and renames, so the previous checkpoint stays whole until the new one is complete; what a kill
leaves behind is a hidden temp file, which src/utils/io.py's `remove_partial_writes` clears when
the next run starts (src/utils/entry.py: run_folder).
"""

from __future__ import annotations

import os

import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

from src.utils.io import atomic_path


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict, path: _PATH, storage_options=None) -> None:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())  # on disk before the rename makes it the checkpoint
