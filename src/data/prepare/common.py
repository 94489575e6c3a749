"""What every preparer shares: the manifest format, probing files, the report and the summary.

A manifest is JSON lines, one clip a line:
    {"id": ..., "path": absolute path, "duration": seconds, "labels": [class names],
     "split": "train" | "valid" | "test" | ..., "fold": int or null, "offset": seconds}
`offset` and `duration` select a segment of the file (e.g. 1 s of background noise as _silence_).
Next to it: classes.json (the label vocabulary, in index order), bad_files.jsonl (what was
skipped and why) and summary.json.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from src.data.audio import AudioError, audio_duration
from src.utils.errors import MissingInput, UserError
from src.utils.io import write_json, write_jsonl


@dataclass(frozen=True)
class Dataset:
    """What a preparer module declares about its dataset, once, as `DATASET`: the CLI
    (`python -m src.data.prepare`), the downloads and the tests read it from the registry
    (src/data/prepare/__init__.py's DATASETS).

    arguments: the dataset's own command-line options, (flags, argparse keyword arguments) each;
    options: prepare()'s keyword arguments from the parsed command line; download: fetches the
    dataset into a root folder (root, parsed arguments), None when it cannot be fetched; variants:
    the prepare() keyword sets the tests prepare from one layout (Speech Commands: its tasks)."""

    name: str
    prepare: Callable[..., Prepared]
    download: Callable | None = None
    arguments: tuple = ()
    options: Callable = lambda args: {}
    variants: tuple = ({},)


@dataclass
class Entry:
    id: str
    path: str
    labels: list[str] = field(default_factory=list)
    split: str | None = None
    fold: int | None = None
    offset: float = 0.0
    duration: float | None = None  # None: read from the file's header


@dataclass
class Prepared:
    """A preparer's result before probing: clips, the label vocabulary, and what it already rejected."""

    name: str
    entries: list[Entry]
    classes: list[str]
    multilabel: bool = False
    bad: list[dict] = field(default_factory=list)
    class_names: dict[str, str] = field(default_factory=dict)  # e.g. AudioSet mid -> display name
    notes: list[str] = field(default_factory=list)


def require(path: Path, what: str, fix: str) -> Path:
    if not path.exists():
        raise MissingInput(f"{path}: {what} not found. {fix}")
    return path


def stable_fraction(key: str) -> float:
    """A number in [0, 1) fixed by `key` (for reproducible splits)."""
    return int(hashlib.sha1(key.encode("utf-8", "surrogateescape")).hexdigest()[:8], 16) / 0x100000000


def _probe(entry: Entry):
    if not os.path.lexists(entry.path):  # the dataset's own list names it; re-preparing will not bring it back
        return entry, "not on disk: the dataset's own list (its CSV or JSON) names it, but the file is missing"
    try:
        total = audio_duration(entry.path)
    except AudioError as e:
        return entry, str(e)
    if entry.duration is None:
        entry.duration = total
    return entry, None


def finalize(prepared: Prepared, out_dir: str | Path, workers: int | None = None) -> dict:
    """Probe every file (header only), write the manifest and its report, print a summary."""
    out_dir = Path(out_dir)
    entries = prepared.entries
    if not entries:
        raise UserError(f"{prepared.name}: no clips found; check --root points at the dataset's top folder")
    good, bad = [], list(prepared.bad)
    workers = workers or min(16, (os.cpu_count() or 2) * 4)
    with ThreadPoolExecutor(workers) as pool:
        results = pool.map(_probe, entries)
        for entry, error in tqdm(results, total=len(entries), desc=f"probe {prepared.name}", unit="file"):
            if error is None:
                good.append(entry)
            else:
                bad.append({"id": entry.id, "path": entry.path, "reason": error})
    for label in {label for e in good for label in e.labels}:
        if label not in prepared.classes:
            raise ValueError(f"{prepared.name}: label {label!r} is not in the class list; the preparer is out of date")

    rows = [{k: v for k, v in asdict(e).items()} for e in good]
    write_jsonl(out_dir / "manifest.jsonl", rows)
    write_json(
        out_dir / "classes.json",
        {"classes": prepared.classes, "multilabel": prepared.multilabel, "names": prepared.class_names},
    )
    write_jsonl(out_dir / "bad_files.jsonl", bad)
    splits = Counter(e.split if e.split is not None else f"fold{e.fold}" for e in good)
    summary = {
        "dataset": prepared.name,
        "clips": len(good),
        "skipped": len(bad),
        "classes": len(prepared.classes),
        "hours": round(sum(e.duration for e in good) / 3600, 3),
        "per_split": dict(sorted(splits.items())),
        "notes": prepared.notes,
    }
    write_json(out_dir / "summary.json", summary)
    print(f"{prepared.name}: {len(good)} clips ({summary['hours']} h) in {out_dir}/manifest.jsonl")
    print("  per split: " + ", ".join(f"{k} {v}" for k, v in summary["per_split"].items()))
    print(f"  classes: {len(prepared.classes)}")
    for note in prepared.notes:
        print(f"  note: {note}")
    if bad:
        print(f"  skipped {len(bad)} bad files, listed in {out_dir}/bad_files.jsonl; first: {bad[0]['reason']}")
    return summary
