"""Audio of any length for a patch encoder trained on fixed-length inputs: windows of the training
length whose patch columns tile time on one regular grid. The HEAR API and the s3prl upstream both
load an export (`load_frontend`) and embed through it.

A window of W frames holds `columns` = (W - tshape) // tstride + 1 patch columns. Consecutive windows
start `hop` = columns * tstride frames apart (they overlap when tstride does not divide W - tshape +
tstride), so column j of window k starts at frame (k * columns + j) * tstride: one column every
tstride frames across the whole clip, wherever the windows meet. The fbank of the clip alone is cut,
so what a clip gives never depends on the clips batched with it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from src.data.audio import KALDI, FbankConfig, fbank, normalise, pad_or_cut
from src.models.pretrained import build_pretrained, read_pretrained
from src.utils.errors import UserError


@dataclass(frozen=True)
class WindowGrid:
    window_frames: int
    tshape: int
    tstride: int
    fbank_config: FbankConfig = KALDI

    @property
    def columns(self) -> int:
        """Patch columns per window."""
        return (self.window_frames - self.tshape) // self.tstride + 1

    @property
    def hop(self) -> int:
        """Frames between the starts of consecutive windows."""
        return self.columns * self.tstride

    @property
    def samples_per_column(self) -> int:
        return round(self.fbank_config.sample_rate * self.fbank_config.frame_shift / 1000) * self.tstride

    @property
    def first_centre_ms(self) -> float:
        """Frame i spans [i shift, i shift + length) ms, so a patch of frames [s, s + tshape) is centred
        at s shift + ((tshape - 1) shift + length) / 2; this is that centre for s = 0."""
        return ((self.tshape - 1) * self.fbank_config.frame_shift + self.fbank_config.frame_length) / 2

    def centres_ms(self, n_columns: int) -> Tensor:
        """(n_columns,) the centre of each column's patch in ms, float64 (float32 would be 0.5 ms off
        after 2.3 hours)."""
        starts = torch.arange(n_columns, dtype=torch.float64) * self.tstride
        return starts * self.fbank_config.frame_shift + self.first_centre_ms

    def columns_inside(self, n_samples: int) -> int:
        """How many columns have their centre inside n_samples of audio (at least one)."""
        duration_ms = 1000 * n_samples / self.fbank_config.sample_rate
        step_ms = self.tstride * self.fbank_config.frame_shift
        return max(1, math.ceil((duration_ms - self.first_centre_ms) / step_ms))

    def windows(self, wave: Tensor, mean: float, std: float, n_columns: int) -> Tensor:
        """One clip (n_samples,) -> (n_windows, 1, mel bins, window_frames): its fbank zero-padded at
        the end (then normalised, as training pads) to cover n_columns columns, cut into windows."""
        spec = fbank(wave.float().reshape(1, -1).cpu(), self.fbank_config)  # (1, F, frames)
        n_windows = math.ceil(n_columns / self.columns)
        spec = normalise(pad_or_cut(spec, (n_windows - 1) * self.hop + self.window_frames), mean, std)
        return spec.unfold(-1, self.window_frames, self.hop).permute(2, 0, 1, 3).contiguous()

    def stream(self, read, n_samples: int, dc: float, mean: float, std: float, n_columns: int, per_chunk: int):
        """What windows() gives for a long clip, `per_chunk` windows at a time, reading only the
        samples they need: read(start, stop) -> (stop - start,) samples at 16 kHz; dc: the clip's
        mean (removed from every part, as fbank removes the whole clip's)."""
        cfg = self.fbank_config
        shift = round(cfg.sample_rate * cfg.frame_shift / 1000)
        length = round(cfg.sample_rate * cfg.frame_length / 1000)
        real = 1 + (n_samples - length) // shift  # frames fbank makes of the whole clip (snip_edges)
        n_windows = math.ceil(n_columns / self.columns)
        for w0 in range(0, n_windows, per_chunk):
            w1 = min(n_windows, w0 + per_chunk)
            f0, f1 = w0 * self.hop, (w1 - 1) * self.hop + self.window_frames  # the frames these windows cover
            last = min(f1, real)
            if last > f0:
                part = read(f0 * shift, (last - 1) * shift + length).reshape(1, -1)
                spec = fbank(part, cfg, dc=dc)  # (1, F, last - f0): the clip's frames f0 ... last - 1
            else:
                spec = torch.zeros(1, cfg.num_mel_bins, 0)
            spec = normalise(pad_or_cut(spec, f1 - f0), mean, std)  # zeros past the clip's end, as windows()
            yield spec.unfold(-1, self.window_frames, self.hop).permute(2, 0, 1, 3).contiguous()

    def column_tokens(self, tokens: Tensor, f_dim: int, n_columns: int) -> Tensor:
        """Encoder patch tokens of a clip's windows, (n_windows, f_dim * columns, D), frequency-major
        -> (n_columns, f_dim, D): the clip's columns in time order."""
        n_windows, _, dim = tokens.shape
        grid = tokens.reshape(n_windows, f_dim, self.columns, dim).transpose(1, 2)  # (n, columns, f, D)
        return grid.reshape(n_windows * self.columns, f_dim, dim)[:n_columns]


def grid_of(encoder, window_frames: int) -> WindowGrid:
    """The window grid of an encoder's patches for windows of window_frames frames, on the fbank of
    the encoder's mel-bin count."""
    fbank_config = replace(KALDI, num_mel_bins=encoder.config.num_mel_bins)
    return WindowGrid(window_frames, encoder.patch_shape[1], encoder.patch_stride[1], fbank_config)


@dataclass
class Frontend:
    """An export ready to embed: the encoder (eval mode) for windows of its own input length, or
    of window_frames; the grid cutting audio into those windows; the normalisation of its data."""

    encoder: nn.Module
    grid: WindowGrid
    mean: float
    std: float


def load_frontend(
    path: str,
    window_frames: int | None = None,
    stride: tuple[int, int] | None = None,
    mean: float | None = None,
    std: float | None = None,
) -> Frontend:
    """window_frames: None for the export's target_length (its training input). stride: (fstride,
    tstride) to read the encoder with another patch stride (its kernel copied, positions adapted, as
    fine-tuning does). mean, std: None for the normalisation the export records; an export without
    one (written before exports recorded it) needs them given."""
    config, state, data = read_pretrained(path)
    mean = data["mean"] if mean is None and data else mean
    std = data["std"] if std is None and data else std
    if mean is None or std is None:
        raise UserError(
            f"{path} does not record the normalisation of its training data (an export from before that was "
            "recorded); pass mean and std (its data config's), or export it again with python -m src.export"
        )
    encoder = build_pretrained(config, state, str(path)).eval()
    window_frames = window_frames or config.target_length
    if stride is not None or window_frames != config.target_length:
        encoder.resize_input(window_frames, *(stride or (None, None)))
    return Frontend(encoder, grid_of(encoder, window_frames), float(mean), float(std))
