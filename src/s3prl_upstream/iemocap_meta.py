"""SUPERB ER's meta data for an IEMOCAP release, as s3prl's downstream/emotion/IEMOCAP_preprocess.py
writes it (that script needs librosa, which this project does not install):

    python -m src.s3prl_upstream.iemocap_meta data/IEMOCAP      # -> data/IEMOCAP/meta_data/

<root>/meta_data/Session<k>/test_meta_data.json holds session k, train_meta_data.json the other
sessions: {"labels": {"neu": 0, "hap": 1, "ang": 2, "sad": 3}, "meta_data": [{"path", "label",
"speaker"}]}, paths relative to <root>, "exc" merged into "hap", other emotions left out. The
SUPERB command reads it with -o config.downstream_expert.datarc.meta_data=<root>/meta_data.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from src.utils.errors import MissingInput, command
from src.utils.io import write_json

LABELS = {"neu": 0, "hap": 1, "ang": 2, "sad": 3}


def session_entries(root: Path, session: str) -> list[dict]:
    """The labelled utterances of one session, in the order of its sorted evaluation files."""
    wavs = {p.stem: p for p in sorted((root / session / "sentences" / "wav").rglob("*.wav"))}
    entries = []
    for label_file in sorted((root / session / "dialog" / "EmoEvaluation").glob("*.txt")):
        for line in label_file.read_text(errors="replace").splitlines():
            if not line.startswith("["):
                continue
            fields = [f for f in re.split("[\t\n]", line) if f]
            if len(fields) < 3 or fields[2] not in ("neu", "hap", "ang", "sad", "exc") or fields[1] not in wavs:
                continue
            path = wavs[fields[1]].relative_to(root).as_posix()
            entries.append(
                {"path": path, "label": fields[2].replace("exc", "hap"), "speaker": Path(path).name.split("_")[0]}
            )
    return entries


def write_meta_data(root: Path, out: Path | None = None) -> Path:
    root, out = Path(root), Path(out or Path(root) / "meta_data")
    sessions = sorted(p.name for p in root.glob("Session*") if p.is_dir())
    if not sessions:
        raise MissingInput(f"{root}: no Session1..Session5 folders; pass the root of the IEMOCAP release")
    entries = {s: session_entries(root, s) for s in sessions}
    for held_out in sessions:
        train = [e for s in sessions if s != held_out for e in entries[s]]
        write_json(out / held_out / "train_meta_data.json", {"labels": LABELS, "meta_data": train})
        write_json(out / held_out / "test_meta_data.json", {"labels": LABELS, "meta_data": entries[held_out]})
    return out


@command
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m src.s3prl_upstream.iemocap_meta", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("root", type=Path, help="the IEMOCAP release (Session1 ... Session5)")
    parser.add_argument("--out", type=Path, help="default: <root>/meta_data")
    args = parser.parse_args(argv)
    out = write_meta_data(args.root, args.out)
    print(f"SUPERB ER meta data in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
