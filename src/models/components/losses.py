"""The two SSL objectives of SSAST/SSAMBA (docs/official.md §6), vectorised over the batch.

pred, target: (B, M, P) predictions for, and true values of, the M masked patches (P = 256 values
of a 16x16 patch of the normalised fbank)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def patchify(spec: Tensor, patch_shape, patch_stride) -> Tensor:
    """(B, C, F, T) -> (B, L, C * fshape * tshape): every patch flattened frequency-major, in token
    order, as F.unfold gives them. Patches that do not overlap (pretraining's) are one reshape and
    copy; unfold would launch a kernel per sample."""
    fshape, tshape = patch_shape
    if tuple(patch_stride) != tuple(patch_shape):
        return F.unfold(spec, kernel_size=tuple(patch_shape), stride=tuple(patch_stride)).transpose(1, 2)
    batch, channels, freq, time = spec.shape
    f_dim, t_dim = freq // fshape, time // tshape
    grid = spec[:, :, : f_dim * fshape, : t_dim * tshape].reshape(batch, channels, f_dim, fshape, t_dim, tshape)
    return grid.permute(0, 2, 4, 1, 3, 5).reshape(batch, f_dim * t_dim, channels * fshape * tshape)


def info_nce(pred: Tensor, target: Tensor, softmax_dim: int = -1) -> tuple[Tensor, Tensor]:
    """Discriminative loss and masked-patch accuracy.

    S[b, j, k] = target_j . pred_k (no temperature, same-clip negatives). softmax_dim=-1 is the
    official code: normalise over predictions k for each target j; 0 is the paper's Eq. 1:
    normalise over targets j for each prediction k. The loss is -mean of log_softmax's diagonal;
    accuracy counts k with argmax_j softmax(S)[j, k] == k, as the official code does."""
    if softmax_dim not in (0, -1):
        raise ValueError(f"nce_softmax_dim must be -1 (official) or 0 (paper), got {softmax_dim}")
    scores = target @ pred.transpose(1, 2)  # (B, M, M)
    dim = -1 if softmax_dim == -1 else 1
    log_probs = scores.float().log_softmax(dim=dim)
    nce = -log_probs.diagonal(dim1=1, dim2=2).mean()
    right = torch.arange(scores.shape[1], device=scores.device)
    acc = (log_probs.argmax(dim=1) == right).float().mean()
    return nce, acc


def masked_mse(pred: Tensor, target: Tensor) -> Tensor:
    """Generative loss: mean squared error over every value of every masked patch."""
    return (pred.float() - target.float()).pow(2).mean()
