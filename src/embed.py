"""Embed a folder of audio files:  python -m src.embed --model EXPORT --input DIR --output DIR

For every WAV/FLAC/OGG file under --input (decoded, mixed to mono, resampled to 16 kHz) writes
<output>/<relative path without its extension>.npy: the scene embedding (D,) (files that differ only
by extension, clip.wav and clip.flac, keep it: clip.wav.npy, clip.flac.npy), and with --timestamps also
<name>.timestamps.npy (T, D) and <name>.times_ms.npy (T,). Uses the HEAR API of
src/embedding/hear.py (the export's own normalisation and input length), on
CUDA when available (--device to choose). Unreadable files are skipped and listed at the end.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from src.data.audio import AUDIO_EXTENSIONS, AudioError
from src.embedding import hear
from src.utils.errors import MissingInput, command
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


@command
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m src.embed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="an export folder (python -m src.export ckpt_path=...)")
    parser.add_argument("--input", type=Path, required=True)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--timestamps", action="store_true", help="also write per-timestamp embeddings")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    model = hear.load_model(args.model)
    model.to(args.device)
    skipped = embed_folder(model, args.input, args.output, args.timestamps)
    print(f"embeddings in {args.output}")
    if skipped:
        print(f"skipped {len(skipped)} unreadable files:\n  " + "\n  ".join(skipped))
    return 0


if __name__ == "__main__":
    sys.exit(main())
