"""Audio in, kaldi fbank out: decode (soundfile), mono, 16 kHz, fbank exactly as SSAST/SSAMBA.

Spectrograms are (1, mel bins, frames) everywhere in the project: the encoder's (B, 1, F, T)
input and torchaudio's SpecAugment layout.
"""

from __future__ import annotations

import functools
import os
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from src.utils.errors import UserError

SAMPLE_RATE = 16000
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")


class AudioError(ValueError):
    """A file that cannot be used as audio (unreadable, empty, not audio, NaN or inf samples)."""


@dataclass(frozen=True)
class FbankConfig:
    """torchaudio.compliance.kaldi.fbank arguments of SSAST/SSAMBA (official_ssamba.md 2.1)."""

    num_mel_bins: int = 128
    frame_length: float = 25.0  # ms
    frame_shift: float = 10.0  # ms
    window_type: str = "hanning"
    htk_compat: bool = True
    use_energy: bool = False
    dither: float = 0.0
    sample_rate: int = SAMPLE_RATE

    def to_dict(self) -> dict:
        return asdict(self)


def load_audio(path: str | Path, offset: float = 0.0, duration: float | None = None) -> Tensor:
    """Decode WAV/FLAC/OGG, mix to mono, resample to 16 kHz: (1, samples) float32 in [-1, 1]."""
    path = Path(path)
    _exists(path)
    sf = _soundfile()
    try:
        with sf.SoundFile(os.fsencode(path)) as f:  # bytes: names that are not valid UTF-8 work too
            sr = f.samplerate
            if offset:
                f.seek(int(offset * sr))
            frames = -1 if duration is None else int(round(duration * sr))
            data = f.read(frames=frames, dtype="float32", always_2d=True)  # (samples, channels)
    except (sf.LibsndfileError, RuntimeError, OSError) as e:
        raise AudioError(
            f"{path}: cannot decode audio ({e}); check that the file is WAV, FLAC or OGG and complete"
        ) from e
    if data.shape[0] == 0:
        raise AudioError(f"{path}: no samples (empty or truncated file)")
    if not np.isfinite(data).all():
        raise AudioError(f"{path}: NaN or inf samples")
    wave = torch.from_numpy(data.mean(axis=1)).unsqueeze(0)  # (1, samples)
    if sr != SAMPLE_RATE:
        wave = resample(wave, sr)
    return wave


def audio_duration(path: str | Path) -> float:
    """Seconds of audio, from the header (no decoding)."""
    _exists(Path(path))
    sf = _soundfile()
    try:
        info = sf.info(os.fsencode(path))
    except (sf.LibsndfileError, RuntimeError, OSError) as e:
        raise AudioError(f"{path}: cannot read the audio header ({e})") from e
    if info.frames <= 0:
        raise AudioError(f"{path}: no samples (empty or truncated file)")
    return info.frames / info.samplerate


KALDI = FbankConfig()


@functools.cache
def torchaudio_module():
    """torchaudio, imported here only: a torchaudio built for another torch is one line naming both.

    torchaudio 2.11.1 says it needs torch >= 2.11 but loads only with torch >= 2.13 (undefined
    symbols in libtorchaudio.so); the lock pins torch 2.11.0 with torchaudio 2.11.0.
    """
    try:
        import torchaudio
    except (ImportError, OSError) as e:
        try:
            installed = f"torchaudio {metadata.version('torchaudio')}"
        except metadata.PackageNotFoundError:
            installed = "torchaudio (not installed)"
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(
            f"{installed} does not load with torch {torch.__version__} ({why}); install a matching pair: "
            "`make install` (the lock: torch 2.11.0 + torchaudio 2.11.0), or `pip install torchaudio==2.11.0` "
            "beside torch 2.11-2.12, torchaudio 2.11.1 beside torch >= 2.13"
        ) from e
    return torchaudio


def resample(wave: Tensor, rate: int, new_rate: int = SAMPLE_RATE) -> Tensor:
    """torchaudio's band-limited sinc resampling of (..., samples)."""
    return torchaudio_module().functional.resample(wave, rate, new_rate)


def _soundfile():
    """soundfile, imported on first decode: training from feature stores needs no audio library."""
    import soundfile

    return soundfile


def _exists(path: Path) -> None:
    """A readable file is there, or an AudioError saying what is there instead."""
    if path.is_file():
        return
    if path.is_symlink():
        try:
            path.resolve(strict=True)
            why = "a link to something that is not a file"
        except RuntimeError:
            why = "a symbolic link in a loop"
        except OSError:
            why = "a broken symbolic link (its target is gone)"
        raise AudioError(f"{path}: {why}; fix or remove the link")
    if path.is_dir():
        raise AudioError(f"{path}: a folder, not an audio file; rename it or leave it out of the dataset")
    if path.exists():
        raise AudioError(f"{path}: not a regular file (a device or a pipe); leave it out of the dataset")
    raise AudioError(f"{path}: file is gone (listed in the manifest but not on disk); re-run the preparer")


def fbank(wave: Tensor, config: FbankConfig = KALDI) -> Tensor:
    """(1, samples) at config.sample_rate -> (1, mel bins, frames) log-mel fbank, mean removed first."""
    min_samples = int(config.sample_rate * config.frame_length / 1000)
    if wave.shape[-1] < min_samples:  # shorter than one window: pad so one frame exists
        wave = torch.nn.functional.pad(wave, (0, min_samples - wave.shape[-1]))
    wave = wave - wave.mean()
    feats = torchaudio_module().compliance.kaldi.fbank(
        wave,
        htk_compat=config.htk_compat,
        sample_frequency=config.sample_rate,
        use_energy=config.use_energy,
        window_type=config.window_type,
        num_mel_bins=config.num_mel_bins,
        dither=config.dither,
        frame_length=config.frame_length,
        frame_shift=config.frame_shift,
    )  # (frames, mel)
    return feats.T.unsqueeze(0)  # (1, mel, frames)


def pad_or_cut(spec: Tensor, target_length: int) -> Tensor:
    """Zero-pad at the end or truncate the last (time) axis to target_length frames."""
    frames = spec.shape[-1]
    if frames < target_length:
        return torch.nn.functional.pad(spec, (0, target_length - frames))
    return spec[..., :target_length]


def normalize(spec: Tensor, mean: float, std: float) -> Tensor:
    """SSAST's (x - mean) / (2 std)."""
    return (spec - mean) / (2 * std)
