import json

import lightning as L
import pytest
import torch

from src.data import augment
from src.data.datamodules import ClassificationDataModule, PretrainDataModule, PretrainDataset
from src.data.prepare import PREPARERS
from src.data.prepare.common import finalize
from src.data.sampler import ResumableSampler
from src.data.shards import FeatureStore, build
from src.utils.io import read_jsonl, write_jsonl
from tests.helpers import layouts
from tests.helpers.recorder import Recorder


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dm")
    root = layouts.speech_commands(tmp / "sc", words=("yes", "no", "up", "down"), per_word=8)
    finalize(PREPARERS["speechcommands"](root, task="ks2"), tmp / "prep", workers=2)
    build(tmp / "prep" / "manifest.jsonl", tmp / "feat", target_length=128, shard_size=16, workers=1)
    ls = layouts.librispeech(tmp / "LibriSpeech")
    finalize(PREPARERS["librispeech"](ls), tmp / "prep_ls", workers=2)
    build(tmp / "prep_ls" / "manifest.jsonl", tmp / "feat_ls", target_length=160, shard_size=16, workers=1)
    return tmp


def indices(sampler) -> list[int]:
    """The dataset indices a sampler yields (it pairs each with the key of its random numbers)."""
    return [i for i, _ in sampler]


@pytest.mark.parametrize("weights", [None, torch.rand(50)])
def test_sampler_ranks_are_disjoint_and_cover_the_epoch(weights):
    orders = [indices(ResumableSampler(50, rank=r, world_size=2, seed=3, weights=weights)) for r in (0, 1)]
    assert len(orders[0]) == len(orders[1]) == 25
    if weights is None:
        assert set(orders[0]).isdisjoint(orders[1]) and set(orders[0]) | set(orders[1]) == set(range(50))
    single = indices(ResumableSampler(50, seed=3, weights=weights))
    assert sorted(orders[0] + orders[1]) == sorted(single)  # same global draw, split between ranks


def test_sampler_order_depends_on_epoch_and_skip_resumes():
    s = ResumableSampler(20, seed=1)
    s.set_epoch(0)
    first = list(s)
    s.set_epoch(1)
    assert indices(s) != indices(first)
    s.set_epoch(0)
    s.resume_at(8)
    assert list(s) == first[8:]  # the same samples with the same keys: the same augmentation
    assert list(s) == first  # the resume applies once


def test_a_resume_at_an_epochs_end_starts_the_next_epoch_whole():
    """A stop after an epoch's last batch resumes in the next epoch (Lightning moves on): the saved
    position belongs to the finished epoch and must not cut the next one short."""
    s = ResumableSampler(20, seed=1)
    s.set_epoch(1)
    whole = list(s)
    s.set_epoch(0)
    s.resume_at(20, epoch=0)
    s.set_epoch(1)  # Lightning starts epoch 1
    assert list(s) == whole
    s.set_epoch(1)
    s.resume_at(8, epoch=1)
    assert list(s) == whole[8:]  # a position in the epoch that comes next still applies


@pytest.mark.parametrize("before,after", [(2, 1), (1, 2), (2, 4), (4, 2)])
@pytest.mark.parametrize("weights", [None, torch.rand(48)])
def test_a_resume_on_another_number_of_ranks_continues_the_global_order_exactly(before, after, weights):
    """48 samples, a global batch of 4: 5 steps on `before` ranks, then the rest of the epoch on
    `after` ranks, together take every position of the epoch's order once, with its key."""
    global_batch, steps = 4, 5
    whole = list(ResumableSampler(48, seed=7, weights=weights, drop_last=True))
    taken = []
    for rank in range(before):  # what each rank took in its first `steps` batches
        taken += list(ResumableSampler(48, rank, before, seed=7, weights=weights, drop_last=True))[
            : steps * global_batch // before
        ]
    for rank in range(after):
        sampler = ResumableSampler(48, rank, after, seed=7, weights=weights, drop_last=True)
        sampler.resume_at(steps * global_batch)
        taken += list(sampler)
    assert sorted(taken, key=lambda t: t[1]) == whole  # every (index, key) once: none twice, none missed


def test_classification_from_raw_audio_and_from_shards_agree(prepared):
    raw = ClassificationDataModule(str(prepared / "prep"), target_length=128, batch_size=4, num_workers=0)
    shard = ClassificationDataModule(
        str(prepared / "prep"), str(prepared / "feat"), target_length=128, batch_size=4, num_workers=0
    )
    raw.setup(), shard.setup()
    assert raw.num_classes == 4 and not raw.multilabel
    a, b = raw.sets["test"], shard.sets["test"]
    assert len(a) == len(b) == 4
    item_raw = a[0]
    item_shard = b[[c["id"] for c in b.clips].index(a.clips[0]["id"])]
    torch.testing.assert_close(item_raw["fbank"], item_shard["fbank"], atol=5e-3, rtol=1e-3)
    assert item_raw["fbank"].shape == (1, 128, 128) and item_raw["target"].sum() == 1


@pytest.mark.parametrize("source", ["raw", "shards"])
def test_mixup_gives_soft_labels_that_sum_to_one(prepared, source, monkeypatch):
    dm = ClassificationDataModule(
        str(prepared / "prep"),
        str(prepared / "feat") if source == "shards" else None,
        target_length=100,
        mixup=1.0,
        freqm=24,
        timem=20,
        noise=True,
        batch_size=4,
        num_workers=0,
    )
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert batch["fbank"].shape == (4, 1, 128, 100)
    torch.testing.assert_close(batch["target"].sum(1), torch.ones(4))
    # the partner is drawn at random and may share the label; pin one that does not
    train = dm.sets["train"]
    label = [int(train.target(k).argmax()) for k in range(len(train.clips))]
    partner = next(k for k in range(len(label)) if label[k] != label[0])
    monkeypatch.setattr(augment.SampleRandom, "integer", lambda self, low, high: partner)
    target = train[0]["target"]
    assert 0 < target[label[0]] < 1 and 0 < target[label[partner]] < 1  # lambda ~ Beta(10, 10) is never 0 or 1
    torch.testing.assert_close(target.sum(), torch.tensor(1.0))


def test_a_label_missing_from_classes_json_stops_setup_with_the_fix(prepared, tmp_path):
    import shutil

    shutil.copytree(prepared / "prep", tmp_path / "prep")
    rows = read_jsonl(tmp_path / "prep" / "manifest.jsonl")
    rows[3]["labels"] = ["marvin"]  # not among classes.json's
    write_jsonl(tmp_path / "prep" / "manifest.jsonl", rows)
    dm = ClassificationDataModule(str(tmp_path / "prep"), target_length=64, num_workers=0)
    with pytest.raises(
        ValueError, match=r"1 labels are not in .*classes.json \(first: clip .* has 'marvin'\); prepare"
    ):
        dm.setup()


def test_a_sample_key_draws_the_same_crop_and_augmentation_in_any_process(prepared):
    """What makes a resumed run exact: the sampler's (index, key) fixes every random draw of a sample,
    whatever the global RNGs hold (a restart reseeds them) and whichever worker loads it."""
    dm = ClassificationDataModule(
        str(prepared / "prep"), target_length=100, mixup=0.5, freqm=24, timem=20, noise=True, num_workers=0
    )
    dm.setup()
    train = dm.sets["train"]
    first = train[(0, (7, 2, 5))]
    torch.manual_seed(123)  # the global RNGs do not matter
    again = train[(0, (7, 2, 5))]
    torch.testing.assert_close(again["fbank"], first["fbank"])
    torch.testing.assert_close(again["target"], first["target"])
    other = train[(0, (7, 3, 5))]  # another epoch: other draws
    assert not torch.equal(other["fbank"], first["fbank"])
    crops = PretrainDataset(FeatureStore(prepared / "feat_ls"), [0], 40, 0.0, 1.0, train=True)
    assert crops.store.index[0]["n_frames"] > 40  # the clip is longer than the crop: the start is drawn
    torch.testing.assert_close(crops[(0, (1, 0, 0))]["fbank"], crops[(0, (1, 0, 0))]["fbank"])
    starts = {float(crops[(0, (1, epoch, 0))]["fbank"].sum()) for epoch in range(8)}
    assert len(starts) > 1


def test_spec_augment_masks_bands():
    masked = augment.spec_augment(torch.ones(1, 128, 100), freqm=48, timem=48, rand=augment.SampleRandom(1))
    assert masked.shape == (1, 128, 100)
    zero_rows = (masked[0] == 0).all(dim=1).sum()
    zero_cols = (masked[0] == 0).all(dim=0).sum()
    assert 0 < zero_rows < 48 or 0 < zero_cols < 48


def test_balanced_weights_favour_rare_labels():
    w = augment.balanced_weights([["a"], ["a"], ["a"], ["b"], ["a", "b"]])
    assert w[3] > w[0] and w[4] == pytest.approx(w[0] + w[3])


def test_folds_hold_one_out(prepared, tmp_path):
    root = layouts.esc50(tmp_path / "esc")
    finalize(PREPARERS["esc50"](root), tmp_path / "prep", workers=2)
    dm = ClassificationDataModule(str(tmp_path / "prep"), fold=1, target_length=64, batch_size=1, num_workers=0)
    dm.setup()
    assert {c["fold"] for c in dm.sets["test"].clips} == {1}
    assert 1 not in {c["fold"] for c in dm.sets["train"].clips}


def test_missing_prepared_data_is_explained(tmp_path):
    dm = ClassificationDataModule(str(tmp_path / "nothing"), prepare_hint="run `make demo`")
    with pytest.raises(FileNotFoundError, match="run `make demo`"):
        dm.setup()


def test_pretrain_mixes_sources_by_weight(prepared):
    dm = PretrainDataModule(
        [{"path": str(prepared / "feat"), "weight": 3.0}, {"path": str(prepared / "feat_ls"), "weight": 1.0}],
        target_length=96,
        batch_size=8,
        num_workers=0,
        samples_per_epoch=4000,
    )
    dm.setup()
    n_first = len(dm.train_set.datasets[0])
    drawn = torch.tensor(indices(dm.train_dataloader().sampler))
    share = (drawn < n_first).double().mean().item()
    assert share == pytest.approx(0.75, abs=0.03)
    assert next(iter(dm.train_dataloader()))["fbank"].shape == (8, 1, 128, 96)


def _pretrain_dm(prepared, batch_size=4):
    return PretrainDataModule(
        [{"path": str(prepared / "feat")}], target_length=64, batch_size=batch_size, num_workers=0
    )


def _trainer(tmp_path, **kw):
    defaults = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
    )
    return L.Trainer(**{**defaults, **kw})


def test_two_rank_ddp_simulation_sees_disjoint_samples_covering_the_epoch(prepared, tmp_path):
    trainer = _trainer(tmp_path, devices=2, strategy="ddp_spawn", max_epochs=1)
    trainer.fit(Recorder(str(tmp_path)), datamodule=_pretrain_dm(prepared, batch_size=8))
    seen = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert len(seen[0]) == len(seen[1]) == 16
    assert set(seen[0]).isdisjoint(seen[1]) and set(seen[0]) | set(seen[1]) == set(range(32))


def test_batch_size_must_divide_among_devices(prepared, tmp_path):
    dm = _pretrain_dm(prepared, batch_size=5)
    dm.trainer = type("T", (), {"global_rank": 0, "world_size": 2})()
    with pytest.raises(ValueError, match="not divisible by the 2 devices"):
        dm.per_device_batch_size()


def test_training_resumes_mid_epoch_without_repeating_or_skipping(prepared, tmp_path):
    L.seed_everything(0)
    straight = tmp_path / "straight"
    straight.mkdir()
    _trainer(straight, max_epochs=2).fit(Recorder(str(straight)), datamodule=_pretrain_dm(prepared))
    expected = json.loads((straight / "rank0.json").read_text())
    assert len(expected) == 64

    resumed = tmp_path / "resumed"
    resumed.mkdir()
    ckpt = L.pytorch.callbacks.ModelCheckpoint(dirpath=resumed, every_n_train_steps=3, save_last=True)
    first = _trainer(resumed, max_steps=11, enable_checkpointing=True, callbacks=[ckpt])
    first.fit(Recorder(str(resumed)), datamodule=_pretrain_dm(prepared))  # stops mid-epoch 1 (8 batches/epoch)
    done = json.loads((resumed / "rank0.json").read_text())
    (resumed / "rank0.json").write_text(json.dumps(done[: 9 * 4]))  # the last checkpoint was after step 9
    second = _trainer(resumed, max_epochs=2)
    second.fit(Recorder(str(resumed)), datamodule=_pretrain_dm(prepared), ckpt_path=str(resumed / "last.ckpt"))
    assert json.loads((resumed / "rank0.json").read_text()) == expected


@pytest.mark.parametrize("before,after", [(2, 1), (1, 2)])
def test_a_training_resumed_on_another_number_of_processes_sees_every_sample_once(prepared, tmp_path, before, after):
    """Lightning end to end (ddp_spawn on the CPU): 2 steps of a global batch of 8 on `before`
    processes, the checkpoint, then the rest of the epoch (32 samples) on `after` processes."""

    def run(devices, **kw):
        extra = {"strategy": "ddp_spawn"} if devices > 1 else {}
        return _trainer(tmp_path, devices=devices, **extra, **kw)

    ckpt = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=2, save_last=True)
    run(before, max_steps=2, enable_checkpointing=True, callbacks=[ckpt]).fit(
        Recorder(str(tmp_path)), datamodule=_pretrain_dm(prepared, batch_size=8)
    )
    run(after, max_epochs=1).fit(
        Recorder(str(tmp_path)), datamodule=_pretrain_dm(prepared, batch_size=8), ckpt_path=str(tmp_path / "last.ckpt")
    )
    seen = [i for r in range(max(before, after)) for i in json.loads((tmp_path / f"rank{r}.json").read_text())]
    assert sorted(seen) == list(range(32))  # none twice, none missed


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_batch_copied_on_its_own_stream_is_whole_when_the_step_reads_it(tmp_path):
    """The datamodules copy a batch to the GPU on a side stream while the step before still runs:
    the copy must not wait for the compute stream's queued work, and what the next step reads on the
    compute stream must be the whole batch."""
    dm = PretrainDataModule(sources=[{"path": str(tmp_path), "split": None, "weight": 1.0}], batch_size=2)
    device = torch.device("cuda")
    fbank = torch.randn(64, 1, 128, 1024).pin_memory()  # tiny's batch: 33.5 MB
    busy = torch.randn(4096, 4096, device=device)
    # the first matmul and the first copy wait for cuBLAS's and the stream's set-up (the host blocks
    # some 100 ms): a training loop pays that once, before the steps this test is about
    busy @ busy, dm.transfer_batch_to_device({"fbank": fbank}, device, 0)
    torch.cuda.synchronize()
    start, computed, copied = (torch.cuda.Event(enable_timing=True) for _ in range(3))
    start.record()
    for _ in range(20):  # tens of ms queued on the compute stream: the step before
        busy = busy @ busy
    computed.record()
    moved = dm.transfer_batch_to_device({"fbank": fbank, "index": torch.arange(64)}, device, 0)
    copied.record(dm._copy_stream)
    total = moved["fbank"].double().sum()  # on the compute stream, after its wait
    torch.cuda.synchronize()
    assert start.elapsed_time(copied) < start.elapsed_time(computed) / 2  # it ran beside the matmuls
    assert total.item() == pytest.approx(fbank.double().sum().item(), rel=1e-12)
    assert moved["index"].tolist() == list(range(64))
