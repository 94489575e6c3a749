"""A stop at any point of a run, then ckpt_path=last, ends where the uninterrupted run ends: the same
final weights, global step and epochs, the same best validation score and best checkpoint, the same
test metrics. The stops are signals sent in-process at chosen hooks (tests/helpers/signals.py), and
"KILL": an abrupt end right after the last periodic save, what SIGKILL leaves. docs/reliability.md's
kill-and-resume table names these tests. test_reliability.py runs the same through real processes."""

import json
from pathlib import Path

import pytest
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import open_dict

from src.train import train
from tests.helpers.hydra_cfg import compose_cfg
from tests.helpers.signals import Killed

# two epochs of 6 steps, validation of 2 batches after each, a test of 2 batches; last.ckpt every 2
# steps; every random draw of fine-tuning on (mixup, noise, SpecAugment)
BASE = {
    "ks2_demo": [
        "experiment=ks2_demo",
        "test=true",
        "trainer.max_epochs=2",
        "trainer.limit_train_batches=6",
        "trainer.limit_val_batches=2",
        "trainer.limit_test_batches=2",
        "trainer.num_sanity_val_steps=1",
        "callbacks.last_checkpoint.every_n_train_steps=2",
        "data.mixup=0.5",
        "data.noise=true",
        "data.freqm=8",
        "data.timem=8",
    ],
    "pretrain_demo": [
        "experiment=pretrain_demo",
        "trainer.max_epochs=2",
        "trainer.limit_train_batches=5",
        "trainer.limit_val_batches=2",
        "trainer.num_sanity_val_steps=1",
        "callbacks.last_checkpoint.every_n_train_steps=2",
        "data.target_length=64",
        "model.mask_patches=12",
        "model.val_mask_patches=12",
    ],
}


def run(data_root, out: Path, experiment: str, *overrides, stop: dict | None = None):
    cfg = compose_cfg("train.yaml", BASE[experiment] + list(overrides), data_root, out)
    with open_dict(cfg):
        if stop is not None:
            cfg.callbacks.stop = {"_target_": "tests.helpers.signals.SignalAt", **stop}
    return train(cfg)


def outcome(out: Path) -> dict:
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    summary = json.loads((out / "metrics.json").read_text())
    return {
        "step": ckpt["global_step"],
        "epoch": ckpt["epoch"],
        "weights": ckpt["state_dict"],
        "summary": {
            k: v
            for k, v in summary.items()
            if k.startswith(("val/", "test/")) or k in ("global_step", "finished", "phases")
        },
        "best": Path(summary["best_checkpoint"]).name if summary.get("best_checkpoint") else None,
    }


def assert_same(got: dict, want: dict) -> None:
    assert (got["step"], got["epoch"], got["best"]) == (want["step"], want["epoch"], want["best"])
    assert got["summary"].keys() == want["summary"].keys()
    for key, value in want["summary"].items():
        if isinstance(value, float):
            assert got["summary"][key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
        else:
            assert got["summary"][key] == value, key
    for name, value in want["weights"].items():
        torch.testing.assert_close(got["weights"][name], value, rtol=1e-4, atol=1e-5, msg=name)


_uninterrupted: dict = {}


def uninterrupted(data_root, tmp_path_factory, experiment: str, *overrides) -> dict:
    key = (experiment, overrides)
    if key not in _uninterrupted:
        out = tmp_path_factory.mktemp("straight")
        run(data_root, out, experiment, *overrides)
        _uninterrupted[key] = outcome(out)
    return _uninterrupted[key]


def stop_then_resume(data_root, out: Path, experiment: str, stops: list[dict], *overrides) -> None:
    """Run with each stop in turn (the first from scratch, the others resuming), then resume to the end."""
    for k, stop in enumerate(stops):
        resume = ["ckpt_path=last"] if k else []
        with pytest.raises((SIGTERMException, Killed)):
            run(data_root, out, experiment, *overrides, *resume, stop=stop)
    run(data_root, out, experiment, *overrides, "ckpt_path=last")


# where -> (hook, step or batch index, sanity check's validation); ks2: 6 steps an epoch. mid_epoch:
# after step 3; last_batch: after an epoch's last batch, before its validation; validation: during
# it; epoch_end: after the epoch (and its validation); test: during test
POINTS = {
    "mid_epoch": ("on_train_batch_end", 3, False),
    "last_batch": ("on_train_batch_end", 6, False),
    "validation": ("on_validation_batch_end", 0, False),
    "epoch_end": ("on_train_epoch_end", 0, False),
    "test": ("on_test_batch_end", 0, False),
}
# every signal at every point; "KILL" right after the last periodic save: mid_epoch after the save at
# step 2 (steps 3 and 4 are trained again), last_batch after the one at step 4 (a save due at an
# epoch's last batch waits for its validation), validation and test likewise, epoch_end after the
# epoch's own save
CASES = [(point, sig) for point in POINTS for sig in ("TERM", "USR1", "USR2", "INT", "KILL")]


@pytest.mark.parametrize("point,sig", CASES, ids=[f"{p}-{s}" for p, s in CASES])
def test_a_stop_anywhere_resumes_to_the_uninterrupted_result(point, sig, data_root, tmp_path, tmp_path_factory):
    want = uninterrupted(data_root, tmp_path_factory, "ks2_demo")
    hook, step, sanity = POINTS[point]
    stop_then_resume(data_root, tmp_path, "ks2_demo", [dict(hook=hook, step=step, sig=sig, sanity=sanity)])
    assert_same(outcome(tmp_path), want)


def test_a_stop_during_the_sanity_check_of_a_resumed_run(data_root, tmp_path, tmp_path_factory):
    want = uninterrupted(data_root, tmp_path_factory, "ks2_demo")
    stops = [
        dict(hook="on_train_epoch_end", step=0, sig="TERM"),
        dict(hook="on_validation_batch_end", step=0, sig="TERM", sanity=True),
    ]
    stop_then_resume(data_root, tmp_path, "ks2_demo", stops)
    assert_same(outcome(tmp_path), want)


def test_a_finished_run_extended_equals_the_longer_run(data_root, tmp_path, tmp_path_factory):
    """trainer.max_epochs raised on a finished run: it trains the epochs that were missing, whole."""
    want = uninterrupted(data_root, tmp_path_factory, "ks2_demo", "trainer.max_epochs=3")
    run(data_root, tmp_path, "ks2_demo")
    run(data_root, tmp_path, "ks2_demo", "trainer.max_epochs=3", "ckpt_path=last")
    assert_same(outcome(tmp_path), want)


@pytest.mark.parametrize("point,sig", [("mid_epoch", "TERM"), ("epoch_end", "KILL")])
def test_pretraining_resumes_to_the_uninterrupted_result(point, sig, data_root, tmp_path, tmp_path_factory):
    want = uninterrupted(data_root, tmp_path_factory, "pretrain_demo")
    hook, step, _ = POINTS[point]
    stop_then_resume(data_root, tmp_path, "pretrain_demo", [dict(hook=hook, step=step, sig=sig)])
    assert_same(outcome(tmp_path), want)
