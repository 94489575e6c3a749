import os
from pathlib import Path

import pytest
import torch

# Without a GPU, Triton kernels run in its numpy interpreter. Set before anything imports triton:
# its own jit helpers (tl.zeros, tl.sum, ...) are built in the mode that is on at import.
if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run on the GPU machine)")
    for item in items:
        if item.get_closest_marker("gpu") is not None:  # the marker, not a parameter named gpu
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    """A data/ folder laid out as the experiment configs expect, with miniature datasets."""
    from src.data.prepare import DATASETS
    from src.data.prepare.common import finalize
    from src.data.shards import build
    from tests.helpers import layouts
    from tests.helpers.stores import build_pretraining_stores

    root = tmp_path_factory.mktemp("data")
    raw = tmp_path_factory.mktemp("raw")
    prepared = root / "prepared"
    for name, dataset in DATASETS.items():  # every registered dataset, in each variant the tests use
        layout = layouts.LAYOUTS[name](raw / name)
        for options in dataset.variants:
            made = dataset.prepare(layout, **options)
            finalize(made, prepared / made.name, workers=2)
    build_pretraining_stores(Path(__file__).parents[1] / "configs", root, raw)  # every source a config names
    demo = root / "demo"
    finalize(
        DATASETS["speechcommands"].prepare(raw / "speechcommands", task="ks2"),
        demo / "prepared" / "speechcommands-ks2",
        workers=2,
    )
    keywords = demo / "prepared" / "speechcommands-ks2" / "manifest.jsonl"
    build(keywords, demo / "features" / "speechcommands-ks2", 128)
    build(keywords, demo / "features" / "librispeech", 400, workers=1)  # enough clips for 2 ranks x 2 batches
    return root
