"""LightningDataModules: pretraining over fbank shards, classification over shards or raw audio.

Batches are dicts: {"fbank": (B, 1, F, T) normalised, "index": (B,) dataset positions} plus
"target": (B, C) soft or multi-hot labels for classification. Datasets take an index, or the
(index, key) pair the ResumableSampler yields, whose key seeds the sample's random crop and
augmentation (augment.SampleRandom).
"""

from __future__ import annotations

import abc
import bisect
import hashlib
import json
import logging
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.utilities.apply_func import apply_to_collection
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from src.data import augment
from src.data.audio import KALDI, AudioError, fbank, load_audio, normalise, pad_or_cut
from src.data.sampler import ResumableSampler
from src.data.shards import FeatureStore
from src.utils.devices import per_device_batch
from src.utils.errors import MissingInput, UserError
from src.utils.io import file_sha256, read_jsonl

log = logging.getLogger(__name__)

# AudioSet statistics: the pretraining default (docs/official.md §1)
AUDIOSET_MEAN, AUDIOSET_STD = -4.2677393, 4.5689974


def _missing(path: Path, what: str, how: str) -> FileNotFoundError:
    return MissingInput(f"{path}: {what} not found. {how}")


def _sample(item) -> tuple[int, augment.SampleRandom]:
    """(dataset index, the sample's random numbers) of an index or a sampler's (index, key)."""
    index, key = item if isinstance(item, tuple) else (item, None)
    return int(index), augment.SampleRandom(key)  # no key (direct indexing): fresh randomness


class KeyedConcatDataset(ConcatDataset):
    """ConcatDataset that passes a sampler's (index, key) on to the part holding the index."""

    def __getitem__(self, item):
        index, key = item if isinstance(item, tuple) else (item, None)
        part = bisect.bisect_right(self.cumulative_sizes, index)
        local = index - (self.cumulative_sizes[part - 1] if part else 0)
        return self.datasets[part][(local, key) if key is not None else local]


class PretrainDataset(Dataset):
    """Fixed-length crops of one feature store's clips, normalised; no augmentation."""

    def __init__(
        self, store: FeatureStore, indices: list[int], target_length: int, mean: float, std: float, train: bool
    ):
        self.store, self.indices = store, indices
        self.target_length, self.mean, self.std, self.train = target_length, mean, std, train

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item) -> dict:
        i, rand = _sample(item)
        k = self.indices[i]
        spec = self.store[k]  # (1, F, T_store)
        extra = spec.shape[-1] - self.target_length
        if extra > 0:  # a random crop of the clip's real frames (not of the store's padding)
            real_extra = max(0, self.store.n_frames(k) - self.target_length)
            start = rand.integer(0, real_extra) if self.train else 0
            spec = spec[..., start : start + self.target_length]
        spec = pad_or_cut(spec, self.target_length)
        return {"fbank": normalise(spec, self.mean, self.std), "index": i}


class ClassificationDataset(Dataset):
    """Labelled clips from a feature store (fbank mixup) or from raw audio (waveform mixup)."""

    def __init__(
        self,
        clips: list[dict],
        classes: list[str],
        target_length: int,
        mean: float,
        std: float,
        store: FeatureStore | None = None,
        train: bool = False,
        freqm: int = 0,
        timem: int = 0,
        mixup: float = 0.0,
        noise: bool = False,
    ):
        self.clips, self.store, self.train = clips, store, train
        self.class_index = {c: i for i, c in enumerate(classes)}
        self.target_length, self.mean, self.std = target_length, mean, std
        self.freqm, self.timem, self.mixup, self.noise = freqm, timem, mixup, noise
        self.bad: set[int] = set()

    def __len__(self) -> int:
        return len(self.clips)

    def target(self, i: int) -> torch.Tensor:
        y = torch.zeros(len(self.class_index))
        for label in self.clips[i]["labels"]:
            y[self.class_index[label]] = 1.0
        return y

    def _wave(self, i: int) -> torch.Tensor:
        c = self.clips[i]
        return load_audio(c["path"], c.get("offset", 0.0), c.get("duration"))

    def _spec(self, i: int) -> torch.Tensor:
        """(1, F, target_length) un-normalised fbank."""
        if self.store is not None:
            return pad_or_cut(self.store[self.clips[i]["store_index"]], self.target_length)
        return pad_or_cut(fbank(self._wave(i)), self.target_length)

    def __getitem__(self, item) -> dict:
        i, rand = _sample(item)
        # a clip that passed the header probe can still fail to decode: skip to the next one, say so
        for attempt in range(len(self.clips)):
            k = (i + attempt) % len(self.clips)
            try:
                return self._item(k, rand)
            except AudioError as e:
                if k not in self.bad:
                    self.bad.add(k)
                    log.warning("skipping unreadable clip (%d skipped so far in this worker): %s", len(self.bad), e)
        raise AudioError(f"none of the {len(self.clips)} clips could be read")

    def _item(self, i: int, rand: augment.SampleRandom) -> dict:
        y = self.target(i)
        if self.train and self.mixup > 0 and rand.uniform() < self.mixup:
            j, lam = rand.integer(0, len(self.clips) - 1), augment.mixup_lambda(rand)
            if self.store is not None:
                spec = augment.mix(self._spec(i), self._spec(j), lam)
            else:
                spec = pad_or_cut(fbank(augment.mix(self._wave(i), self._wave(j), lam)), self.target_length)
            y = lam * y + (1 - lam) * self.target(j)
        else:
            spec = self._spec(i)
        if self.train:
            spec = augment.spec_augment(spec, self.freqm, self.timem, rand)
        spec = normalise(spec, self.mean, self.std)
        if self.train and self.noise:
            spec = augment.noise_and_roll(spec, rand)
        return {"fbank": spec, "target": y, "index": i}


class _ResumableDataModule(L.LightningDataModule, abc.ABC):
    """Shared: per-device batch size, the resumable training sampler and its checkpointed state."""

    def __init__(self, batch_size: int, num_workers: int, pin_memory: bool, seed: int):
        super().__init__()
        self.batch_size, self.num_workers, self.pin_memory, self.seed = batch_size, num_workers, pin_memory, seed
        self._resume: dict | None = None
        self._train_sampler: ResumableSampler | None = None
        self._fingerprint: str | None = None
        self._copy_stream: torch.cuda.Stream | None = None

    def fbank_settings(self) -> dict:
        """The fbank every clip goes through (Kaldi's, as SSAST/SSAMBA): checkpoints and exports
        record it, so that a processor can rebuild the input from a waveform."""
        return KALDI.to_dict()

    def fingerprint(self) -> str:
        """A short hash of what training reads (the files' contents, not their paths, and how they
        are split and mixed): checkpoints record it, and a resume on other data is refused."""
        if self._fingerprint is None:
            digest = hashlib.sha256("\n".join(self._fingerprint_parts()).encode())
            self._fingerprint = digest.hexdigest()[:16]
        return self._fingerprint

    @abc.abstractmethod
    def _fingerprint_parts(self) -> list[str]:
        """Each datamodule's: the lines that identify what it reads, hashed by fingerprint()."""

    def check(self) -> None:
        """Raise FileNotFoundError, with how to get the data, if it is not prepared."""

    def _world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def per_device_batch_size(self) -> int:
        return per_device_batch(self.batch_size, self._world()[1])

    def _loader(self, dataset: Dataset, train: bool, weights=None, draws=None) -> DataLoader:
        rank, world = self._world()
        sampler = ResumableSampler(
            len(dataset), rank, world, shuffle=train, seed=self.seed, weights=weights, draws=draws, drop_last=train
        )
        batch = self.per_device_batch_size()
        if train:
            self._train_sampler = sampler
            if self._resume is not None:
                state = self._resume
                global_batch = state["batch_size"] * state["world_size"]
                if global_batch == batch * world:  # any number of devices: the position is global
                    sampler.set_epoch(state["epoch"])
                    # in that epoch's global order; a stop at its end resumes in the next, from its start
                    sampler.resume_at(state["batches_done"] * global_batch, epoch=state["epoch"])
                else:
                    rank_zero_warn("resuming with another global batch size (data.batch_size): this epoch restarts")
                self._resume = None
        return DataLoader(
            dataset,
            batch_size=batch,
            sampler=sampler,
            drop_last=train,
            num_workers=self.num_workers,
            # pinned batches copy to the GPU without the host waiting (Lightning copies non-blocking);
            # without CUDA there is nothing to pin for
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
        )

    def transfer_batch_to_device(self, batch, device: torch.device, dataloader_idx: int):
        """On CUDA the batch is copied on a stream of its own, which the compute stream then waits
        for: the copy runs while the GPU still computes the step before (on the compute stream it
        would wait for that step to end, and the next step for the copy)."""
        if device.type != "cuda":
            return super().transfer_batch_to_device(batch, device, dataloader_idx)
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        if self._copy_stream is None or self._copy_stream.device != device:
            self._copy_stream = torch.cuda.Stream(device)
        compute = torch.cuda.current_stream(device)
        with torch.cuda.stream(self._copy_stream):
            moved = super().transfer_batch_to_device(batch, device, dataloader_idx)
        compute.wait_stream(self._copy_stream)
        # made on the copy stream, used on the compute stream: not reused before the latter is done
        apply_to_collection(moved, torch.Tensor, lambda t: t.record_stream(compute) if t.is_cuda else None)
        return moved

    def state_dict(self) -> dict:
        trainer = self.trainer
        if trainer is None or self._train_sampler is None:
            return {}
        _, world = self._world()
        # the epoch those batches belong to: the last one started (trainer.current_epoch counts the
        # completed ones, so it is already the next epoch in a checkpoint taken after an epoch's end)
        started = trainer.fit_loop.epoch_progress.current.started
        return {
            "epoch": max(started - 1, 0),
            "batches_done": trainer.fit_loop.epoch_loop.batch_progress.current.processed,
            "world_size": world,
            "batch_size": self.per_device_batch_size(),
        }

    def load_state_dict(self, state: dict) -> None:
        self._resume = dict(state) if state else None


class PretrainDataModule(_ResumableDataModule):
    """One or several feature stores mixed with weights, e.g. AudioSet + LibriSpeech.

    sources: [{"path": store dir, "weight": 1.0, "split": null}, ...]; each source contributes
    weight / total of the draws of an epoch (samples_per_epoch, default all clips once). Clips are
    cropped (at random for training) or padded to target_length frames."""

    def __init__(
        self,
        sources: list[dict],
        val_source: dict | None = None,
        target_length: int = 1024,
        mean: float = AUDIOSET_MEAN,
        std: float = AUDIOSET_STD,
        batch_size: int = 64,
        num_workers: int = 4,
        pin_memory: bool = False,
        samples_per_epoch: int | None = None,
        seed: int = 0,
    ):
        super().__init__(batch_size, num_workers, pin_memory, seed)
        if not sources:
            raise UserError("data.sources is empty: list at least one feature store")
        self.sources, self.val_source = [dict(s) for s in sources], val_source
        self.target_length, self.mean, self.std, self.samples_per_epoch = target_length, mean, std, samples_per_epoch
        self.train_set = self.val_set = None

    def check(self) -> None:
        for source in self.sources + ([self.val_source] if self.val_source else []):
            if not (Path(source["path"]) / "meta.json").exists():
                raise _missing(
                    Path(source["path"]),
                    "feature store",
                    "build it with `python -m src.data.shards build` (make pretrain does this for the demo)",
                )

    def _fingerprint_parts(self) -> list[str]:
        index = [file_sha256(Path(s["path"]) / "index.jsonl") for s in self.sources]
        return [f"{i} split={s.get('split')} weight={s.get('weight', 1.0)}" for i, s in zip(index, self.sources)] + [
            f"samples_per_epoch={self.samples_per_epoch}"
        ]

    def _dataset(self, source: dict, train: bool) -> PretrainDataset:
        store = FeatureStore(source["path"])
        indices = store.select(split=source.get("split"))  # an array: no Python object per clip
        if len(indices) == 0:
            raise UserError(f"{source['path']}: no clips in split {source.get('split')!r}")
        return PretrainDataset(store, indices, self.target_length, self.mean, self.std, train)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            parts = [self._dataset(s, train=True) for s in self.sources]
            self.train_set = KeyedConcatDataset(parts)
            self.weights = None
            if len(parts) > 1 or self.samples_per_epoch:
                share = torch.tensor([float(s.get("weight", 1.0)) for s in self.sources])
                share = share / share.sum()
                self.weights = torch.cat([torch.full((len(p),), w / len(p)) for p, w in zip(parts, share.tolist())])
            if self.val_source is not None:
                self.val_set = self._dataset(self.val_source, train=False)

    def train_dataloader(self) -> DataLoader:
        draws = self.samples_per_epoch or len(self.train_set)
        return self._loader(self.train_set, True, self.weights, draws if self.weights is not None else None)

    def val_dataloader(self):
        return self._loader(self.val_set, False) if self.val_set is not None else []


class ClassificationDataModule(_ResumableDataModule):
    """A prepared manifest (data/prepared/<task>) read as raw audio, or its feature store.

    Splits come from the manifest's split names, or from folds: with `fold=k`, fold k is the
    validation and test set and the other folds train (ESC-50, UrbanSound8K, IEMOCAP)."""

    def __init__(
        self,
        manifest_dir: str,
        features_dir: str | None = None,
        target_length: int = 128,
        mean: float = AUDIOSET_MEAN,
        std: float = AUDIOSET_STD,
        freqm: int = 0,
        timem: int = 0,
        mixup: float = 0.0,
        noise: bool = False,
        train_split: str = "train",
        val_split: str = "valid",
        test_split: str = "test",
        fold: int | None = None,
        balanced_sampling: bool = False,
        batch_size: int = 32,
        num_workers: int = 2,
        pin_memory: bool = False,
        seed: int = 0,
        prepare_hint: str = "see docs/data.md",
    ):
        super().__init__(batch_size, num_workers, pin_memory, seed)
        self.manifest_dir = Path(manifest_dir)
        self.features_dir = Path(features_dir) if features_dir else None
        self.target_length, self.mean, self.std = target_length, mean, std
        self.augment = dict(freqm=freqm, timem=timem, mixup=mixup, noise=noise)
        self.splits = {"train": train_split, "val": val_split, "test": test_split}
        self.fold, self.balanced_sampling, self.prepare_hint = fold, balanced_sampling, prepare_hint
        self.sets: dict[str, ClassificationDataset] = {}
        self._classes: dict | None = None

    def check(self) -> None:
        self._read_classes()
        if self.features_dir is not None and not (self.features_dir / "meta.json").exists():
            raise _missing(self.features_dir, "feature store", "build it with `python -m src.data.shards build`")

    def _read_classes(self) -> dict:
        if self._classes is None:
            path = self.manifest_dir / "classes.json"
            if not path.exists():
                raise _missing(self.manifest_dir, "prepared dataset (classes.json, manifest.jsonl)", self.prepare_hint)
            self._classes = json.loads(path.read_text())
        return self._classes

    @property
    def classes(self) -> list[str]:
        return self._read_classes()["classes"]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def multilabel(self) -> bool:
        return bool(self._read_classes().get("multilabel"))

    def _fingerprint_parts(self) -> list[str]:
        files = [self.manifest_dir / "manifest.jsonl"] + (
            [Path(self.features_dir) / "index.jsonl"] if self.features_dir else []
        )
        return [file_sha256(f) for f in files] + [f"fold={self.fold} splits={self.splits}"]

    def _clips(self) -> tuple[list[dict], FeatureStore | None]:
        if self.features_dir is None:
            return read_jsonl(self.manifest_dir / "manifest.jsonl"), None
        store = FeatureStore(self.features_dir)
        if store.meta["target_length"] < self.target_length:
            stored = store.meta["target_length"]
            rank_zero_warn(f"{self.features_dir} holds {stored} frames a clip; padding to {self.target_length}")
        return [{**rec, "store_index": i} for i, rec in enumerate(store.index)], store

    def _select(self, clips: list[dict], stage: str) -> list[dict]:
        if self.fold is not None:
            held_out = stage in ("val", "test")
            return [c for c in clips if (c.get("fold") == self.fold) == held_out]
        return [c for c in clips if c.get("split") == self.splits[stage]]

    def setup(self, stage: str | None = None) -> None:
        if self.sets:
            return
        classes = self.classes
        clips, store = self._clips()
        known = set(classes)
        unknown = [(c["id"], label) for c in clips for label in c.get("labels", []) if label not in known]
        if unknown:
            where = self.features_dir or self.manifest_dir / "manifest.jsonl"
            raise UserError(
                f"{where}: {len(unknown)} labels are not in {self.manifest_dir / 'classes.json'} (first: clip "
                f"{unknown[0][0]!r} has {unknown[0][1]!r}); prepare the data again (and rebuild its feature store)"
            )
        for name in ("train", "val", "test"):
            chosen = self._select(clips, name)
            if not chosen:
                where = f"fold {self.fold}" if self.fold is not None else f"split {self.splits[name]!r}"
                raise UserError(f"{self.manifest_dir}: no clips for {name} ({where}); check data.*_split or data.fold")
            train = name == "train"
            aug = self.augment if train else {}
            self.sets[name] = ClassificationDataset(
                chosen, classes, self.target_length, self.mean, self.std, store, train=train, **aug
            )

    def train_dataloader(self) -> DataLoader:
        train = self.sets["train"]
        weights = augment.balanced_weights([c["labels"] for c in train.clips]) if self.balanced_sampling else None
        return self._loader(train, True, weights)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.sets["val"], False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.sets["test"], False)
