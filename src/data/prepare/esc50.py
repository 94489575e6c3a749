"""ESC-50: meta/esc50.csv (filename, fold, target, category, esc10, src_file, take) and audio/*.wav;
5 s 44.1 kHz clips, 5 folds for cross-validation."""

from __future__ import annotations

import csv
from pathlib import Path

from src.data.prepare import download
from src.data.prepare.common import Dataset, Entry, Prepared, require


def prepare(root: Path) -> Prepared:
    meta = require(root / "meta" / "esc50.csv", "meta/esc50.csv", "--root must be the ESC-50 folder (ESC-50-master/)")
    with open(meta, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    by_target = {int(r["target"]): r["category"] for r in rows}
    classes = [by_target[t] for t in sorted(by_target)]
    entries = [
        Entry(Path(r["filename"]).stem, str(root / "audio" / r["filename"]), [r["category"]], fold=int(r["fold"]))
        for r in rows
    ]
    return Prepared("esc50", entries, classes)


DATASET = Dataset("esc50", prepare, download=lambda root, args: download.download_esc50(root))
