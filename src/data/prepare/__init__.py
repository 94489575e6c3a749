"""One preparer per dataset layout; each returns a `Prepared` list of clips for `finalize`.

Each preparer module declares its dataset once, as `DATASET` (common.Dataset: the preparer, its
downloader and its own command-line options); DATASETS finds them, and the command line
(`python -m src.data.prepare`), the downloads and the tests read them from here. A new dataset is
a new module in this folder: nothing else lists it.
"""

import importlib
import pkgutil

from src.data.prepare.common import Dataset

DATASETS: dict[str, Dataset] = {}
for _module in pkgutil.iter_modules(__path__):
    if _module.name not in ("common", "download", "__main__"):
        _dataset = getattr(importlib.import_module(f"{__name__}.{_module.name}"), "DATASET", None)
        if _dataset is not None:
            DATASETS[_dataset.name] = _dataset

PREPARERS = {name: dataset.prepare for name, dataset in sorted(DATASETS.items())}
