"""python -m src.data.prepare <dataset> --root DIR [--out DIR] [--task ks2|ks1|sc30] [--download]

Reads a dataset in its published layout and writes a manifest (see common.py) to --out,
by default data/prepared/<dataset>[-<task>]."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from src.data.prepare import PREPARERS, download
from src.data.prepare.common import finalize
from src.utils.errors import UserError, report

DOWNLOADERS = {
    "speechcommands": lambda root, a: download.download_speechcommands(root, a.version),
    "librispeech": lambda root, a: download.download_librispeech(root, a.subsets),
    "esc50": lambda root, a: download.download_esc50(root),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m src.data.prepare", description=__doc__)
    parser.add_argument("dataset", choices=sorted(PREPARERS))
    parser.add_argument("--root", type=Path, required=True, help="the dataset's top folder")
    parser.add_argument("--out", type=Path, help="where the manifest goes (default data/prepared/<name>)")
    parser.add_argument("--task", default="ks2", help="speechcommands: ks2 (35 words), ks1 (SUPERB 12), sc30")
    parser.add_argument("--test-root", type=Path, help="speechcommands ks1: speech_commands_test_set_v0.01")
    parser.add_argument("--download", action="store_true", help=f"fetch first ({', '.join(DOWNLOADERS)})")
    parser.add_argument("--version", default="v0.02", help="speechcommands download: v0.01 or v0.02")
    parser.add_argument("--subsets", nargs="+", default=["train-clean-100"], help="librispeech download")
    parser.add_argument("--workers", type=int, help="threads for probing files")
    args = parser.parse_args(argv)

    root = args.root.expanduser().resolve()
    if args.download:
        if args.dataset not in DOWNLOADERS:
            parser.error(f"{args.dataset} cannot be downloaded automatically; see docs/data.md")
        DOWNLOADERS[args.dataset](root, args)
    if not root.is_dir():
        parser.error(f"--root {root} is not a folder; pass the dataset's top folder, or add --download")
    kwargs = {}
    if args.dataset == "speechcommands":
        kwargs = {"task": args.task, "test_root": args.test_root}
    try:
        prepared = PREPARERS[args.dataset](root, **kwargs)
        out = args.out or Path("data/prepared") / prepared.name
        finalize(prepared, out, args.workers)
    except UserError as e:
        return report(e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
