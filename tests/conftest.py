import os

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
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    """A data/ folder laid out as the experiment configs expect, with miniature datasets."""
    from src.data.prepare import PREPARERS
    from src.data.prepare.common import finalize
    from src.data.shards import build
    from tests.helpers import layouts

    root = tmp_path_factory.mktemp("data")
    raw = tmp_path_factory.mktemp("raw")
    sc = layouts.speech_commands(raw / "sc", words=("yes", "no", "up", "bed"), per_word=6)
    prepared = root / "prepared"
    for task in ("ks2", "ks1", "sc30"):
        finalize(PREPARERS["speechcommands"](sc, task=task), prepared / f"speechcommands-{task}", workers=2)
    for name, make in [("esc50", layouts.esc50), ("audioset", layouts.audioset), ("voxceleb1", layouts.voxceleb1),
                       ("iemocap", layouts.iemocap), ("urbansound8k", layouts.urbansound8k),
                       ("librispeech", layouts.librispeech)]:  # fmt: skip
        finalize(PREPARERS[name](make(raw / name)), prepared / name, workers=2)
    for name in ("audioset", "librispeech"):
        build(prepared / name / "manifest.jsonl", root / "features" / name, target_length=1024, workers=1)
    demo = root / "demo"
    finalize(PREPARERS["speechcommands"](sc, task="ks2"), demo / "prepared" / "speechcommands-ks2", workers=2)
    keywords = demo / "prepared" / "speechcommands-ks2" / "manifest.jsonl"
    build(keywords, demo / "features" / "speechcommands-ks2", 128)
    build(keywords, demo / "features" / "librispeech", 400, workers=1)  # enough clips for 2 ranks x 2 batches
    return root
