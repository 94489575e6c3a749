"""Augmentations of the official fine-tuning recipes (docs/official.md §8), in their order:
mixup (waveform or fbank, lambda ~ Beta(10, 10), soft labels), SpecAugment on the un-normalised
fbank, normalisation, then the optional noise-and-roll.

Every random draw comes from a sample's own generator (`SampleRandom`), seeded from (seed, epoch,
position in the epoch) by the sampler: a run resumed from a checkpoint draws the same crops, masks,
mixup partners and noise as the run it continues, in any DataLoader worker."""

from __future__ import annotations

from collections import Counter

import numpy as np
import torch
from torch import Tensor


class SampleRandom:
    """One sample's random numbers: numpy's for scalars, torch's for tensors, both from one key."""

    def __init__(self, key):
        self.np = np.random.default_rng(key)
        self.torch = torch.Generator().manual_seed(int(self.np.integers(2**62)))

    def uniform(self) -> float:
        return float(self.np.random())

    def integer(self, low: int, high: int) -> int:
        """Uniform in [low, high]."""
        return int(self.np.integers(low, high + 1))


def mixup_lambda(rand: SampleRandom) -> float:
    return float(rand.np.beta(10, 10))


def mix(a: Tensor, b: Tensor, lam: float) -> Tensor:
    """lam * a + (1 - lam) * b, with b zero-padded or cut to a's length along the last axis."""
    if b.shape[-1] < a.shape[-1]:
        b = torch.nn.functional.pad(b, (0, a.shape[-1] - b.shape[-1]))
    return lam * a + (1 - lam) * b[..., : a.shape[-1]]


def _mask_along(spec: Tensor, mask_param: int, axis: int, rand: SampleRandom) -> Tensor:
    """torchaudio's mask_along_axis (FrequencyMasking / TimeMasking, one mask): a band of width
    uniform in [0, mask_param) at a uniform start, set to 0."""
    value = torch.rand(1, generator=rand.torch) * mask_param
    min_value = torch.rand(1, generator=rand.torch) * (spec.shape[axis] - value)
    start, end = min_value.long(), min_value.long() + value.long()
    positions = torch.arange(spec.shape[axis])
    mask = (positions >= start) & (positions < end)
    return spec.masked_fill(mask.unsqueeze(-1) if axis == -2 else mask, 0.0)


def spec_augment(spec: Tensor, freqm: int, timem: int, rand: SampleRandom) -> Tensor:
    """FrequencyMasking(freqm) then TimeMasking(timem), as torchaudio's, on a (1, F, T) fbank."""
    if freqm:
        spec = _mask_along(spec, freqm, -2, rand)
    if timem:
        spec = _mask_along(spec, timem, -1, rand)
    return spec


def noise_and_roll(spec: Tensor, rand: SampleRandom) -> Tensor:
    """The official "noise" option: uniform noise of random scale, then a circular time shift."""
    spec = spec + torch.rand(spec.shape, generator=rand.torch) * rand.uniform() / 10
    return torch.roll(spec, rand.integer(-10, 9), dims=-1)


def balanced_weights(label_lists: list[list[str]]) -> torch.Tensor:
    """AudioSet class balancing as in SSAST's gen_weight_file: a clip weighs the sum over its
    labels of 1000 / (label count + 0.01)."""
    counts = Counter(label for labels in label_lists for label in labels)
    return torch.tensor(
        [sum(1000.0 / (counts[label] + 0.01) for label in labels) for labels in label_lists], dtype=torch.double
    )
