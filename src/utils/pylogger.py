"""A logger that prefixes the rank and, by default, speaks on rank zero only (multi-GPU safe)."""

from __future__ import annotations

import logging

from lightning_utilities.core.rank_zero import rank_prefixed_message, rank_zero_only


class RankedLogger(logging.LoggerAdapter):
    def __init__(self, name: str = __name__, rank_zero_only: bool = True):
        super().__init__(logging.getLogger(name), extra=None)
        self.rank_zero_only = rank_zero_only

    def log(self, level: int, msg: str, *args, **kwargs) -> None:
        if not self.isEnabledFor(level):
            return
        rank = getattr(rank_zero_only, "rank", 0)
        msg, kwargs = self.process(msg, kwargs)
        if not self.rank_zero_only or rank == 0:
            self.logger.log(level, rank_prefixed_message(msg, rank), *args, **kwargs)
