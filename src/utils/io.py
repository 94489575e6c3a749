"""Atomic writes: a temp file in the same folder, then os.replace, so a reader never sees half a file."""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path

from src.utils.errors import MissingInput, UserError


def _umask() -> int:
    umask = os.umask(0)  # read once, at import: os.umask can only be read by setting it
    os.umask(umask)
    return umask


# what open() gives a new file under the process umask; mkstemp's own is 0600
FILE_MODE = 0o666 & ~_umask()


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path next to `path`; on success it is renamed onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, FILE_MODE)  # shared lab folders: others read results as with a plain write
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def remove_partial_writes(folder: str | Path, names: Iterable[str] | None = None) -> list[Path]:
    """Delete the temp files that killed atomic writes left in folder (.<name>.<random>.tmp, as
    atomic_path names them), of every file or of the files named; returns them. Call it only where
    no other writer of those files is at work."""
    if not Path(folder).is_dir():
        return []
    patterns = [".*.tmp"] if names is None else [f".{name}.*.tmp" for name in names]
    leftovers = sorted({path for pattern in patterns for path in Path(folder).glob(pattern)})
    for path in leftovers:
        path.unlink(missing_ok=True)
    return leftovers


@contextmanager
def exclusive_lock(path: str | Path, busy: str, shared: bool = False):
    """Hold an exclusive flock on path (created if needed) for the block, or raise UserError(busy)
    at once if another process holds it. The kernel drops the lock when the process ends, however it
    ends, so a killed holder never leaves a stale lock. shared: a shared lock instead, which many
    processes hold together and which keeps out an exclusive one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(busy) from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def folder_busy(path: str | Path) -> bool:
    """Whether another process holds exclusive_lock on path (a probe: takes and drops it at once)."""
    path = Path(path)
    if not path.exists():
        return False
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
    return False


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def finite_json(obj):
    """obj with every NaN or infinite float replaced by None: JSON has no NaN (json.dumps would
    write `NaN`, which strict readers refuse)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    return obj


def write_json(path: str | Path, obj) -> None:
    write_text(path, json.dumps(finite_json(obj), indent=2, allow_nan=False) + "\n")


def write_jsonl(path: str | Path, rows) -> None:
    write_text(path, "".join(json.dumps(finite_json(r), allow_nan=False) + "\n" for r in rows))


def read_jsonl(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        raise MissingInput(f"{path} does not exist; run `python -m src.data.prepare` first (see docs/data.md)")
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise UserError(f"{path}:{n}: not valid JSON ({e}); regenerate the manifest") from e
    return rows


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file, read 16 MiB at a time (downloads, shards and manifests are checked by it)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()
