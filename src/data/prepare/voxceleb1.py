"""VoxCeleb1 identification: wav/<speaker>/<video>/<n>.wav plus iden_split.txt
("1 id10001/1zcIwhmdeo4/00001.wav": 1 train, 2 dev, 3 test)."""

from __future__ import annotations

from pathlib import Path

from src.data.prepare.common import Dataset, Entry, Prepared, require

SPLITS = {"1": "train", "2": "valid", "3": "test"}


def prepare(root: Path, split_file: Path | None = None) -> Prepared:
    split_file = require(
        split_file or root / "iden_split.txt", "iden_split.txt", "put VoxCeleb1's iden_split.txt in --root"
    )
    entries, bad = [], []
    for n, line in enumerate(split_file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or parts[0] not in SPLITS:
            bad.append({"id": f"line{n}", "path": str(split_file), "reason": f"line {n} is not '<1|2|3> <path>'"})
            continue
        rel = parts[1]
        speaker = rel.split("/")[0]
        entries.append(Entry(rel.rsplit(".", 1)[0], str(root / "wav" / rel), [speaker], SPLITS[parts[0]]))
    classes = sorted({e.labels[0] for e in entries})
    return Prepared("voxceleb1", entries, classes, bad=bad)


DATASET = Dataset("voxceleb1", prepare)
