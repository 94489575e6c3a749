"""The feature stores the pretraining data configs read, built for the tests from miniature data."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

# a store under the data folder's features/: `${paths.data_dir}/features/<name>`
STORE = re.compile(r"^\$\{paths\.data_dir\}/features/([\w.-]+)$")


def pretraining_stores(configs: Path) -> list[str]:
    """The names of every store a data config's sources or val_source read under features/."""
    names = set()
    for path in sorted((configs / "data").glob("*.yaml")):
        config = yaml.safe_load(path.read_text()) or {}
        for source in [*(config.get("sources") or []), config.get("val_source") or {}]:
            found = STORE.match(str(source.get("path", "")))
            if found:
                names.add(found.group(1))
    return sorted(names)


def build_pretraining_stores(configs: Path, data: Path, raw: Path) -> None:
    """data/features/<name> for every store the configs read, at the pretraining length: from the
    prepared dataset of that name, or, for a source no dataset prepares (a user's own recordings),
    from a folder of recordings prepared under that name. A new source needs no edit here."""
    from src.data.prepare import DATASETS
    from src.data.prepare.common import finalize
    from src.data.shards import build
    from tests.helpers import layouts

    for name in pretraining_stores(configs):
        manifest = data / "prepared" / name / "manifest.jsonl"
        if not manifest.exists():
            own = DATASETS["folder"].prepare(layouts.folder(raw / f"recordings-{name}"), name=name)
            finalize(own, manifest.parent, workers=2)
        build(manifest, data / "features" / name, target_length=1024, workers=1)
