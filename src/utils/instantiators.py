"""Instantiate the named entries of the callbacks / logger config groups."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig


def instantiate_group(cfg: DictConfig | None) -> list:
    if not cfg:
        return []
    if not isinstance(cfg, DictConfig):
        raise TypeError("callbacks and logger configs must be mappings of named entries")
    return [
        hydra.utils.instantiate(entry)
        for entry in cfg.values()
        if isinstance(entry, DictConfig) and "_target_" in entry
    ]
