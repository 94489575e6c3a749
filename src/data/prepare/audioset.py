"""AudioSet in SSAST's layout: JSON manifests {"data": [{"wav": path, "labels": "/m/..,/m/.."}]}
plus class_labels_indices.csv (index, mid, display_name).

--root holds class_labels_indices.csv and the JSON files; each JSON's split is named from its file
name: "eval" -> eval, "unbal" -> unbalanced, "bal" -> balanced (AS-20K), otherwise the file stem.
Relative "wav" paths are resolved against the JSON's folder.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from src.data.prepare.common import Dataset, Entry, Prepared, require
from src.utils.errors import MissingInput, UserError


def split_name(json_path: Path) -> str:
    name = json_path.stem.lower()
    for key, split in (("eval", "eval"), ("unbal", "unbalanced"), ("bal", "balanced")):
        if key in name:
            return split
    return json_path.stem


def prepare(root: Path) -> Prepared:
    index_csv = require(
        root / "class_labels_indices.csv", "class_labels_indices.csv", "put AudioSet's label index next to the JSONs"
    )
    with open(index_csv, newline="", encoding="utf-8") as f:
        rows = sorted(csv.DictReader(f), key=lambda r: int(r["index"]))
    classes = [r["mid"] for r in rows]
    names = {r["mid"]: r["display_name"] for r in rows}
    jsons = sorted(root.glob("*.json"))
    if not jsons:
        raise MissingInput(f"{root}: no *.json manifests in SSAST's format found")
    entries, bad, seen = [], [], set()
    for js in jsons:
        split = split_name(js)
        try:
            data = json.loads(js.read_text(encoding="utf-8"))["data"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise UserError(f"{js}: not an SSAST manifest {{'data': [{{'wav': ..., 'labels': ...}}]}} ({e})") from e
        for item in data:
            path = Path(item["wav"])
            path = path if path.is_absolute() else js.parent / path
            labels = [m for m in item.get("labels", "").split(",") if m]
            unknown = [m for m in labels if m not in names]
            clip_id = f"{split}/{path.stem}"
            if unknown:
                bad.append({"id": clip_id, "path": str(path), "reason": f"labels not in the index: {unknown}"})
                continue
            if clip_id in seen:
                bad.append({"id": clip_id, "path": str(path), "reason": f"listed twice in {split}"})
                continue
            seen.add(clip_id)
            entries.append(Entry(clip_id, str(path), labels, split))
    return Prepared("audioset", entries, classes, multilabel=True, bad=bad, class_names=names)


DATASET = Dataset("audioset", prepare)
