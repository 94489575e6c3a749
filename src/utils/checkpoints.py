"""Checkpoint files that survive kills.

Lightning writes a checkpoint through fsspec's transaction, whose temp file lies in $TMPDIR: on
another filesystem (a tmpfs, a node-local disk) the final move is a copy onto the target, and a
kill during it leaves a truncated file. AtomicCheckpointIO writes beside the target (atomic_path)
and renames, so the previous checkpoint stays whole until the new one is complete; what a kill
leaves behind is a hidden temp file, which src/utils/io.py's `remove_partial_writes` clears when
the next run starts (src/utils/entry.py: run_folder). A full disk is one line naming the folder
and the space needed (a UserError), the previous checkpoint whole.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

from src.utils.errors import UserError
from src.utils.io import atomic_path


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict, path: _PATH, storage_options=None) -> None:
        try:
            with atomic_path(path) as tmp, open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())  # on disk before the rename makes it the checkpoint
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            folder = Path(path).parent
            kept = f"; the previous {Path(path).name} is kept" if Path(path).exists() else ""
            raise UserError(
                f"no space left in {folder} to write {Path(path).name} (about {_size(checkpoint) / 2**20:.0f} MiB "
                f"needed, {shutil.disk_usage(folder).free / 2**20:.0f} MiB free){kept}; free some space there "
                "and resume with ckpt_path=last"
            ) from None


def _size(checkpoint) -> int:
    """The bytes of the tensors in a checkpoint: about what its file takes."""
    if isinstance(checkpoint, torch.Tensor):
        return checkpoint.numel() * checkpoint.element_size()
    if isinstance(checkpoint, dict):
        return sum(_size(v) for v in checkpoint.values())
    if isinstance(checkpoint, (list, tuple)):
        return sum(_size(v) for v in checkpoint)
    return 0
