"""Small layers both encoders use."""

from __future__ import annotations

import torch.nn as nn
from torch import Tensor


class DropPath(nn.Module):
    """Stochastic depth: drop a sample's whole branch with probability p (timm's drop_path)."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        keep = self.draw(x)
        return x if keep is None else x * keep.view(-1, *(1,) * (x.dim() - 1)) / (1 - self.p)

    def draw(self, x: Tensor) -> Tensor | None:
        """Which samples keep their branch: (B,) of 0 and 1 in x's dtype, or None when nothing is dropped."""
        if self.p == 0.0 or not self.training:
            return None
        return x.new_empty(x.shape[0]).bernoulli_(1 - self.p)
