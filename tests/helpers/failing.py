"""A callback that makes one rank raise, for the DDP failure test."""

import lightning as L


class FailOnRank(L.Callback):
    def __init__(self, rank: int = 1, step: int = 2):
        self.rank, self.step = rank, step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_rank == self.rank and batch_idx == self.step:
            raise RuntimeError(f"boom on rank {self.rank}")
