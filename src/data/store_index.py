"""A feature store's index as columns: one memory-mapped numpy array per field in <store>/index/.

index.jsonl (one JSON object a clip) stays the readable record; read into Python it costs about a
kilobyte a clip, and a DataLoader worker that touches those objects (reference counts) copies the
pages it touches: 2.3M clips, 8 processes x 17 loaders, ran to tens of GB. The columns cost a few
bytes a clip, load in milliseconds (nothing is parsed), and live in the page cache, which every
process maps once: a worker that reads every row adds no private memory.

    <store>/index/
        shard.npy, row.npy, n_frames.npy   int32, one a clip
        split.npy, fold.npy                int16 (split: a code into columns.json's splits; -1: none)
        label_start.npy                    int64, clips + 1: clip i's labels are labels[start[i]:start[i+1]]
        labels.npy                         int32 codes into columns.json's labels
        id_start.npy, ids.npy              int64 offsets, uint8: the ids' UTF-8 bytes end to end
        columns.json                       written last: the vocabularies, the row count, and the size and
                                           mtime of the index.jsonl they were made from (a newer one wins)
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from src.utils.io import atomic_path, read_jsonl, remove_partial_writes, write_json

FOLDER = "index"
ARRAYS = ("shard", "row", "n_frames", "split", "fold", "label_start", "labels", "id_start", "ids")


def _source_stamp(index_jsonl: Path) -> dict:
    stat = index_jsonl.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def columns_from_rows(rows: Iterable[dict]) -> tuple[dict[str, np.ndarray], dict]:
    """(the arrays, the vocabularies) of index rows, in one pass."""
    shard, row, n_frames, split, fold, label_start, labels, id_start = [], [], [], [], [], [0], [], [0]
    ids = bytearray()
    splits: dict[str, int] = {}
    vocab: dict[str, int] = {}
    for rec in rows:
        shard.append(rec["shard"])
        row.append(rec["row"])
        n_frames.append(rec["n_frames"])
        s = rec.get("split")
        split.append(-1 if s is None else splits.setdefault(s, len(splits)))
        f = rec.get("fold")
        fold.append(-1 if f is None else f)
        labels += [vocab.setdefault(label, len(vocab)) for label in rec.get("labels") or []]
        label_start.append(len(labels))
        ids += rec["id"].encode("utf-8", "surrogateescape")
        id_start.append(len(ids))
    arrays = {
        "shard": np.asarray(shard, np.int32),
        "row": np.asarray(row, np.int32),
        "n_frames": np.asarray(n_frames, np.int32),
        "split": np.asarray(split, np.int16),
        "fold": np.asarray(fold, np.int16),
        "label_start": np.asarray(label_start, np.int64),
        "labels": np.asarray(labels, np.int32),
        "id_start": np.asarray(id_start, np.int64),
        "ids": np.frombuffer(bytes(ids), np.uint8),
    }
    return arrays, {"splits": list(splits), "labels": list(vocab), "rows": len(shard)}


def write_columns(store: Path, rows: Iterable[dict]) -> None:
    """<store>/index/ from the rows of <store>/index.jsonl (written before it); each file atomically,
    columns.json last, so a reader never takes a half-written set."""
    folder = store / FOLDER
    folder.mkdir(exist_ok=True)
    remove_partial_writes(folder)  # what a killed write left (the caller holds the store)
    (folder / "columns.json").unlink(missing_ok=True)  # the old set is not read while the new one is written
    arrays, vocab = columns_from_rows(rows)
    for name, array in arrays.items():
        with atomic_path(folder / f"{name}.npy") as tmp:
            with open(tmp, "wb") as f:
                np.save(f, array)
    write_json(folder / "columns.json", {**vocab, "source": _source_stamp(store / "index.jsonl")})


def upgrade_index(store: str | Path) -> bool:
    """Write <store>/index/ from index.jsonl unless it is current; whether it wrote them."""
    store = Path(store)
    if columns_current(store):
        return False
    write_columns(store, read_jsonl(store / "index.jsonl"))
    return True


def columns_current(store: Path) -> bool:
    """Whether <store>/index/ is complete and made from today's index.jsonl."""
    meta_path = store / FOLDER / "columns.json"
    if not meta_path.exists():
        return False
    try:
        meta = json.loads(meta_path.read_text())
        return meta.get("source") == _source_stamp(store / "index.jsonl")
    except (ValueError, OSError):
        return False


class StoreIndex:
    """The index of a feature store: columns, and each clip's record as a dict on demand (`index[i]`,
    iteration). Memory-mapped from <store>/index/ when it is current; else built in memory from
    index.jsonl (a store from before the columns: `python -m src.data.shards verify --upgrade`
    writes them). Pickles as its folder, so DataLoader workers map the same files."""

    def __init__(self, store: str | Path):
        self.store = Path(store)
        self.mapped = columns_current(self.store)
        if self.mapped:
            meta = json.loads((self.store / FOLDER / "columns.json").read_text())
            self._arrays: dict[str, np.ndarray] | None = None
        else:
            self._arrays, meta = columns_from_rows(read_jsonl(self.store / "index.jsonl"))
        self.splits, self.labels, self.rows = meta["splits"], meta["labels"], meta["rows"]

    def __getstate__(self):
        state = dict(self.__dict__)
        if self.mapped:
            state["_arrays"] = None  # reopened by each process: the same pages, no copy
        return state

    def column(self, name: str) -> np.ndarray:
        if self._arrays is None:
            self._arrays = {n: np.load(self.store / FOLDER / f"{n}.npy", mmap_mode="r") for n in ARRAYS}
        return self._arrays[name]

    def __len__(self) -> int:
        return self.rows

    def clip_id(self, i: int) -> str:
        start, end = self.column("id_start")[i : i + 2]
        return bytes(self.column("ids")[start:end]).decode("utf-8", "surrogateescape")

    def _record(self, clip_id: str, shard, row, n_frames, label_codes, split, fold) -> dict:
        """A clip's index.jsonl record from its column values."""
        return {
            "id": clip_id,
            "shard": int(shard),
            "row": int(row),
            "n_frames": int(n_frames),
            "labels": [self.labels[c] for c in label_codes],
            "split": None if split < 0 else self.splits[split],
            "fold": None if fold < 0 else int(fold),
        }

    def __getitem__(self, i: int) -> dict:
        c = self.column
        start, end = c("label_start")[i : i + 2]
        labels = c("labels")[start:end]
        return self._record(
            self.clip_id(i), c("shard")[i], c("row")[i], c("n_frames")[i], labels, c("split")[i], c("fold")[i]
        )

    def __iter__(self) -> Iterator[dict]:
        """Every record in order, each column read once (not a memory-mapped lookup per field and clip)."""
        shard, row, n_frames, split, fold, label_start, labels, id_start = (
            self.column(n).tolist()
            for n in ("shard", "row", "n_frames", "split", "fold", "label_start", "labels", "id_start")
        )
        ids = bytes(self.column("ids"))
        for i in range(self.rows):
            clip_id = ids[id_start[i] : id_start[i + 1]].decode("utf-8", "surrogateescape")
            codes = labels[label_start[i] : label_start[i + 1]]
            yield self._record(clip_id, shard[i], row[i], n_frames[i], codes, split[i], fold[i])

    def select(self, split: str | None = None, folds=None, exclude_folds=None) -> np.ndarray:
        """Positions of the clips in a split and/or a set of folds, ascending (int64)."""
        keep = np.ones(self.rows, bool)
        if split is not None:
            code = self.splits.index(split) if split in self.splits else -2
            keep &= np.asarray(self.column("split")) == code
        fold = np.asarray(self.column("fold"))
        if folds is not None:
            keep &= np.isin(fold, [f for f in folds if f is not None])
        if exclude_folds is not None:
            keep &= ~np.isin(fold, [f for f in exclude_folds if f is not None])
        return np.flatnonzero(keep)
