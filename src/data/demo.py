"""The embedded demo corpus: synthetic speech in real datasets' layouts, made on the spot.

    python -m src.data.demo --out data/demo [--seed 0] [--per-word 120] [--unlabelled 1200]

writes
    <out>/speech_commands/     Speech Commands v0.02 layout: one folder per keyword, 1 s 16 kHz
                               WAVs named <speaker>_nohash_<n>.wav, validation_list.txt,
                               testing_list.txt and _background_noise_/
    <out>/librispeech/         LibriSpeech layout (train-demo/<speaker>/<chapter>/*.flac): unlabelled
                               phrases of several words, for pretraining

Speech comes from eSpeak NG (the espeakng-loader wheel ships the library and its voices; it is
driven through ctypes) across many voices, pitches and rates, mixed with noise at random SNRs.
Everything is deterministic given --seed. The demo goes through the same preparers as the real
datasets (speechcommands, librispeech).
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import os
import sys
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from tqdm import tqdm

from src.data.audio import resample
from src.utils.errors import command
from src.utils.io import atomic_path, write_text

SAMPLE_RATE = 16000
KEYWORDS = "yes no up down left right on off stop go zero one two three four five".split()
FILLER = "six seven eight nine bed bird cat dog house tree wow happy marvin sheila learn follow".split()
LANGUAGES = ["en", "en-us", "en-gb-x-rp", "en-gb-scotland", "en-029", "en-us-nyc"]
VARIANTS = ["m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5", "klatt", "klatt2", "klatt3"]
VARIANTS += ["croak", "whisper", "quincy", "steph", "edward", "iven", "john", "linda", "robert", "travis"]
ESPEAK_RATE, ESPEAK_PITCH, ESPEAK_RANGE = 1, 3, 4  # espeak_PARAMETER


class Espeak:
    """Just enough of libespeak-ng's C API: synchronous synthesis into a buffer."""

    def __init__(self):
        try:
            import espeakng_loader
        except ImportError as e:
            raise RuntimeError("the demo corpus needs espeakng-loader: pip install -e '.[demo]'") from e
        self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        data_parent = os.path.dirname(espeakng_loader.get_data_path())
        self.sample_rate = self.lib.espeak_Initialize(2, 0, data_parent.encode(), 0)  # AUDIO_OUTPUT_SYNCHRONOUS
        if self.sample_rate <= 0:
            raise RuntimeError("libespeak-ng failed to initialise")
        self._chunks: list[np.ndarray] = []
        callback_type = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
        self._callback = callback_type(self._collect)  # keep a reference: C holds the pointer
        self.lib.espeak_SetSynthCallback(self._callback)

    def _collect(self, wav, n, events) -> int:
        if n > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0

    def say(self, text: str, voice: str, rate: int, pitch: int, pitch_range: int) -> np.ndarray:
        """float32 samples at self.sample_rate."""
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise RuntimeError(f"eSpeak NG has no voice {voice!r}")
        for param, value in ((ESPEAK_RATE, rate), (ESPEAK_PITCH, pitch), (ESPEAK_RANGE, pitch_range)):
            self.lib.espeak_SetParameter(param, value, 0)
        self._chunks = []
        data = text.encode()
        self.lib.espeak_Synth(data, len(data) + 1, 0, 1, 0, 1, None, None)  # POS_CHARACTER, espeakCHARS_UTF8
        self.lib.espeak_Synchronize()
        samples = np.concatenate(self._chunks) if self._chunks else np.zeros(1, np.int16)
        return samples.astype(np.float32) / 32768.0


def _rng(seed: int, *key) -> np.random.Generator:
    digest = hashlib.sha256(repr((seed,) + key).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _speaker(rng: np.random.Generator) -> dict:
    return {
        "voice": f"{rng.choice(LANGUAGES)}+{rng.choice(VARIANTS)}",
        "rate": int(rng.integers(110, 230)),
        "pitch": int(rng.integers(15, 90)),
        "range": int(rng.integers(10, 90)),
    }


def _noise(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    white = rng.standard_normal(n).astype(np.float32)
    if kind == "white":
        x = white
    elif kind == "pink":  # 1/f spectrum
        spectrum = np.fft.rfft(white)
        spectrum /= np.sqrt(np.arange(1, len(spectrum) + 1))
        x = np.fft.irfft(spectrum, n)
    elif kind == "brown":
        x = np.cumsum(white)
        x -= np.convolve(x, np.ones(801) / 801, mode="same")  # remove the drift
    else:  # "hum": mains hum with harmonics and a little hiss
        t = np.arange(n) / SAMPLE_RATE
        x = sum(np.sin(2 * np.pi * 50 * h * t + rng.uniform(0, 6.28)) / h for h in (1, 2, 3, 5)) + 0.05 * white
    return (0.3 * x / (np.abs(x).max() + 1e-9)).astype(np.float32)


def _resample(x: np.ndarray, sr: int) -> np.ndarray:
    return resample(torch.from_numpy(x), sr).numpy()


def _mix_noise(speech: np.ndarray, noise_bank: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    noise = noise_bank[rng.integers(len(noise_bank))]
    start = rng.integers(0, len(noise) - len(speech))
    segment = noise[start : start + len(speech)]
    snr_db = rng.uniform(5, 30)
    gain = np.sqrt((speech**2).mean() / ((segment**2).mean() + 1e-12) / 10 ** (snr_db / 10))
    out = speech + gain * segment
    return (out / max(1.0, np.abs(out).max() / 0.99)).astype(np.float32)


def _write(path: Path, samples: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        sf.write(str(tmp), samples, SAMPLE_RATE, format=path.suffix[1:].upper(), subtype="PCM_16")


def generate(out: str | Path, seed: int = 0, per_word: int = 120, unlabelled: int = 1200, speakers: int = 60) -> Path:
    out = Path(out)
    tts = Espeak()
    noise_kinds = ["white", "pink", "brown", "hum"]
    noise_bank = [_noise(kind, 30 * SAMPLE_RATE, _rng(seed, "noise", kind)) for kind in noise_kinds]
    people = [_speaker(_rng(seed, "speaker", s)) for s in range(speakers)]
    sc = out / "speech_commands"
    for kind, noise in zip(noise_kinds, noise_bank):
        _write(sc / "_background_noise_" / f"{kind}_noise.wav", noise)

    valid, test = [], []
    for word in tqdm(KEYWORDS, desc="keywords", unit="word"):
        for n in range(per_word):
            rng = _rng(seed, "kw", word, n)
            s = int(rng.integers(speakers))
            p = people[s]
            speech = _resample(tts.say(word, p["voice"], p["rate"], p["pitch"], p["range"]), tts.sample_rate)
            speech = speech[:SAMPLE_RATE]
            clip = np.zeros(SAMPLE_RATE, np.float32)
            start = int(rng.integers(0, SAMPLE_RATE - len(speech) + 1))
            clip[start : start + len(speech)] = speech * rng.uniform(0.3, 1.0)
            name = f"{word}/{s:08x}_nohash_{n}.wav"
            _write(sc / name, _mix_noise(clip, noise_bank, rng))
            # held-out speakers, as in Speech Commands: 10% validation, 10% test
            (valid if s % 10 == 0 else test if s % 10 == 1 else []).append(name)
    write_text(sc / "validation_list.txt", "".join(f"{x}\n" for x in sorted(valid)))
    write_text(sc / "testing_list.txt", "".join(f"{x}\n" for x in sorted(test)))

    words = KEYWORDS + FILLER
    subset = out / "librispeech" / "train-demo"
    for n in tqdm(range(unlabelled), desc="unlabelled", unit="phrase"):
        rng = _rng(seed, "phrase", n)
        s = int(rng.integers(speakers))
        p = people[s]
        text = " ".join(rng.choice(words, size=int(rng.integers(6, 14))))
        speech = _resample(tts.say(text, p["voice"], p["rate"], p["pitch"], p["range"]), tts.sample_rate)
        speaker, chapter = 100 + s, 1000 + s
        _write(
            subset / f"{speaker}" / f"{chapter}" / f"{speaker}-{chapter}-{n:04d}.flac",
            _mix_noise(speech, noise_bank, rng),
        )
    print(f"demo corpus in {out}: {len(KEYWORDS)} keywords x {per_word} clips, {unlabelled} unlabelled phrases")
    return out


@command
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m src.data.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("data/demo"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per-word", type=int, default=120)
    parser.add_argument("--unlabelled", type=int, default=1200)
    args = parser.parse_args(argv)
    generate(args.out, args.seed, args.per_word, args.unlabelled)
    return 0


if __name__ == "__main__":
    sys.exit(main())
