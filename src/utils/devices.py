"""How the global batch splits across devices (the data and the entry points both ask)."""

from __future__ import annotations

from src.utils.errors import UserError


def per_device_batch(batch_size: int, world: int) -> int:
    """data.batch_size is the global batch: split it across the devices, or say how to fix it."""
    if batch_size % world:
        raise UserError(
            f"data.batch_size={batch_size} is not divisible by the {world} devices; "
            f"set data.batch_size to a multiple of {world} (it is the global batch size)"
        )
    return batch_size // world
