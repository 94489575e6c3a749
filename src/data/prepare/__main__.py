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
    """One sub-command per dataset, each with only its own options (`<dataset> --help` lists them)."""
    p = argparse.ArgumentParser(prog="python -m src.data.prepare", description=__doc__)
    commands = p.add_subparsers(dest="dataset", required=True, metavar="dataset", title="datasets")
    for name, dataset in sorted(DATASETS.items()):
        summary = " ".join((sys.modules[dataset.prepare.__module__].__doc__ or "").strip().split("\n\n")[0].split())
        d = commands.add_parser(name, help=summary, description=summary)
        d.add_argument("--root", type=Path, required=True, help="the dataset's top folder")
        d.add_argument("--out", type=Path, help=f"where the manifest goes (default data/prepared/{name}[-<task>])")
        if dataset.download is not None:
            d.add_argument("--download", action="store_true", help="fetch it into --root first")
        d.add_argument("--workers", type=int, help="threads for probing files")
        for flags, options in dataset.arguments:
            d.add_argument(*flags, **options)
    return p


@command
def main(argv=None) -> int:
    p = parser()
    args = p.parse_args(argv)
    dataset = DATASETS[args.dataset]
    root = args.root.expanduser().resolve()
    if getattr(args, "download", False):
        dataset.download(root, args)
    if not root.is_dir():
        p.error(f"--root {root} is not a folder; pass the dataset's top folder, or add --download")
    prepared = dataset.prepare(root, **dataset.options(args))
    out = args.out or Path("data/prepared") / prepared.name
    finalize(prepared, out, args.workers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
