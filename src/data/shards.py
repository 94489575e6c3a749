"""Feature store: kaldi fbanks of a manifest as fp16 memmap shards.

    <out>/meta.json                fbank parameters, target length, manifest hash, counts, classes
    <out>/shard_00000.npy          (rows, mel bins, target_length) float16, un-normalised, zero-padded
    <out>/shard_00000.json         ids, n_frames, bad files and the .npy's SHA-256 (written after the
                                   .npy: its presence marks the shard finished; `verify` checks the hash)
    <out>/index.jsonl              one line per stored clip: id, shard, row, n_frames, labels, split, fold
    <out>/index/                   the same as memory-mapped columns (store_index.py), what readers use
    <out>/bad_files.jsonl          every clip that was skipped, with the reason
    <out>/stats.json               exact sums of the real fbank values, every split and all (`stats`)

Shards are computed by parallel worker processes and each is written atomically, so a killed
build resumes without redoing finished shards and leaves only hidden temp files, which the next
build removes. One build at a time holds a folder (a lock), and a build that cannot fit the free
space stops before it starts. The index, bad-file list and stats come from the shards' sidecars,
then meta.json is written complete, last: a reader never sees a half-written store.

A build can also be spread over machines: `--part I/N` computes only the shards part I owns (a
contiguous range, the same on every run, so parts never collide and a rerun part skips its shards
that verify); `--merge` then writes the index, stats and meta from the finished shards. `--slurm N`
does both on a SLURM cluster (shards_slurm.py). The store is the same, byte for byte, however it
was built. Commands:

    python -m src.data.shards build --manifest data/prepared/X/manifest.jsonl --out data/features/X \
        --target-length 1024 [--workers 2] [--shard-size 1024] [--part I/N | --merge | --slurm N]
    python -m src.data.shards verify data/features/X
    python -m src.data.shards stats data/features/X [--split train]     # dataset mean and std
    python -m src.data.shards stats data/features/A data/features/B --weights 2 0.28   # a mix
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import fcntl
import json
import logging
import os
import shutil
import signal
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from src.data.audio import KALDI, AudioError, FbankConfig, fbank, load_audio, pad_or_cut
from src.data.store_index import StoreIndex, columns_current, upgrade_index, write_columns
from src.utils.errors import MissingInput, UserError, command
from src.utils.io import (
    atomic_path,
    exclusive_lock,
    file_sha256,
    read_jsonl,
    remove_partial_writes,
    write_json,
    write_jsonl,
)

log = logging.getLogger(__name__)
FORMAT_VERSION = 1


def shard_name(k: int) -> str:
    return f"shard_{k:05d}"


def clip_features(entry: dict, config: FbankConfig, target_length: int) -> tuple[torch.Tensor, int]:
    """(1, mel, target_length) fbank of one manifest entry and its real frame count."""
    # decode no more than the frames that are kept (an hour-long file costs 10 s of decoding, not an hour)
    needed = ((target_length - 1) * config.frame_shift + config.frame_length) / 1000
    duration = entry.get("duration")
    duration = needed if duration is None else min(duration, needed)
    wave = load_audio(entry["path"], offset=entry.get("offset", 0.0), duration=duration)
    spec = fbank(wave, config)
    if not torch.isfinite(spec).all():
        raise AudioError(f"{entry['path']}: fbank has NaN or inf values")
    return pad_or_cut(spec, target_length), min(spec.shape[-1], target_length)


_held = []  # a worker's shared lock on its build's workers lock file in <out>, held for its life


def _worker_init(parent: int, workers_lock: str) -> None:
    """A build worker dies with its parent: the kernel sends SIGKILL when the parent ends (Linux), and
    a thread checks the parent every second (elsewhere). It holds a shared lock on its build's
    workers lock file (.workers.lock, a part's .workers-part-I-of-N.lock) as long as it lives, so a
    later build can tell that it is still writing."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the parent died before the line above took effect
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()
    lock = open(workers_lock, "a+")  # noqa: SIM115 (held open for the worker's life)
    fcntl.flock(lock, fcntl.LOCK_SH)
    _held.append(lock)


def _exit_unless_folder_is_ours() -> None:
    """Before a worker writes: if its folder was removed and made again by another build since it
    started (its lock file is not the one at the path any more), it ends without writing."""
    try:
        same = bool(_held) and os.fstat(_held[0].fileno()).st_ino == os.stat(_held[0].name).st_ino
    except OSError:
        same = False
    if _held and not same:
        os._exit(1)


def _no_workers_left(out: Path, workers_lock: str | None = None) -> None:
    """Refuse to build while workers of an earlier build of this folder are alive (a killed build's):
    those of the part holding workers_lock, or (None) of any build or part."""
    names = [workers_lock] if workers_lock else [".workers.lock", *(p.name for p in out.glob(".workers-part-*.lock"))]
    for name in names:
        with open(out / name, "a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise UserError(
                    f"{out}: worker processes of an earlier build are still writing there (the build was "
                    "killed and they have not ended yet); wait a few seconds and run the command again"
                ) from None
            fcntl.flock(f, fcntl.LOCK_UN)


def clip_sums(stored: np.ndarray, frames: int) -> tuple[float, float]:
    """(sum, sum of squares) in float64 of a stored (mel, target_length) fp16 clip's real frames:
    what the sidecar records and `moments` adds up, so sums from sidecars equal sums from shards."""
    real = stored[:, :frames].astype(np.float64)
    return float(real.sum()), float(np.square(real).sum())


def _build_shard(out_dir: str, k: int, entries: list[dict], config: dict, target_length: int) -> dict:
    """Worker: compute one shard, write .npy then its .json sidecar, both atomically."""
    torch.set_num_threads(1)
    cfg = FbankConfig(**config)
    specs, ids, n_frames, bad, sums = [], [], [], [], []
    for entry in entries:
        try:
            spec, frames = clip_features(entry, cfg, target_length)
        except (AudioError, FileNotFoundError, OSError) as e:
            bad.append({"id": entry["id"], "path": entry["path"], "reason": str(e)})
            continue
        specs.append(spec[0].half().numpy())
        ids.append(entry["id"])
        n_frames.append(frames)
        sums.append(clip_sums(specs[-1], frames))
    out = Path(out_dir)
    _exit_unless_folder_is_ours()
    array = np.stack(specs) if specs else np.zeros((0, cfg.num_mel_bins, target_length), np.float16)
    # a plain write, not a memmap: a full disk is an OSError here, not a SIGBUS in the worker
    with atomic_path(out / f"{shard_name(k)}.npy") as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array)
        digest = file_sha256(tmp)
    sidecar = {
        "ids": ids,
        "n_frames": n_frames,
        "sums": [v for v, _ in sums],
        "sums_sq": [v for _, v in sums],
        "bad": bad,
        "rows": len(ids),
        "sha256": digest,
    }
    write_json(out / f"{shard_name(k)}.json", sidecar)
    return {"shard": k, **sidecar}


def build(
    manifest: str | Path,
    out: str | Path,
    target_length: int,
    shard_size: int = 1024,
    workers: int = 2,
    config: FbankConfig = KALDI,
    part: tuple[int, int] | None = None,
    merge: bool = False,
) -> dict | None:
    """Compute the fbanks of a manifest's clips into a feature store at out, resuming a build that
    stopped; returns the store's meta. part (I, N): only the shards part I of N owns, and None is
    returned (the store stays incomplete until a merge); merge: no shards computed, the index, stats
    and meta written from the shards every part built (refused, naming what is missing)."""
    manifest, out = Path(manifest), Path(out)
    entries = read_jsonl(manifest)
    if not entries:
        raise UserError(f"{manifest} lists no clips")
    settings = {
        "format_version": FORMAT_VERSION,
        "fbank": config.to_dict(),
        "target_length": target_length,
        "shard_size": shard_size,
        "manifest": str(manifest.resolve()),
        "manifest_sha256": file_sha256(manifest),
    }
    out.mkdir(parents=True, exist_ok=True)
    chunks = [entries[i : i + shard_size] for i in range(0, len(entries), shard_size)]
    if part is not None:
        _build_part(out, settings, chunks, config, target_length, workers, *part)
        return None
    busy = f"{out}: another build is writing there; wait for it or choose another --out"
    with exclusive_lock(out / ".build.lock", busy):
        _no_workers_left(out)
        _start(out, settings)
        if merge:
            results = _built_shards(out, chunks, (config.num_mel_bins, target_length))
        else:
            results = _build_shards(out, chunks, config, target_length, workers)
        return _finish(out, manifest, settings, chunks, results, entries, config, target_length)


def owned_shards(part: int, parts: int, num_shards: int) -> range:
    """The shard numbers part `part` of `parts` builds: a contiguous range, fixed by the manifest."""
    return range(part * num_shards // parts, (part + 1) * num_shards // parts)


def part_marker(out: Path, part: int, parts: int) -> Path:
    """Written when a part's shards are all built (what `--slurm` reads to resubmit only the rest)."""
    return out / "parts" / f"part-{part:05d}-of-{parts:05d}.json"


def _build_part(out, settings, chunks, config, target_length, workers, part, parts) -> None:
    """Build the shards one part owns, beside the other parts at work in the same folder (they share
    .build.lock; a whole build or merge takes it alone), and mark the part done."""
    if not (parts >= 1 and 0 <= part < parts):
        raise UserError(f"--part {part}/{parts}: give I/N with 0 <= I < N")
    if parts > len(chunks):
        raise UserError(
            f"--part {part}/{parts}: the manifest makes {len(chunks)} shards; use at most {len(chunks)} parts"
        )
    owned = owned_shards(part, parts, len(chunks))
    names = [f"{shard_name(k)}{ext}" for k in owned for ext in (".npy", ".json")]
    workers_lock = f".workers-part-{part}-of-{parts}.lock"
    whole = f"{out}: a whole build or a merge holds the folder; wait for it to end"
    again = f"{out}: part {part}/{parts} is being built by another process; wait for it to end"
    with exclusive_lock(out / ".build.lock", whole, shared=True):
        with exclusive_lock(out / f".part-{part}-of-{parts}.lock", again):
            _no_workers_left(out, workers_lock)
            _start(out, settings, partial_writes=names)
            _build_shards(out, chunks, config, target_length, workers, owned, workers_lock)
            marker = {"shards": [owned.start, owned.stop], "manifest_sha256": settings["manifest_sha256"]}
            write_json(part_marker(out, part, parts), marker)
    print(f"part {part}/{parts}: shards {owned.start}-{owned.stop - 1} built in {out}; merge once every part is done")


def _finish(out, manifest, settings, chunks, results, entries, config, target_length) -> dict:
    """Write the index, the bad-file list, the stats and, last, the complete meta.json; report."""
    index, bad = _index(chunks, results, {e["id"]: e for e in entries})
    write_jsonl(out / "index.jsonl", index)
    write_columns(out, index)  # after index.jsonl, whose size and time they record
    write_jsonl(out / "bad_files.jsonl", bad)
    sums = _recorded_sums(index, results, config.num_mel_bins)
    if sums is not None:
        write_json(out / "stats.json", sums)
    else:  # shards from before the sidecars kept sums: `stats` reads the shards
        (out / "stats.json").unlink(missing_ok=True)
    splits = Counter(rec["split"] for rec in index if rec["split"] is not None)
    classes_file = manifest.parent / "classes.json"
    classes = json.loads(classes_file.read_text()) if classes_file.exists() else {"classes": [], "multilabel": False}
    meta = {
        **settings,
        "num_shards": len(chunks),
        "clips": len(index),
        "skipped": len(bad),
        "splits": dict(sorted(splits.items())),
        "shape": [config.num_mel_bins, target_length],
        "dtype": "float16",
        "classes": classes.get("classes", []),
        "multilabel": classes.get("multilabel", False),
        "complete": True,
    }
    write_json(out / "meta.json", meta)
    print(f"{len(index)} clips in {len(chunks)} shards at {out}")
    if bad:
        print(f"skipped {len(bad)} bad files, listed in {out / 'bad_files.jsonl'}; first: {bad[0]['reason']}")
    return meta


def _start(out: Path, settings: dict, partial_writes: list[str] | None = None) -> None:
    """Refuse a folder built with other settings; clear what killed builds left (the temp files of
    every write, or of the files named: a part's own); mark the build as under way."""
    remove_partial_writes(out, partial_writes)  # temp files of writes that were killed (their lock is ours)
    meta_path = out / "meta.json"
    if meta_path.exists():
        old = json.loads(meta_path.read_text())
        changed = [k for k in settings if k != "manifest" and old.get(k) != settings[k]]
        if changed:
            raise UserError(
                f"{out} holds features built with other {', '.join(changed)}; "
                "choose another --out or delete the folder to rebuild"
            )
    write_json(meta_path, {**settings, "complete": False})  # parts write the same bytes


def _build_shards(
    out: Path,
    chunks: list,
    config: FbankConfig,
    target_length: int,
    workers: int,
    owned: range | None = None,
    workers_lock: str = ".workers.lock",
) -> dict:
    """{shard number: its sidecar} for every chunk (or the owned ones), computing in worker processes
    those not finished."""
    owned = range(len(chunks)) if owned is None else owned
    done = {k for k in owned if _shard_finished(out, k, (config.num_mel_bins, target_length))}
    results = {k: json.loads((out / f"{shard_name(k)}.json").read_text()) for k in done}
    todo = [k for k in owned if k not in done]
    if done:
        print(f"resuming: {len(done)} of {len(owned)} shards already built in {out}")
    _check_space(out, sum(len(chunks[k]) for k in todo), config.num_mel_bins, target_length)
    bar = tqdm(
        total=sum(len(chunks[k]) for k in owned), initial=sum(len(chunks[k]) for k in done), desc="fbank", unit="clip"
    )
    if todo:
        with ProcessPoolExecutor(
            max(1, workers),
            mp_context=get_context("spawn"),
            initializer=_worker_init,
            initargs=(os.getpid(), str(out / workers_lock)),
        ) as pool:
            futures = [pool.submit(_build_shard, str(out), k, chunks[k], config.to_dict(), target_length) for k in todo]
            for future in as_completed(futures):
                try:
                    result = future.result()
                except OSError as e:
                    if e.errno != errno.ENOSPC:
                        raise
                    pool.shutdown(cancel_futures=True)
                    raise UserError(
                        f"{out}: the disk filled up while writing shards; free space and run the "
                        "same command again (finished shards are kept)"
                    ) from None
                results[result["shard"]] = result
                bar.update(len(chunks[result["shard"]]))
    bar.close()
    return results


def _built_shards(out: Path, chunks: list, shape: tuple[int, int]) -> dict:
    """{shard number: its sidecar} for a merge, refusing while any shard is missing or unfinished.
    Reads sidecars and .npy headers only: a part verified its shards' checksums when it built or
    resumed them, and `verify` checks them all."""
    results, missing = {}, []
    for k in range(len(chunks)):
        sidecar, array = out / f"{shard_name(k)}.json", out / f"{shard_name(k)}.npy"
        try:
            record = json.loads(sidecar.read_text())
            if np.load(array, mmap_mode="r").shape != (record["rows"], *shape):
                raise ValueError("shape")
            results[k] = record
        except (OSError, ValueError, KeyError):
            missing.append(k)
    if missing:
        raise UserError(
            f"{out}: {len(missing)} of {len(chunks)} shards are not built (first: {shard_name(missing[0])}); "
            "run the parts that own them again (`--part I/N`, or `--slurm N` again: it submits only the "
            "unfinished parts), or build without --merge to compute them here"
        )
    return results


def _check_space(out: Path, clips: int, num_mel_bins: int, target_length: int) -> None:
    """Refuse to start when the shards to write (fp16) cannot fit the free space, with a margin."""
    needed = clips * num_mel_bins * target_length * 2 * 1.05
    free = shutil.disk_usage(out).free
    if needed > free:
        raise UserError(
            f"{out}: {clips} clips need about {needed / 2**30:.1f} GiB and {free / 2**30:.1f} GiB are free; "
            "free space or choose another --out"
        )


def _recorded_sums(index: list[dict], results: dict, num_mel_bins: int) -> dict | None:
    """stats.json: `moments` of every clip ("all") and of each split, added up in index order from
    the sidecars' per-clip sums; None where a sidecar predates them."""
    if any("sums" not in shard for shard in results.values()):
        return None
    totals: dict = {"all": _no_sums(), "splits": {}}
    for rec in index:
        shard = results[rec["shard"]]
        chosen = [totals["all"]]
        if rec["split"] is not None:
            chosen.append(totals["splits"].setdefault(rec["split"], _no_sums()))
        for t in chosen:
            _add_clip(t, shard["sums"][rec["row"]], shard["sums_sq"][rec["row"]], rec["n_frames"], num_mel_bins)
    totals["splits"] = dict(sorted(totals["splits"].items()))
    return totals


def _no_sums() -> dict:
    return {"sum": 0.0, "sum_sq": 0.0, "values": 0, "frames": 0, "clips": 0}


def _add_clip(totals: dict, value: float, square: float, frames: int, num_mel_bins: int) -> None:
    totals["sum"] += value
    totals["sum_sq"] += square
    totals["values"] += frames * num_mel_bins
    totals["frames"] += frames
    totals["clips"] += 1


def _index(chunks: list, results: dict, by_id: dict) -> tuple[list[dict], list[dict]]:
    """(one index row per stored clip, in shard order; the bad files of every shard)."""
    index, bad = [], []
    for k in range(len(chunks)):
        shard = results[k]
        bad += shard["bad"]
        for row, (clip_id, frames) in enumerate(zip(shard["ids"], shard["n_frames"])):
            e = by_id[clip_id]
            index.append(
                {
                    "id": clip_id,
                    "shard": k,
                    "row": row,
                    "n_frames": frames,
                    "labels": e.get("labels", []),
                    "split": e.get("split"),
                    "fold": e.get("fold"),
                }
            )
    return index, bad


def _shard_finished(out: Path, k: int, shape: tuple[int, int]) -> bool:
    """A shard to keep when a build resumes: its sidecar is there, and the .npy has the rows, the
    shape and the SHA-256 the sidecar recorded. A damaged or mismatched one is removed and rebuilt."""
    sidecar, array = out / f"{shard_name(k)}.json", out / f"{shard_name(k)}.npy"
    if not (sidecar.exists() and array.exists()):
        return False
    try:
        record = json.loads(sidecar.read_text())
        stored = np.load(array, mmap_mode="r")
        why = None
        if stored.shape != (record["rows"], *shape) or stored.dtype != np.float16:
            why = f"holds {stored.dtype} {stored.shape}, not float16 ({record['rows']}, {shape[0]}, {shape[1]})"
        elif record.get("sha256") != file_sha256(array):
            why = "does not match its checksum"
    except (ValueError, KeyError, OSError) as e:
        why = f"unreadable ({e})"
    if why is None:
        return True
    print(f"rebuilding {shard_name(k)}.npy: it {why}")
    sidecar.unlink(missing_ok=True)
    array.unlink(missing_ok=True)
    return False


class FeatureStore:
    """Read side of a built store. Memmaps open lazily, once per process (safe with DataLoader workers)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        meta_path = self.root / "meta.json"
        if not meta_path.exists():
            raise MissingInput(
                f"{self.root} is not a feature store (no meta.json); build it with `python -m src.data.shards build`"
            )
        self.meta = json.loads(meta_path.read_text())
        if not self.meta.get("complete"):
            raise UserError(f"{self.root}: the build did not finish; run the same build command again to resume it")
        if not (self.root / "index.jsonl").exists():
            raise MissingInput(
                f"{self.root}: index.jsonl is gone; run the build command that made this store again "
                "(python -m src.data.shards build ...): it keeps the finished shards and rewrites the index"
            )
        self.index = StoreIndex(self.root)  # memory-mapped columns, or index.jsonl for an older store
        if not self.index.mapped:
            log.warning(
                f"{self.root}: the index is read from index.jsonl (about 1 KB of memory a clip, in every loader "
                f"process); `python -m src.data.shards verify --upgrade {self.root}` writes its columns once"
            )
        self._arrays: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.index)

    def __getstate__(self):
        return {**self.__dict__, "_arrays": {}}  # never pickle open memmaps into workers

    @property
    def classes(self) -> list[str]:
        return self.meta.get("classes", [])

    def array(self, shard: int) -> np.ndarray:
        if shard not in self._arrays:
            self._arrays[shard] = np.load(self.root / f"{shard_name(shard)}.npy", mmap_mode="r")
        return self._arrays[shard]

    def n_frames(self, i: int) -> int:
        """Clip i's real (unpadded) frames."""
        return int(self.index.column("n_frames")[i])

    def __getitem__(self, i: int) -> torch.Tensor:
        """(1, mel, target_length) float32 fbank, un-normalised."""
        shard, row = int(self.index.column("shard")[i]), int(self.index.column("row")[i])
        return torch.from_numpy(np.array(self.array(shard)[row], dtype=np.float32)).unsqueeze(0)

    def select(self, split: str | None = None, folds=None, exclude_folds=None) -> np.ndarray:
        """Positions of the clips in a split and/or a set of folds, ascending (an int64 array)."""
        return self.index.select(split, folds, exclude_folds)


def verify(root: str | Path, upgrade: bool = False) -> list[str]:
    """Problems found in a store (an empty list means it is sound). upgrade: first write the index's
    columns where they are missing or older than index.jsonl (a store from before them)."""
    if upgrade and upgrade_index(root):
        print(f"{root}: wrote the index columns (index/) from index.jsonl")
    store = FeatureStore(root)
    problems, shape = [], tuple(store.meta["shape"])
    rows_per_shard: dict[int, int] = {}
    for rec in store.index:
        rows_per_shard[rec["shard"]] = max(rows_per_shard.get(rec["shard"], 0), rec["row"] + 1)
    if len({r["id"] for r in store.index}) != len(store.index):
        problems.append("duplicate ids in index.jsonl")
    for k in tqdm(range(store.meta["num_shards"]), desc="verify", unit="shard"):
        try:
            array = store.array(k)
        except (OSError, ValueError) as e:
            problems.append(f"{shard_name(k)}.npy unreadable: {e}")
            continue
        if array.dtype != np.float16 or tuple(array.shape[1:]) != shape:
            problems.append(f"{shard_name(k)}.npy has {array.dtype} {array.shape}, expected float16 (*, {shape})")
        if array.shape[0] < rows_per_shard.get(k, 0):
            problems.append(f"{shard_name(k)}.npy has {array.shape[0]} rows, index needs {rows_per_shard[k]}")
        if not np.isfinite(array).all():
            problems.append(f"{shard_name(k)}.npy holds NaN or inf")
        expected = json.loads((store.root / f"{shard_name(k)}.json").read_text()).get("sha256")
        if expected is None:
            problems.append(f"{shard_name(k)}.json records no checksum (built before they were): rebuild to check it")
        elif file_sha256(store.root / f"{shard_name(k)}.npy") != expected:
            problems.append(f"{shard_name(k)}.npy does not match its checksum: damaged since it was built; rebuild it")
    manifest = Path(store.meta["manifest"])
    if manifest.exists() and file_sha256(manifest) != store.meta["manifest_sha256"]:
        problems.append(f"{manifest} changed since the store was built; rebuild it")
    elif manifest.exists():
        problems += _check_index(store, {e["id"]: e for e in read_jsonl(manifest)})
    else:
        problems += _check_index(store, None)
    return problems


def _check_index(store: FeatureStore, manifest: dict | None) -> list[str]:
    """index.jsonl against the shards' sidecars (every stored clip once, at its shard and row, with
    its frame count) and the manifest (labels, split, fold). The build rewrites the index."""
    fix = "; run the build command again (it rewrites index.jsonl from the shards)"
    where = {}
    for k in range(store.meta["num_shards"]):
        sidecar = json.loads((store.root / f"{shard_name(k)}.json").read_text())
        for row, (clip_id, frames) in enumerate(zip(sidecar["ids"], sidecar["n_frames"])):
            where[clip_id] = {"shard": k, "row": row, "n_frames": frames}
    problems, seen = [], set()
    rows = read_jsonl(store.root / "index.jsonl")  # the record the columns are made from
    for line, rec in enumerate(rows, start=1):
        expected = where.get(rec.get("id"))
        if expected is None:
            problems.append(f"index.jsonl line {line}: {rec.get('id')!r} is in no shard{fix}")
        elif any(rec.get(k) != v for k, v in expected.items()):
            problems.append(
                f"index.jsonl line {line}: {rec['id']} is at shard {expected['shard']} row "
                f"{expected['row']} ({expected['n_frames']} frames), not as listed{fix}"
            )
        elif manifest is not None and rec["id"] in manifest:
            entry = manifest[rec["id"]]
            for key in ("labels", "split", "fold"):
                if rec.get(key) != entry.get(key, [] if key == "labels" else None):
                    problems.append(
                        f"index.jsonl line {line}: {rec['id']} has {key} {rec.get(key)!r}, the manifest "
                        f"{entry.get(key)!r}{fix}"
                    )
        seen.add(rec.get("id"))
    missing = sorted(set(where) - seen)
    if missing:
        problems.append(f"index.jsonl lacks {len(missing)} stored clips (first: {missing[0]}){fix}")
    if store.meta.get("clips") is not None and store.meta["clips"] != len(rows):
        problems.append(f"index.jsonl has {len(rows)} lines, meta.json says {store.meta['clips']} clips{fix}")
    if problems:  # a rebuild rewrites the columns too
        return problems
    upgrade = f"python -m src.data.shards verify --upgrade {store.root} writes them"
    if not columns_current(store.root):
        problems.append(f"the index columns (index/) are missing or older than index.jsonl; {upgrade}")
    elif list(store.index) != rows:
        problems.append(
            f"the index columns (index/) differ from index.jsonl; remove {store.root / 'index'}, then {upgrade}"
        )
    return problems


def moments(root: str | Path, split: str | None = None) -> dict:
    """Sums over a store's real (unpadded) fbank values: {"sum", "sum_sq", "values", "frames", "clips"};
    read from stats.json, which the build writes, or (a store from before it) added up from the shards
    clip by clip, in the same order and with the same per-clip sums."""
    store = FeatureStore(root)
    recorded = store.root / "stats.json"
    if recorded.exists():
        sums = json.loads(recorded.read_text())
        found = sums["all"] if split is None else sums["splits"].get(split)
    else:
        found = _no_sums()
        for i in tqdm(store.select(split=split).tolist(), desc=f"stats {Path(root).name}", unit="clip"):
            rec = store.index[i]
            value, square = clip_sums(store.array(rec["shard"])[rec["row"]], rec["n_frames"])
            _add_clip(found, value, square, rec["n_frames"], store.meta["shape"][0])
    if not found or found["values"] == 0:
        raise UserError(f"{root}: no clips{f' in split {split}' if split else ''}")
    return found


def stats(root: str | Path, split: str | None = None) -> tuple[float, float]:
    """Mean and std of the real (unpadded) fbank frames: the dataset_mean / dataset_std of a recipe."""
    return mixed_stats([(root, split, 1.0)])


def mixed_stats(sources: list[tuple[str | Path, str | None, float]]) -> tuple[float, float]:
    """Mean and std of what a pretraining mix feeds the encoder: each (store, split, weight) is drawn
    with its weight's share of the clips (PretrainDataModule's sampler), so a store's values count in
    proportion to weight x its frames per clip; exact sums, not averaged per-store stds."""
    if not sources:
        raise UserError("stats needs at least one store")
    parts = [(moments(root, split), float(weight)) for root, split, weight in sources]
    if any(weight <= 0 for _, weight in parts):
        raise UserError("every --weights value must be above 0")
    # values a draw yields from each store, per clip drawn: weight share x the store's values per clip
    share = [weight / m["clips"] for m, weight in parts]
    count = sum(s * m["values"] for (m, _), s in zip(parts, share))
    mean = sum(s * m["sum"] for (m, _), s in zip(parts, share)) / count
    mean_sq = sum(s * m["sum_sq"] for (m, _), s in zip(parts, share)) / count
    return mean, max(mean_sq - mean * mean, 0.0) ** 0.5


def _part(text: str) -> tuple[int, int]:
    try:
        part, parts = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give I/N, e.g. 3/100") from None
    return part, parts


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise UserError(f"--sbatch {text!r}: give KEY=VALUE, e.g. account=my_lab")
    return key.replace("-", "_"), value


@command
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m src.data.shards", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="compute fbank shards for a manifest")
    b.add_argument("--manifest", type=Path, required=True)
    b.add_argument("--out", type=Path, required=True)
    b.add_argument("--target-length", type=int, required=True, help="frames per clip (1024 = 10.24 s)")
    b.add_argument("--shard-size", type=int, default=1024)
    b.add_argument("--workers", type=int, default=2, help="processes (under --slurm: CPUs a part's task gets)")
    how = b.add_mutually_exclusive_group()
    how.add_argument("--part", type=_part, metavar="I/N", help="build only the shards part I of N owns (0 <= I < N)")
    how.add_argument("--merge", action="store_true", help="write the index, stats and meta once every part is built")
    how.add_argument("--slurm", type=int, metavar="N", help="submit N parts as a SLURM array, then a merge after them")
    cluster = b.add_argument_group("SLURM (with --slurm)")
    cluster.add_argument("--partition", help="the partition (default: the cluster's)")
    cluster.add_argument("--time-min", type=int, default=240, help="a part's time limit in minutes (default 240)")
    cluster.add_argument("--slurm-setup", nargs="*", default=[], metavar="LINE", help="lines the jobs run first")
    cluster.add_argument(
        "--sbatch", nargs="*", default=[], metavar="KEY=VALUE", help="any other sbatch option, e.g. account=my_lab"
    )
    cluster.add_argument("--logs", type=Path, help="submitit's folder (default: <out>/slurm)")
    v = sub.add_parser("verify", help="check a store's files against its index")
    v.add_argument("root", type=Path)
    v.add_argument("--upgrade", action="store_true", help="first write the index's columns (a store from before them)")
    s = sub.add_parser(
        "stats",
        help="mean and std of a store, or of a pretraining mix of stores (for data.mean / data.std)",
        description="The mean and std of the real fbank frames of one store, or of several mixed as the "
        "pretraining sampler mixes them (--weights, a data config's sources' weights).",
    )
    s.add_argument("roots", type=Path, nargs="+", metavar="store")
    s.add_argument("--split", nargs="+", help="one split for every store, or one per store ('all': every clip)")
    s.add_argument("--weights", type=float, nargs="+", help="one per store, as in the data config (default: 1 each)")
    args = parser.parse_args(argv)
    if args.command == "build":
        settings = dict(
            manifest=args.manifest,
            out=args.out,
            target_length=args.target_length,
            shard_size=args.shard_size,
            workers=args.workers,
        )
        if args.slurm is not None:
            from src.data.shards_slurm import submit  # imports submitit

            sbatch = dict(_key_value(item) for item in args.sbatch)
            submit(settings, args.slurm, args.logs, args.partition, args.time_min, args.slurm_setup, sbatch)
        else:
            build(**settings, part=args.part, merge=args.merge)
    elif args.command == "verify":
        problems = verify(args.root, upgrade=args.upgrade)
        for p in problems:
            print(f"problem: {p}")
        print("ok" if not problems else f"{len(problems)} problems")
        return 1 if problems else 0
    else:
        n = len(args.roots)
        splits = args.split or [None]
        weights = args.weights or [1.0] * n
        if len(splits) not in (1, n) or len(weights) != n:
            raise UserError(f"{n} stores: give --split once or {n} times, and --weights {n} times")
        splits = [None if s in (None, "all") else s for s in (splits * n if len(splits) == 1 else splits)]
        mean, std = mixed_stats(list(zip(args.roots, splits, weights)))
        print(json.dumps({"mean": round(mean, 7), "std": round(std, 7)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
