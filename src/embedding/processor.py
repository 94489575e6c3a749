"""What turns a waveform into an export's input, read from the export (a folder or a Hub id):

    processor = SSAMBAProcessor.from_pretrained("org/name")      # or an export folder
    encoder = from_pretrained("org/name")                         # src.models.pretrained
    tokens = encoder(processor(waveform, sampling_rate=44100))    # (n, 1, mel, frames) in

The training pipeline's own steps (src/data/audio.py): mono, resampled to the fbank's rate, Kaldi
fbank with the waveform's mean removed, cut or zero-padded to the encoder's target_length, then
SSAST's (x - mean) / (2 std) with the normalisation of the data it was trained on. The fbank
settings come from the export's data record (exports record them since they were added; older
ones and converted official checkpoints were all made with the Kaldi settings, KALDI).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from src.data.audio import KALDI, FbankConfig, fbank, load_audio, normalise, pad_or_cut, resample
from src.models.hub import resolve
from src.models.pretrained import export_config
from src.utils.errors import UserError


@dataclass(frozen=True)
class SSAMBAProcessor:
    fbank_config: FbankConfig
    target_length: int
    mean: float
    std: float

    @classmethod
    def from_pretrained(cls, path_or_id: str | Path, revision: str | None = None) -> SSAMBAProcessor:
        folder = resolve(path_or_id, revision)
        meta, config = export_config(folder)
        data = meta.get("data") or {}
        if "mean" not in data or "std" not in data:
            raise UserError(
                f"{path_or_id} does not record the normalisation of its training data; export it again with "
                "python -m src.export (or build SSAMBAProcessor with the mean and std of its data config)"
            )
        settings = data.get("fbank")
        fbank_config = FbankConfig(**settings) if settings else replace(KALDI, num_mel_bins=config.num_mel_bins)
        if fbank_config.num_mel_bins != config.num_mel_bins:
            raise UserError(
                f"{path_or_id}: its fbank has {fbank_config.num_mel_bins} mel bins, its encoder {config.num_mel_bins}"
            )
        return cls(fbank_config, config.target_length, float(data["mean"]), float(data["std"]))

    def __call__(self, audio, sampling_rate: int | None = None) -> Tensor:
        """audio: a waveform (samples,) or a batch of them (n, samples), numpy or torch, at
        sampling_rate (resampled when it is not the fbank's), or the path of an audio file ->
        (n, 1, mel bins, target_length) float32, the encoder's input."""
        if isinstance(audio, (str, Path)):
            waves = load_audio(audio).unsqueeze(0)  # (1, 1, samples): mono, at 16 kHz
        else:
            if sampling_rate is None:
                raise UserError("SSAMBAProcessor: pass sampling_rate= with a waveform (the rate it was recorded at)")
            wave = torch.as_tensor(np.asarray(audio) if not isinstance(audio, Tensor) else audio, dtype=torch.float32)
            if wave.dim() not in (1, 2):
                raise UserError(f"SSAMBAProcessor: a waveform is (samples,) or (n, samples), got {tuple(wave.shape)}")
            wave = wave.reshape(-1, wave.shape[-1])
            if sampling_rate != self.fbank_config.sample_rate:
                wave = resample(wave, sampling_rate, self.fbank_config.sample_rate)
            waves = wave.unsqueeze(1)  # (n, 1, samples)
        specs = [pad_or_cut(fbank(w, self.fbank_config), self.target_length) for w in waves]
        return normalise(torch.stack(specs), self.mean, self.std)  # (n, 1, mel, frames)
