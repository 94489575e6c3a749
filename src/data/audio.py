"""Audio in, kaldi fbank out: decode (soundfile), mono, 16 kHz, fbank exactly as SSAST/SSAMBA.

Spectrograms are (1, mel bins, frames) everywhere in the project: the encoder's (B, 1, F, T)
input and torchaudio's SpecAugment layout.
"""

from __future__ import annotations

import functools
import math
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
    """torchaudio.compliance.kaldi.fbank arguments of SSAST/SSAMBA (docs/official.md §1)."""

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
    check_samples(path, data)
    wave = torch.from_numpy(data.mean(axis=1)).unsqueeze(0)  # (1, samples)
    if sr != SAMPLE_RATE:
        wave = resample(wave, sr)
    return wave


# decoded audio lies in [-1, 1]; float files may go beyond, but not by orders of magnitude
MAX_ABS_SAMPLE = 1e3


def check_samples(where, data) -> None:
    """Refuse NaN, inf and absurd values (beyond +-1e3: a float file of garbage), which would turn
    every embedding into NaN: an AudioError that starts with `where` (a file's path, or "audio")."""
    data = np.asarray(data)
    if not np.isfinite(data).all():
        raise AudioError(f"{where}: NaN or inf samples")
    if data.size and np.abs(data).max() > MAX_ABS_SAMPLE:
        raise AudioError(f"{where}: samples up to {np.abs(data).max():.3g}, beyond +-{MAX_ABS_SAMPLE:g}: not audio")


class AudioReader:
    """A file as 16 kHz mono float32 read by ranges, never decoded whole: long files in bounded
    memory. `read(start, stop)` gives what load_audio(path)[0, start:stop] gives: each range is
    decoded with a second of context on both sides from a sample where the resampler's phase
    starts again, so its output is the whole file's resampled output, bit for bit."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        _exists(self.path)
        sf = _soundfile()
        try:
            info = sf.info(os.fsencode(self.path))
        except (sf.LibsndfileError, RuntimeError, OSError) as e:
            raise AudioError(f"{self.path}: cannot read the audio header ({e})") from e
        if info.frames <= 0:
            raise AudioError(f"{self.path}: no samples (empty or truncated file)")
        self.rate, self.frames = info.samplerate, info.frames
        self.n_samples = -(-self.frames * SAMPLE_RATE // self.rate)  # resample's output length

    def read(self, start: int, stop: int) -> Tensor:
        """Samples [start, stop) at 16 kHz: (stop - start,) float32."""
        if self.rate == SAMPLE_RATE:
            return self._decode(start, min(stop, self.frames))
        unit = self.rate // math.gcd(self.rate, SAMPLE_RATE)  # the resampler's phase repeats every `unit` samples
        first = max(0, (start * self.rate // SAMPLE_RATE - self.rate) // unit * unit)
        last = min(self.frames, -(-stop * self.rate // SAMPLE_RATE) + self.rate)
        out = resample(self._decode(first, last).unsqueeze(0), self.rate)[0]
        offset = first * SAMPLE_RATE // self.rate
        return out[start - offset : stop - offset]

    def _decode(self, first: int, last: int) -> Tensor:
        sf = _soundfile()
        try:
            with sf.SoundFile(os.fsencode(self.path)) as f:
                f.seek(first)
                data = f.read(frames=last - first, dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError, OSError) as e:
            raise AudioError(f"{self.path}: cannot decode audio ({e}); check that the file is complete") from e
        check_samples(self.path, data)
        return torch.from_numpy(data.mean(axis=1))

    def mean(self, block: int = 60 * SAMPLE_RATE) -> float:
        """The mean of the 16 kHz samples (what fbank removes first), read block by block."""
        total = 0.0
        for start in range(0, self.n_samples, block):
            total += self.read(start, min(start + block, self.n_samples)).double().sum().item()
        return total / self.n_samples


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


def fbank(wave: Tensor, config: FbankConfig = KALDI, dc: float | None = None) -> Tensor:
    """(1, samples) at config.sample_rate -> (1, mel bins, frames) log-mel fbank, mean removed first.
    dc: the mean to remove when wave is a part of a longer clip (the clip's, so parts give the
    frames the whole clip gives: each frame depends only on its own samples)."""
    min_samples = int(config.sample_rate * config.frame_length / 1000)
    if wave.shape[-1] < min_samples:  # shorter than one window: pad so one frame exists
        wave = torch.nn.functional.pad(wave, (0, min_samples - wave.shape[-1]))
    wave = wave - (wave.mean() if dc is None else dc)
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


def normalise(spec: Tensor, mean: float, std: float) -> Tensor:
    """SSAST's (x - mean) / (2 std)."""
    return (spec - mean) / (2 * std)
