"""UrbanSound8K: metadata/UrbanSound8K.csv (slice_file_name, fsID, start, end, salience, fold,
classID, class) and audio/fold1..fold10/; 10 folds for cross-validation."""

from __future__ import annotations

import csv
from pathlib import Path

from src.data.prepare.common import Dataset, Entry, Prepared, require


def prepare(root: Path) -> Prepared:
    meta = require(
        root / "metadata" / "UrbanSound8K.csv", "metadata/UrbanSound8K.csv", "--root must be the UrbanSound8K folder"
    )
    with open(meta, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    by_id = {int(r["classID"]): r["class"] for r in rows}
    classes = [by_id[i] for i in sorted(by_id)]
    entries = [
        Entry(
            Path(r["slice_file_name"]).stem,
            str(root / "audio" / f"fold{r['fold']}" / r["slice_file_name"]),
            [r["class"]],
            fold=int(r["fold"]),
        )
        for r in rows
    ]
    return Prepared("urbansound8k", entries, classes)


DATASET = Dataset("urbansound8k", prepare)
