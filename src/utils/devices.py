"""Devices: how the global batch splits across them (the data and the entry points both ask), and the
dtype autocast computes in on one (the kernels and the modules both ask)."""

from __future__ import annotations

import torch

from src.utils.errors import UserError


def per_device_batch(batch_size: int, world: int) -> int:
    """data.batch_size is the global batch: split it across the devices, or say how to fix it."""
    if batch_size % world:
        raise UserError(
            f"data.batch_size={batch_size} is not divisible by the {world} devices; "
            f"set data.batch_size to a multiple of {world} (it is the global batch size)"
        )
    return batch_size // world


def autocast_dtype(device_type: str, otherwise: torch.dtype | None) -> torch.dtype | None:
    """The dtype autocast computes in on device_type where it is on, else `otherwise`."""
    return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else otherwise
