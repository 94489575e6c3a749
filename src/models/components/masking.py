"""Which patches the SSL objectives mask (docs/official.md §5).

Every strategy returns a (B, L) bool mask with exactly `num_mask` True per row; the masked
positions as a (B, num_mask) index tensor are `mask_indices(mask, num_mask)`.

- "official" (the default): SSAST/SSAMBA's gen_maskid_patch, vectorised over the batch and drawn
  from torch's generator: the same distribution as the official loop, quirks included (patch 0 is
  never masked, a cluster's rows placed the grid's time patches apart (the official p_t_dim: 64 at
  1024 frames, 25 at 400), clusters that wrap across rows, clusters
  drawn until more than num_mask patches are covered, then the num_mask lowest positions kept,
  which is what truncating CPython's set of small ints does whenever it iterates in ascending
  order, as it does at the recipes' 250-400 of 512 and 24 of 64).
- "official_loop": gen_maskid_patch ported line by line (Python's `random` and set): one Python
  loop per sample (about 10x the vectorised draw: docs/benchmarks/masking.md), for parity tests only.
- "cluster": square clusters of 3-5 patches on the real (f, t) grid, no wrap-around, patch 0
  allowed; vectorised.
- "random": uniformly random patches.

tests/test_ssl.py compares the statistics of "official" and "official_loop" (counts, patch 0, the
masked share per row and column, neighbours) and shows where "cluster" differs from them.
"""

from __future__ import annotations

import random

import torch
from torch import Tensor

STRATEGIES = ("official", "official_loop", "cluster", "random")


def most_masked(strategy: str, num_patches: int) -> int:
    """How many of num_patches a strategy can mask: the official loop needs more candidates than it
    masks, and never masks patch 0."""
    return num_patches - 2 if strategy.startswith("official") else num_patches


def official_mask_ids(num_patches: int, num_mask: int, rng: random.Random, row_width: int = 64) -> list[int]:
    """gen_maskid_patch exactly as the official code runs it; row_width is its p_t_dim, the grid's
    number of time patches."""
    mask_id: list[int] = []
    cur_clus = rng.randrange(3) + 3  # cluster side in {3, 4, 5}, fixed for the sample
    while len(list(set(mask_id))) <= num_mask:
        start_id = rng.randrange(num_patches)
        cur_mask = []
        for i in range(cur_clus):
            for j in range(cur_clus):
                cand = start_id + row_width * i + j
                if 0 < cand < num_patches:
                    cur_mask.append(cand)
        mask_id = mask_id + cur_mask
    return list(set(mask_id))[:num_mask]


def official_mask_vectorised(
    batch: int, num_patches: int, num_mask: int, generator=None, device=None, row_width: int = 64
) -> Tensor:
    """gen_maskid_patch's distribution for a batch at once: (B, num_patches) bool, num_mask True per row."""
    _check(num_mask, most_masked("official", num_patches))
    side = torch.randint(3, 6, (batch, 1, 1), generator=generator, device=device)  # (B, 1, 1) per sample
    clusters = 4 * -(-num_mask // 9) + 16  # drawn ahead; the loop stops at the first that covers enough
    start = torch.randint(0, num_patches, (batch, clusters, 1), generator=generator, device=device)
    di, dj, in_square = _square(side)
    cand = start + row_width * di + dj  # (B, clusters, 25): flat positions, wrapping across rows
    keep = in_square & (cand > 0) & (cand < num_patches)
    first = _first_cluster(torch.where(keep, cand, num_patches), num_patches)  # (B, P)
    new = torch.zeros(batch, clusters + 1, device=device, dtype=torch.long)
    covered_after = new.scatter_add_(1, first, torch.ones_like(first))[:, :clusters].cumsum(1)  # (B, clusters)
    enough = covered_after > num_mask  # the loop's exit test after each cluster
    last = torch.where(enough.any(1), enough.float().argmax(1), clusters - 1)  # (B,)
    covered = first <= last[:, None]
    # the num_mask lowest covered positions; if the drawn clusters fell short, random others fill up
    noise = torch.rand(batch, num_patches, generator=generator, device=device)
    score = torch.where(covered, 2.0 + (num_patches - torch.arange(num_patches, device=device)) / num_patches, noise)
    score[:, 0] = -1.0  # patch 0 never
    return _top(score, num_mask)


def cluster_mask(batch: int, grid: tuple[int, int], num_mask: int, generator=None, device=None) -> Tensor:
    """Vectorised cluster masking on an (f, t) patch grid: (B, f*t) bool, num_mask True per row."""
    f_dim, t_dim = grid
    num_patches = f_dim * t_dim
    _check(num_mask, num_patches)
    side = torch.randint(3, 6, (batch, 1, 1), generator=generator, device=device)  # (B, 1, 1)
    starts = -(-3 * num_mask // 9) + 4  # enough clusters of the smallest size to cover num_mask
    f0 = torch.randint(0, f_dim, (batch, starts, 1), generator=generator, device=device)
    t0 = torch.randint(0, t_dim, (batch, starts, 1), generator=generator, device=device)
    di, dj, in_square = _square(side)
    f, t = f0 + di, t0 + dj  # (B, starts, 25)
    keep = in_square & (f < f_dim) & (t < t_dim)
    # like the official loop: clusters are taken in order until num_mask patches are covered, so
    # rank each patch by the first cluster covering it; the last cluster may be cut; if the
    # clusters cover too few, random other patches fill up
    first = _first_cluster(torch.where(keep, f * t_dim + t, num_patches), num_patches)  # (B, P)
    noise = torch.rand(batch, num_patches, generator=generator, device=device)
    score = torch.where(first < starts, (starts - first).float() + noise, noise - 1)
    return _top(score, num_mask)


def random_mask(batch: int, num_patches: int, num_mask: int, generator=None, device=None) -> Tensor:
    _check(num_mask, num_patches)
    return _top(torch.rand(batch, num_patches, generator=generator, device=device), num_mask)


def official_mask(
    batch: int, num_patches: int, num_mask: int, rng: random.Random, device=None, row_width: int = 64
) -> Tensor:
    _check(num_mask, most_masked("official_loop", num_patches))
    mask = torch.zeros(batch, num_patches, dtype=torch.bool)
    for b in range(batch):
        mask[b, official_mask_ids(num_patches, num_mask, rng, row_width)] = True
    return mask.to(device)


def make_mask(strategy: str, batch: int, grid, num_mask: int, seed: int | None = None, device=None):
    """Masks for a batch; a seed makes them reproducible (e.g. the same masks after a resume)."""
    if strategy == "official_loop":
        return official_mask(batch, grid[0] * grid[1], num_mask, random.Random(seed), device, row_width=grid[1])
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device or "cpu").manual_seed(seed)
    if strategy == "official":
        return official_mask_vectorised(
            batch, grid[0] * grid[1], num_mask, generator=generator, device=device, row_width=grid[1]
        )
    if strategy == "cluster":
        return cluster_mask(batch, grid, num_mask, generator=generator, device=device)
    if strategy == "random":
        return random_mask(batch, grid[0] * grid[1], num_mask, generator=generator, device=device)
    raise ValueError(f"unknown masking {strategy!r}; choose one of {STRATEGIES}")


def _square(side: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The offsets (row, column) of a 5x5 square, (25,) each, and which lie in each sample's
    side x side square: (B, 1, 25) from side (B, 1, 1)."""
    offsets = torch.arange(25, device=side.device)
    di, dj = offsets // 5, offsets % 5
    return di, dj, (di < side) & (dj < side)


def _first_cluster(flat: Tensor, num_patches: int) -> Tensor:
    """flat (B, C, 25): the patches each of C clusters covers (num_patches where none) -> (B, P) the
    first cluster covering each patch, C for a patch none covers."""
    batch, clusters = flat.shape[:2]
    cluster_id = torch.arange(clusters, device=flat.device).view(1, clusters, 1).expand_as(flat)
    first = torch.full((batch, num_patches + 1), clusters, device=flat.device)  # the last slot: the dump
    first.scatter_reduce_(1, flat.reshape(batch, -1), cluster_id.reshape(batch, -1), reduce="amin")
    return first[:, :num_patches]


def mask_indices(mask: Tensor, count: int) -> Tensor:
    """(B, L) bool with `count` True per row -> (B, count) positions, ascending. A stable sort, not
    nonzero(): nonzero's output size is known only on the host, a sync of the GPU every step."""
    return torch.argsort(mask.to(torch.uint8), dim=1, descending=True, stable=True)[:, :count]


def _top(score: Tensor, k: int) -> Tensor:
    mask = torch.zeros_like(score, dtype=torch.bool)
    return mask.scatter_(1, score.topk(k, dim=1).indices, True)


def _check(num_mask: int, available: int) -> None:
    if not 0 < num_mask <= available:
        raise ValueError(
            f"cannot mask {num_mask} of {available} patches; lower model.mask_patches or use a longer input"
        )
