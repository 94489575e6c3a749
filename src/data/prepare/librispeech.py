"""LibriSpeech: <root>/<subset>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac, used unlabelled
(pretraining). --root may be the LibriSpeech folder (all subsets) or one subset folder."""

from __future__ import annotations

import re
from pathlib import Path

from src.data.prepare import download
from src.data.prepare.common import Dataset, Entry, Prepared

UTTERANCE = re.compile(r"^\d+-\d+-\d+$")


def prepare(root: Path) -> Prepared:
    subsets = [root] if any(root.glob("*/*/*.flac")) else sorted(d for d in root.iterdir() if d.is_dir())
    entries, bad = [], []
    for subset in subsets:
        for flac in sorted(subset.glob("*/*/*.flac")):
            if not UTTERANCE.match(flac.stem):
                bad.append({"id": flac.stem, "path": str(flac), "reason": "name is not <speaker>-<chapter>-<utt>"})
                continue
            entries.append(Entry(flac.stem, str(flac), [], subset.name))
    return Prepared("librispeech", entries, [], bad=bad)


DATASET = Dataset(
    "librispeech",
    prepare,
    download=lambda root, args: download.download_librispeech(root, args.subsets),
    arguments=((("--subsets",), {"nargs": "+", "default": ["train-clean-100"], "help": "the subsets to download"}),),
)
