"""A DDP-aware sampler that can resume in the middle of an epoch.

Every epoch draws one global order from (seed, epoch): a permutation, or weighted draws with
replacement. Rank r takes positions r, r + W, r + 2W, ... so ranks see disjoint parts that
together cover the epoch. After a restart it starts at the position of the global order where the
run stopped (the samples all ranks had taken), so no sample is repeated or skipped, whatever the
number of ranks before and after. It subclasses DistributedSampler so Lightning leaves it in place.

It yields (index, key) pairs: key = (seed, epoch, position in the epoch's global order) seeds that
sample's augmentation (augment.SampleRandom), so a resumed run draws what the uninterrupted one
drew, whichever worker loads the sample.
"""

from __future__ import annotations

import torch
from torch.utils.data import DistributedSampler


class ResumableSampler(DistributedSampler):
    def __init__(
        self,
        num_samples: int,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        seed: int = 0,
        weights: torch.Tensor | None = None,
        draws: int | None = None,
        drop_last: bool = False,
    ):
        if num_samples <= 0:
            raise ValueError("cannot sample from an empty dataset")
        super().__init__(range(num_samples), num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed)
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.double)
        self.draws = draws or num_samples
        self.drop_last = drop_last
        self._start = 0  # position in the global order where the next iteration starts
        self._start_epoch = None  # the epoch that position belongs to (None: whichever comes next)

    def _global_order(self) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        if self.weights is not None:
            return torch.multinomial(self.weights, self.draws, replacement=True, generator=g)
        if self.shuffle:
            return torch.randperm(len(self.dataset), generator=g)
        return torch.arange(len(self.dataset))

    def __len__(self) -> int:
        total = self.draws if self.weights is not None else len(self.dataset)
        if self.drop_last:
            return total // self.num_replicas
        return -(-total // self.num_replicas)

    def __iter__(self):
        order = self._global_order()
        start = self._start if self._start_epoch in (None, self.epoch) else 0
        self._start, self._start_epoch = 0, None
        remaining = len(order) - start
        per_rank = remaining // self.num_replicas if self.drop_last else -(-remaining // self.num_replicas)
        end = start + per_rank * self.num_replicas
        if end > len(order):  # pad by wrapping, as DistributedSampler does
            order = torch.cat([order, order[: end - len(order)]])
        positions = range(start + self.rank, end, self.num_replicas)
        return iter([(int(order[p]), (self.seed, self.epoch, p)) for p in positions])

    def resume_at(self, position: int, epoch: int | None = None) -> None:
        """Resume: the next iteration starts at this position of the epoch's global order (the
        samples every rank took before the stop: batches done x the global batch). With `epoch`,
        only if the next iteration is of that epoch: a stop at an epoch's end resumes in the next
        epoch, which starts at its beginning."""
        self._start, self._start_epoch = position, epoch
