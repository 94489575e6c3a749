"""Small audio files (good and broken) for tests, written in the real datasets' formats."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf


def tone(path, seconds=1.0, sr=16000, channels=1, subtype="PCM_16", freq=440.0, fmt=None) -> Path:
    """A tone with a little noise, written a million frames at a time (an hour-long one stays small)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = int(seconds * sr)
    rng = np.random.default_rng(abs(hash(str(path))) % 2**32)
    with sf.SoundFile(str(path), "w", samplerate=sr, channels=channels, subtype=subtype, format=fmt) as f:
        for start in range(0, frames, 1 << 20):
            t = np.arange(start, min(frames, start + (1 << 20))) / sr
            x = 0.3 * np.sin(2 * np.pi * freq * t) + 0.05 * rng.standard_normal(len(t), dtype=np.float32)
            f.write(np.stack([x * (1 - 0.3 * c) for c in range(channels)], axis=1).astype(np.float32))
    return path


def empty_file(path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def text_as_wav(path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("this is not audio\n")
    return path


def truncated_wav(path) -> Path:
    """A WAV whose header promises more data than the file has, cut inside the header."""
    path = tone(path)
    path.write_bytes(path.read_bytes()[:30])
    return path


def nan_wav(path, seconds=0.5, sr=16000) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    x = np.zeros(int(seconds * sr), np.float32)
    x[100] = np.nan
    sf.write(str(path), x, sr, subtype="FLOAT")
    return path
