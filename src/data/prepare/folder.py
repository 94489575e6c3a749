"""Any folder of audio, used unlabelled (pretraining): every WAV, FLAC or OGG file below --root, at
any depth, one clip each; the manifest goes to data/prepared/<--name> (default: the folder's name)."""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path

from src.data.audio import AUDIO_EXTENSIONS
from src.data.prepare.common import Dataset, Entry, Prepared


def prepare(root: Path, name: str | None = None) -> Prepared:
    name = name or re.sub(r"[^\w.-]+", "_", root.name.lower()) or "folder"
    entries, other = [], Counter()
    for folder, subfolders, files in os.walk(root):  # symbolic links to folders are not followed (no loops)
        subfolders.sort()
        for file in sorted(files):
            path = Path(folder) / file
            if path.suffix.lower() not in AUDIO_EXTENSIONS:
                other[path.suffix.lower() or "(none)"] += 1
                continue
            clip_id = path.relative_to(root).as_posix()  # unique below root, and says where the clip is
            entries.append(Entry(clip_id, str(path), [], None))
    entries.sort(key=lambda e: e.id)
    notes = []
    if other:
        kinds = ", ".join(f"{suffix} ({n})" for suffix, n in other.most_common())
        notes.append(
            f"left out {sum(other.values())} files that are not {'/'.join(AUDIO_EXTENSIONS)}: {kinds}; "
            "convert audio in other formats first (e.g. ffmpeg -i in.mp3 -ar 16000 out.flac)"
        )
    return Prepared(name, entries, [], notes=notes)


DATASET = Dataset(
    "folder",
    prepare,
    arguments=((("--name",), {"help": "the prepared data's name: data/prepared/<name> (default: the folder's name)"}),),
    options=lambda args: {"name": args.name},
    variants=({"name": "folder"},),
)
