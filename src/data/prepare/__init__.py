"""One preparer per dataset layout; each returns a `Prepared` list of clips for `finalize`.

Each preparer module declares its dataset once, as `DATASET` (common.Dataset: the preparer, its
downloader and its own command-line options); DATASETS finds them, and the command line
(`python -m src.data.prepare`), the downloads and the tests read them from here. A new dataset is
a new module in this folder: nothing else lists it.
"""

import importlib
import pkgutil
from collections.abc import Iterable
from types import ModuleType

from src.data.prepare.common import Dataset


def registry(modules: Iterable[ModuleType]) -> dict[str, Dataset]:
    """The datasets the modules declare, by name; two modules declaring one name are refused (the
    second would silently replace the first)."""
    datasets: dict[str, Dataset] = {}
    declared_in: dict[str, str] = {}
    for module in modules:
        dataset = getattr(module, "DATASET", None)
        if dataset is None:
            continue
        if dataset.name in datasets:
            raise ValueError(
                f"two preparers declare the dataset {dataset.name!r}: {declared_in[dataset.name]} and "
                f"{module.__name__}; give one of them another Dataset name"
            )
        datasets[dataset.name], declared_in[dataset.name] = dataset, module.__name__
    return datasets


DATASETS: dict[str, Dataset] = registry(
    importlib.import_module(f"{__name__}.{m.name}")
    for m in pkgutil.iter_modules(__path__)
    if m.name not in ("common", "download", "__main__")
)

PREPARERS = {name: dataset.prepare for name, dataset in sorted(DATASETS.items())}
