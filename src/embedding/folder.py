"""Embeddings of every audio file under a folder, written as .npy files beside their relative paths
(`python -m src.embedding` is the command)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
from tqdm import tqdm

from src.data.audio import AUDIO_EXTENSIONS, AudioError
from src.utils.errors import MissingInput
from src.utils.io import atomic_path


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)


def embed_folder(model, input_dir: Path, output_dir: Path, timestamps: bool = False) -> list[str]:
    files = sorted(p for p in input_dir.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS)
    if not files:
        raise MissingInput(f"{input_dir}: no .wav, .flac or .ogg files")
    stems = Counter(path.relative_to(input_dir).with_suffix("") for path in files)
    skipped = []
    for path in tqdm(files, desc="embed", unit="file"):
        try:
            emb, times = model.file_embeddings(path)  # a long file in parts: memory does not grow with it
        except AudioError as e:
            skipped.append(str(e))
            continue
        relative = path.relative_to(input_dir)
        # clip.wav -> clip.npy; when clip.wav and clip.flac both exist: clip.wav.npy and clip.flac.npy
        stem = output_dir / (relative if stems[relative.with_suffix("")] > 1 else relative.with_suffix(""))
        _save(Path(f"{stem}.npy"), emb.mean(0).cpu().numpy())
        if timestamps:
            _save(Path(f"{stem}.timestamps.npy"), emb.cpu().numpy())
            _save(Path(f"{stem}.times_ms.npy"), times.cpu().numpy())
    return skipped
