"""The feature store's index as memory-mapped columns (src/data/store_index.py)."""

import pickle
import time

import numpy as np
import pytest
import torch

from src.data import shards
from src.data.prepare import PREPARERS
from src.data.prepare.common import finalize
from src.data.shards import FeatureStore, build
from src.data.store_index import StoreIndex, columns_current
from src.utils.io import read_jsonl, write_jsonl
from tests.helpers import layouts


@pytest.fixture
def store(tmp_path):
    """A built store of a labelled dataset with splits (Speech Commands ks2) and one of folds (ESC-50)."""
    root = layouts.speech_commands(tmp_path / "sc")
    finalize(PREPARERS["speechcommands"](root, task="ks2"), tmp_path / "prep", workers=2)
    build(tmp_path / "prep" / "manifest.jsonl", tmp_path / "feat", target_length=64, shard_size=6, workers=1)
    return tmp_path / "feat"


def test_a_build_writes_the_columns_and_they_hold_every_record_of_index_jsonl(store):
    rows = read_jsonl(store / "index.jsonl")
    index = FeatureStore(store).index
    assert index.mapped and columns_current(store) and len(index) == len(rows)
    assert list(index) == rows  # every field of every clip, labels and split decoded
    for split in ("train", "valid", "test", "nope"):
        expected = [i for i, r in enumerate(rows) if r["split"] == split]
        assert index.select(split=split).tolist() == expected
    assert FeatureStore(store).select(split="valid").dtype == np.int64  # an array: no Python list per process


def test_fold_selection_as_the_records_say(tmp_path):
    root = layouts.esc50(tmp_path / "esc")
    finalize(PREPARERS["esc50"](root), tmp_path / "prep", workers=2)
    build(tmp_path / "prep" / "manifest.jsonl", tmp_path / "feat", target_length=64, shard_size=2, workers=1)
    rows, index = read_jsonl(tmp_path / "feat" / "index.jsonl"), StoreIndex(tmp_path / "feat")
    assert index.select(folds=[1, 3]).tolist() == [i for i, r in enumerate(rows) if r["fold"] in (1, 3)]
    assert index.select(exclude_folds=[1]).tolist() == [i for i, r in enumerate(rows) if r["fold"] != 1]


def test_a_store_from_before_the_columns_loads_and_verify_upgrade_writes_them(store, capsys):
    for path in (store / "index").iterdir():
        path.unlink()
    (store / "index").rmdir()
    old = FeatureStore(store)
    assert not old.index.mapped and list(old.index) == read_jsonl(store / "index.jsonl")  # still loads
    torch.testing.assert_close(old[3], FeatureStore(store)[3])
    assert shards.main(["verify", "--upgrade", str(store)]) == 0
    assert "wrote the index columns" in capsys.readouterr().out
    assert FeatureStore(store).index.mapped


def test_columns_older_than_index_jsonl_are_not_used_and_verify_names_it(store):
    rows = read_jsonl(store / "index.jsonl")
    rows[0], rows[1] = rows[1], rows[0]
    time.sleep(0.01)  # a later mtime
    write_jsonl(store / "index.jsonl", rows)  # e.g. an older version of the project rebuilt the index
    index = StoreIndex(store)
    assert not index.mapped and index[0] == rows[0]
    assert any("python -m src.data.shards verify --upgrade" in p for p in shards.verify(store))


def test_the_index_pickles_as_its_folder_and_a_worker_reads_the_same_rows(store):
    index = StoreIndex(store)
    index.column("shard")  # opened in this process
    assert len(pickle.dumps(index)) < 2000  # the memmaps stay behind; each process maps the files
    dataset = _Records(index)
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=2, multiprocessing_context="fork")
    assert sorted(loader, key=lambda r: r["i"]) == [{"i": i, **index[i]} for i in range(len(index))]


class _Records(torch.utils.data.Dataset):
    def __init__(self, index):
        self.index = index

    def __len__(self):
        return len(self.index)

    def __getitem__(self, i):
        return {"i": i, **self.index[i]}
