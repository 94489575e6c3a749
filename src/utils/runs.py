"""Which pretraining run to fine-tune from:  python -m src.utils.runs latest-encoder logs/pretrain/runs

Prints the encoder export of the newest finished run (one that wrote metrics.json at its end and
has <run>/encoder/config.json), and on stderr which run that is and how many steps it trained, so
`make finetune` says what it took. A run still going, killed, or stopped on its checks is passed
over, however recent.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def finished_encoders(runs_dir: str | Path) -> list[Path]:
    """The encoder exports of the finished runs under runs_dir, newest first (by metrics.json's time)."""
    runs = [p.parent for p in Path(runs_dir).glob("*/metrics.json") if (p.parent / "encoder" / "config.json").exists()]
    return [r / "encoder" for r in sorted(runs, key=lambda r: (r / "metrics.json").stat().st_mtime, reverse=True)]


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] != "latest-encoder":
        print(__doc__.splitlines()[0], file=sys.stderr)
        return 2
    found = finished_encoders(argv[1])
    if not found:
        print(
            f"no finished pretraining with an encoder export under {argv[1]}: run make pretrain first", file=sys.stderr
        )
        return 2
    steps = json.loads((found[0].parent / "metrics.json").read_text()).get("global_step")
    others = f"; {len(found) - 1} older ones" if len(found) > 1 else ""
    print(f"newest finished pretraining: {found[0].parent} ({steps} steps{others})", file=sys.stderr)
    print(found[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
