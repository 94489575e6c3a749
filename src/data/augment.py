"""Augmentations of the official fine-tuning recipes (official_ssamba.md 3.1), in their order:
mixup (waveform or fbank, lambda ~ Beta(10, 10), soft labels), SpecAugment on the un-normalised
fbank, normalisation, then the optional noise-and-roll."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import torch
import torchaudio
from torch import Tensor


def mixup_lambda() -> float:
    return float(np.random.beta(10, 10))


def mix(a: Tensor, b: Tensor, lam: float) -> Tensor:
    """lam * a + (1 - lam) * b, with b zero-padded or cut to a's length along the last axis."""
    if b.shape[-1] < a.shape[-1]:
        b = torch.nn.functional.pad(b, (0, a.shape[-1] - b.shape[-1]))
    return lam * a + (1 - lam) * b[..., : a.shape[-1]]


def spec_augment(spec: Tensor, freqm: int, timem: int) -> Tensor:
    """torchaudio's FrequencyMasking(freqm) then TimeMasking(timem) on a (1, F, T) fbank."""
    if freqm:
        spec = torchaudio.transforms.FrequencyMasking(freqm)(spec)
    if timem:
        spec = torchaudio.transforms.TimeMasking(timem)(spec)
    return spec


def noise_and_roll(spec: Tensor) -> Tensor:
    """The official "noise" option: uniform noise of random scale, then a circular time shift."""
    spec = spec + torch.rand_like(spec) * np.random.rand() / 10
    return torch.roll(spec, random.randint(-10, 9), dims=-1)


def balanced_weights(label_lists: list[list[str]]) -> torch.Tensor:
    """AudioSet class balancing as in SSAST's gen_weight_file: a clip weighs the sum over its
    labels of 1000 / (label count + 0.01)."""
    counts = Counter(label for labels in label_lists for label in labels)
    return torch.tensor(
        [sum(1000.0 / (counts[label] + 0.01) for label in labels) for labels in label_lists], dtype=torch.double
    )
