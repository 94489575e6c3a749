"""IEMOCAP: Session1..5 with dialog/EmoEvaluation/*.txt labels and sentences/wav/<dialog>/<utt>.wav.
Four classes as in SUPERB and SSAST: neu, hap (with exc merged in), ang, sad; the fold is the
session (5-fold leave-one-session-out)."""

from __future__ import annotations

import re
from pathlib import Path

from src.data.prepare.common import Dataset, Entry, Prepared
from src.utils.errors import MissingInput

CLASSES = ["neu", "hap", "ang", "sad"]
MERGE = {"exc": "hap"}
LINE = re.compile(r"^\[[\d.]+ - [\d.]+\]\t(\S+)\t(\S+)\t")


def prepare(root: Path) -> Prepared:
    sessions = sorted(root.glob("Session[1-5]"))
    if not sessions:
        raise MissingInput(f"{root}: no Session1..Session5 folders; --root must be IEMOCAP_full_release/")
    entries = []
    for session in sessions:
        fold = int(session.name[-1])
        for txt in sorted((session / "dialog" / "EmoEvaluation").glob("*.txt")):
            for line in txt.read_text(encoding="utf-8", errors="replace").splitlines():
                m = LINE.match(line)
                if not m:
                    continue
                utt, emotion = m.group(1), MERGE.get(m.group(2), m.group(2))
                if emotion not in CLASSES:
                    continue
                dialog = utt.rsplit("_", 1)[0]
                wav = session / "sentences" / "wav" / dialog / f"{utt}.wav"
                entries.append(Entry(utt, str(wav), [emotion], fold=fold))
    return Prepared("iemocap", entries, CLASSES)


DATASET = Dataset("iemocap", prepare)
