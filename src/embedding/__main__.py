"""Embed a folder of audio files:  python -m src.embedding --model EXPORT --input DIR --output DIR

For every WAV/FLAC/OGG file under --input (decoded, mixed to mono, resampled to 16 kHz) writes
<output>/<relative path without its extension>.npy: the scene embedding (D,) (files that differ only
by extension, clip.wav and clip.flac, keep it: clip.wav.npy, clip.flac.npy), and with --timestamps also
<name>.timestamps.npy (T, D) and <name>.times_ms.npy (T,). Uses the HEAR API of
hear.py (the export's own normalisation and input length), on
CUDA when available (--device to choose). Unreadable files are skipped and listed at the end.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from src.embedding import hear
from src.embedding.folder import embed_folder
from src.utils.errors import command


@command
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m src.embedding", description=__doc__.split("\n\n")[0])
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
