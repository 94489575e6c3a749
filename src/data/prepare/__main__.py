"""python -m src.data.prepare <dataset> --root DIR [--out DIR] [--download] [the dataset's own options]

Reads a dataset in its published layout and writes a manifest (see common.py) to --out,
by default data/prepared/<dataset>[-<task>]. The datasets and their options come from the registry
(src/data/prepare/__init__.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from src.data.prepare import DATASETS
from src.data.prepare.common import finalize
from src.utils.errors import command


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m src.data.prepare", description=__doc__)
    p.add_argument("dataset", choices=sorted(DATASETS))
    p.add_argument("--root", type=Path, required=True, help="the dataset's top folder")
    p.add_argument("--out", type=Path, help="where the manifest goes (default data/prepared/<name>)")
    downloadable = ", ".join(sorted(name for name, d in DATASETS.items() if d.download))
    p.add_argument("--download", action="store_true", help=f"fetch first ({downloadable})")
    p.add_argument("--workers", type=int, help="threads for probing files")
    for name, dataset in sorted(DATASETS.items()):
        for flags, options in dataset.arguments:
            p.add_argument(*flags, **{**options, "help": f"{name}: {options.get('help', '')}"})
    return p


@command
def main(argv=None) -> int:
    p = parser()
    args = p.parse_args(argv)
    dataset = DATASETS[args.dataset]
    root = args.root.expanduser().resolve()
    if args.download:
        if dataset.download is None:
            p.error(f"{args.dataset} cannot be downloaded automatically; see docs/data.md")
        dataset.download(root, args)
    if not root.is_dir():
        p.error(f"--root {root} is not a folder; pass the dataset's top folder, or add --download")
    prepared = dataset.prepare(root, **dataset.options(args))
    out = args.out or Path("data/prepared") / prepared.name
    finalize(prepared, out, args.workers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
