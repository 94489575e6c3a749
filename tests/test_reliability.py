"""What happens when things go wrong: kills, bad input, bad configs, unsafe files, a failing rank.
docs/reliability.md lists these cases; each row names its test here."""

import json
import os
import pickle
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from omegaconf import OmegaConf, open_dict

from src.data.prepare import PREPARERS
from src.data.prepare.common import finalize
from src.data.shards import FeatureStore, build
from src.utils.io import read_jsonl
from src.utils.utils import _user_cause
from tests.helpers import audio_files as af
from tests.helpers import layouts
from tests.helpers.hydra_cfg import SMALL_RUN

ROOT = Path(__file__).resolve().parents[1]
SMALL = [
    "experiment=ks2_demo",
    "++encoder.size=null",
    "++encoder.embed_dim=32",
    "++encoder.depth=2",
    "data.num_workers=0",
    "data.batch_size=2",
    "data.freqm=0",
    "data.timem=0",
    "logger=[]",
    "test=false",
    "trainer.max_epochs=100",
    "trainer.limit_val_batches=1",
    "trainer.num_sanity_val_steps=0",
]
STEPS = 40


# resumes must be exact with every random draw on: SpecAugment, mixup and noise when fine-tuning,
# crops shorter than the stored clips (400 frames) when pretraining, drop path in both
RANDOM = {
    "ks2_demo": ["data.freqm=24", "data.timem=24", "data.mixup=0.5", "data.noise=true", "encoder.drop_path_rate=0.1"],
    "pretrain_demo": [
        "data.target_length=64",
        "model.mask_patches=12",
        "model.val_mask_patches=12",
        "encoder.drop_path_rate=0.1",
    ],
}


def train_cmd(data_root, run_dir, *extra, experiment="ks2_demo"):
    args = [a for a in SMALL if not a.startswith(("experiment=", "data.freqm", "data.timem"))]
    args += RANDOM.get(experiment, [])
    return [
        sys.executable,
        "-m",
        "src.train",
        f"experiment={experiment}",
        *args,
        f"paths.data_dir={data_root}",
        f"hydra.run.dir={run_dir}",
        f"trainer.max_steps={STEPS}",
        "callbacks.model_checkpoint.every_n_train_steps=5",
        *extra,
    ]


def final_state(run_dir):
    ckpt = torch.load(Path(run_dir) / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    return ckpt


_straight_runs: dict = {}


def straight_run(data_root, tmp_path_factory, experiment):
    if experiment not in _straight_runs:
        run_dir = tmp_path_factory.mktemp("straight")
        cmd = train_cmd(data_root, run_dir, experiment=experiment)
        subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, timeout=300)
        _straight_runs[experiment] = final_state(run_dir)
    return _straight_runs[experiment]


@pytest.fixture(scope="module")
def uninterrupted(data_root, tmp_path_factory):
    return straight_run(data_root, tmp_path_factory, "ks2_demo")


@pytest.mark.parametrize(
    "experiment,sig",
    [
        pytest.param(experiment, sig, id=f"{experiment}-{sig.name}")  # ids as docs/reliability.md cites them
        # each signal once through a real process (test_resume_matrix.py sends every signal at every
        # point of both experiments in-process)
        for experiment, sig in [
            ("ks2_demo", signal.SIGKILL),
            ("ks2_demo", signal.SIGUSR2),
            ("pretrain_demo", signal.SIGTERM),
        ]
    ],
)
def test_killed_training_resumes_where_it_stopped(experiment, sig, data_root, tmp_path, tmp_path_factory):
    """Fine-tuning and pretraining (whose masks are drawn from the step, so a resume draws the same)."""
    uninterrupted = straight_run(data_root, tmp_path_factory, experiment)
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        train_cmd(data_root, run_dir, experiment=experiment),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    last = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 240
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "training ended before it could be interrupted"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    stopped_at = final_state(run_dir)["global_step"]
    assert 0 < stopped_at < STEPS
    resume = train_cmd(data_root, run_dir, "ckpt_path=last", experiment=experiment)
    if sig != signal.SIGKILL:  # the handler saved last.ckpt at a batch boundary and printed the command
        printed = err.decode().split("resume with: ")[-1].strip().splitlines()[0]
        assert printed.startswith("python -m src.train ") and f"hydra.run.dir={run_dir}" in printed
        resume = [sys.executable, *shlex.split(printed)[1:]]  # as printed
    subprocess.run(resume, cwd=ROOT, check=True, capture_output=True, timeout=300)
    resumed = final_state(run_dir)
    assert resumed["global_step"] == uninterrupted["global_step"] == STEPS
    # same data order, same optimizer and scheduler state: the same weights at the end
    for name, value in uninterrupted["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][name], value, rtol=1e-4, atol=1e-5, msg=name)
    opt_a, opt_b = resumed["optimizer_states"][0], uninterrupted["optimizer_states"][0]
    assert [s["step"] for s in opt_a["state"].values()] == [s["step"] for s in opt_b["state"].values()]
    schedulers = [(r.get("lr_schedulers") or [{}])[0].get("last_epoch") for r in (resumed, uninterrupted)]
    assert schedulers[0] == schedulers[1]


def test_checkpoint_that_does_not_fit_is_a_one_line_error(data_root, tmp_path, uninterrupted):
    # the module fixture's checkpoint is for embed_dim 32; ask for 48
    ckpt = tmp_path / "c.ckpt"
    torch.save(uninterrupted, ckpt)
    result = subprocess.run(
        train_cmd(data_root, tmp_path / "r", f"ckpt_path={ckpt}", "++encoder.embed_dim=48"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    assert "does not fit the model" in result.stderr and "Traceback" not in result.stderr


def test_a_planted_malicious_checkpoint_is_refused_without_running_it(data_root, tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    bad = tmp_path / "evil.ckpt"
    with open(bad, "wb") as f:
        pickle.dump({"state_dict": {}, "hyper_parameters": {"encoder": Payload()}}, f)
    result = subprocess.run(
        train_cmd(data_root, tmp_path / "r", f"model.pretrained={bad}"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2 and "refused to load" in result.stderr
    assert not marker.exists()


@pytest.mark.parametrize("script", ["src.train", "src.eval"])
@pytest.mark.parametrize("kind", ["pickled code", "text"])
def test_ckpt_path_to_a_file_that_is_not_a_safe_checkpoint_is_one_line(data_root, tmp_path, script, kind):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    bad = tmp_path / "bad.ckpt"
    if kind == "text":
        bad.write_text("not a checkpoint\n")
    else:
        with open(bad, "wb") as f:
            pickle.dump({"state_dict": Payload()}, f)
    run_dir = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        script,
        *SMALL,
        f"paths.data_dir={data_root}",
        f"hydra.run.dir={run_dir}",
        f"ckpt_path={bad}",
    ]
    if script == "src.eval":
        cmd = [c for c in cmd if not c.startswith(("test=", "trainer.max_epochs", "trainer.num_sanity"))]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr and "weights_only=False" not in result.stderr
    assert not marker.exists() and not run_dir.exists()


def test_eval_of_a_pretraining_checkpoint_reports_its_validation(data_root, tmp_path):
    run = tmp_path / "pre"
    common = [
        "experiment=pretrain_demo",
        *SMALL_RUN,
        "logger=[]",
        f"paths.data_dir={data_root}",
    ]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "src.train",
            *common,
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=2",
            "trainer.limit_val_batches=1",
            f"hydra.run.dir={run}",
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=300,
    )
    last = run / "checkpoints" / "last.ckpt"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "src.eval",
            *common,
            f"ckpt_path={last}",
            "trainer.limit_val_batches=1",
            f"hydra.run.dir={tmp_path / 'eval'}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "val/acc=" in result.stdout


def test_a_rank_that_raises_stops_the_whole_ddp_job(data_root, tmp_path):
    """2 CPU ranks launched as Lightning's ddp does (one process per rank); rank 1 raises at step 2."""
    cmd = [
        sys.executable,
        "-m",
        "src.train",
        "experiment=ks2_demo",
        "trainer=ddp_sim",
        "trainer.strategy=ddp",
        *SMALL_RUN,
        "logger=[]",
        f"paths.data_dir={data_root}",
        f"hydra.run.dir={tmp_path / 'run'}",
        "+callbacks.fail={_target_: tests.helpers.failing.FailOnRank, rank: 1, step: 2}",
    ]
    start = time.monotonic()
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert result.returncode != 0
    assert "RuntimeError: boom on rank 1" in result.stderr
    assert time.monotonic() - start < 180  # no hang


@pytest.mark.parametrize(
    "make,outcome",
    [
        (lambda p: af.tone(p, subtype="PCM_U8", fmt="WAV"), "converted"),
        (lambda p: af.tone(p, subtype="PCM_24"), "converted"),
        (lambda p: af.tone(p, sr=48000, channels=2), "converted"),
        (lambda p: af.tone(p, sr=8000), "converted"),
        (lambda p: af.tone(p, seconds=0.1), "converted"),
        (af.empty_file, "skipped"),
        (af.truncated_wav, "skipped"),
        (af.text_as_wav, "skipped"),
        (af.nan_wav, "skipped"),
    ],
)
def test_bad_audio_through_preparer_store_and_datamodule(make, outcome, tmp_path):
    root = layouts.esc50(tmp_path / "esc")
    make(root / "audio" / "1-10000-A-0.wav")  # replace one listed clip
    finalize(PREPARERS["esc50"](root), tmp_path / "prep", workers=2)
    build(tmp_path / "prep" / "manifest.jsonl", tmp_path / "feat", target_length=64, workers=1)
    store = FeatureStore(tmp_path / "feat")
    ids = {r["id"] for r in store.index}
    skipped = {r["id"] for r in read_jsonl(tmp_path / "prep" / "bad_files.jsonl")}
    skipped |= {r["id"] for r in read_jsonl(tmp_path / "feat" / "bad_files.jsonl")}
    assert ("1-10000-A-0" in ids) == (outcome == "converted")
    assert ("1-10000-A-0" in skipped) == (outcome == "skipped")
    assert len(ids) == 5 - (outcome == "skipped")  # nothing else lost (the layout has one other bad clip)
    if outcome == "converted":
        spec = store[[r["id"] for r in store.index].index("1-10000-A-0")]
        assert torch.isfinite(spec).all() and spec.shape == (1, 128, 64)


def test_names_that_are_not_utf8_and_missing_files(tmp_path):
    root = layouts.speech_commands(tmp_path / "sc", words=("yes", "no"), per_word=3)
    odd = os.path.join(os.fsencode(root / "yes"), b"caf\xe9_nohash_0.wav")
    import numpy as np
    import soundfile as sf

    sf.write(odd, np.zeros(16000, np.float32), 16000)
    (root / "no" / "00000002_nohash_0.wav").unlink()  # listed nowhere, simply gone
    finalize(PREPARERS["speechcommands"](root, task="ks2"), tmp_path / "prep", workers=2)
    manifest = read_jsonl(tmp_path / "prep" / "manifest.jsonl")
    assert any(os.fsencode(r["path"]) == odd for r in manifest)
    build(tmp_path / "prep" / "manifest.jsonl", tmp_path / "feat", target_length=32, workers=1)
    assert len(FeatureStore(tmp_path / "feat")) == len(manifest)
    # an entry whose file disappears after preparation is skipped and listed by the store
    entry = manifest[0]
    os.unlink(os.fsencode(entry["path"]))
    build(tmp_path / "prep" / "manifest.jsonl", tmp_path / "feat2", target_length=32, workers=1)
    gone = read_jsonl(tmp_path / "feat2" / "bad_files.jsonl")
    assert [g["id"] for g in gone] == [entry["id"]] and "file is gone" in gone[0]["reason"]


@pytest.mark.slow
def test_an_hour_long_file_is_cut_to_the_target_length(tmp_path):
    path = af.tone(tmp_path / "long.wav", seconds=3600.0, sr=16000)
    from src.data.audio import audio_duration

    assert audio_duration(path) == pytest.approx(3600.0)
    finalize(PREPARERS["librispeech"](layouts.librispeech(tmp_path / "ls")), tmp_path / "prep", workers=2)
    rows = read_jsonl(tmp_path / "prep" / "manifest.jsonl")
    rows.append({"id": "long", "path": str(path), "labels": [], "split": "train", "duration": 3600.0, "offset": 0.0})
    from src.utils.io import write_jsonl

    write_jsonl(tmp_path / "prep" / "manifest.jsonl", rows)
    build(tmp_path / "prep" / "manifest.jsonl", tmp_path / "feat", target_length=1024, workers=1)
    store = FeatureStore(tmp_path / "feat")
    i = next(i for i, r in enumerate(store.index) if r["id"] == "long")
    assert store.n_frames(i) == 1024 and store[i].shape == (1, 128, 1024)


def test_last_checkpoint_is_written_on_its_schedule_before_any_validation(data_root, tmp_path):
    """Lightning holds a monitored callback's step saves until the metric exists; last.ckpt has its
    own callback, which monitors nothing, and writes it when training ends too (step 7, not the
    periodic save's 6)."""
    from omegaconf import open_dict

    from src.train import train
    from tests.helpers.hydra_cfg import compose_cfg

    cfg = compose_cfg("train.yaml", ["experiment=ks2_demo", "test=false"], data_root, tmp_path)
    with open_dict(cfg):
        cfg.trainer.max_steps = 7
        cfg.trainer.limit_val_batches = 0  # no validation, so val/acc never exists
        cfg.callbacks.model_checkpoint.every_n_train_steps = 3
    train(cfg)
    files = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert files == ["last.ckpt"]
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 7


def test_a_killed_checkpoint_write_keeps_the_old_file_and_its_leftover_is_removed(tmp_path, monkeypatch):
    from src.utils.checkpoints import AtomicCheckpointIO
    from src.utils.io import remove_partial_writes

    io, target = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint({"global_step": 1}, target)

    def dies_half_way(obj, f):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt  # a kill during the write

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"global_step": 2}, target)
    monkeypatch.undo()
    assert torch.load(target, weights_only=True)["global_step"] == 1  # the previous one, whole
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # atomic_path removed its temp file
    (tmp_path / ".last.ckpt.x1y2.tmp").write_bytes(b"left by kill -9")  # what SIGKILL leaves
    assert [p.name for p in remove_partial_writes(tmp_path)] == [".last.ckpt.x1y2.tmp"]
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_a_checkpoint_is_written_beside_its_target_not_in_tmpdir(tmp_path, monkeypatch):
    from src.utils.checkpoints import AtomicCheckpointIO

    elsewhere = tmp_path / "tmpdir"
    elsewhere.mkdir()
    monkeypatch.setenv("TMPDIR", str(elsewhere))
    seen = []
    real_save = torch.save
    monkeypatch.setattr(torch, "save", lambda obj, f: (seen.append(Path(f.name).parent), real_save(obj, f)))
    AtomicCheckpointIO().save_checkpoint({"global_step": 3}, tmp_path / "ckpts" / "last.ckpt")
    assert seen == [tmp_path / "ckpts"] and not any(elsewhere.iterdir())


def test_a_second_training_into_a_busy_run_folder_is_refused(data_root, tmp_path):
    from src.utils.io import exclusive_lock

    with exclusive_lock(tmp_path / "run" / ".lock", "busy"):  # as a training running there holds it
        result = subprocess.run(
            train_cmd(data_root, tmp_path / "run"), cwd=ROOT, capture_output=True, text=True, timeout=300
        )
    assert result.returncode == 2
    assert "is in use by another training" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_truncated_checkpoint_is_reported_as_truncated_not_as_unsafe(tmp_path, uninterrupted):
    from src.models.pretrained import read_checkpoint

    torch.save(uninterrupted, tmp_path / "whole.ckpt")
    data = (tmp_path / "whole.ckpt").read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(data[: len(data) // 2])  # a copy killed half way
    with pytest.raises(ValueError, match="not a readable checkpoint .* may be truncated") as caught:
        read_checkpoint(tmp_path / "cut.ckpt")
    assert "pickled objects" not in str(caught.value)


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["ckpt_path=???"], "ckpt_path=??? is not a checkpoint"),
        (["trainer.max_epochs=abc"], "trainer.max_epochs='abc' is not a whole number"),
        (["trainer.max_steps=2", "trainer.limit_val_batches=0"], "val/acc was never logged: no val step ran"),
        (["data.batch_size=2.5"], "data.batch_size=2.5 is not a whole number"),
        (["encoder.depth=0"], "encoder.depth=0 is outside 1..512"),
        (["+model.foo=1"], "model.foo is not a setting of FinetuneModule"),
    ],
)
def test_config_mistakes_end_in_one_line_with_the_fix(data_root, tmp_path, overrides, message):
    result = subprocess.run(
        train_cmd(data_root, tmp_path / "run", *overrides), cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len([line for line in result.stderr.splitlines() if line.startswith("error:")]) == 1
    if "never logged" not in message:  # that one trained (its checkpoints stay); the rest stop on their checks
        assert not (tmp_path / "run").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the machine has a CUDA GPU")
@pytest.mark.parametrize("trainer", ["gpu", "ddp_bf16"])
def test_a_gpu_recipe_on_a_machine_without_a_gpu_is_one_line_naming_the_cpu_trainers(tmp_path, trainer):
    """The recipes' trainer=gpu as a user runs it on a laptop: the fix in one line, exit 2, no run folder."""
    command = [
        sys.executable,
        "-m",
        "src.train",
        "experiment=ks2",
        f"trainer={trainer}",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no CUDA GPU" in errors[0] and "trainer=cpu" in errors[0], errors
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "override,message",
    [
        ("data.batch_size=0", "data.batch_size=0 is below 1"),
        ("data.batch_size=-1", "data.batch_size=-1 is below 1"),
        ("data.num_workers=-1", "data.num_workers=-1 is below 0"),
        ("trainer.max_steps=-5", "trainer.max_steps=-5 is below -1 (-1: no limit)"),
        ("trainer.max_epochs=-5", "trainer.max_epochs=-5 is below -1 (-1: no limit)"),
        ("trainer.devices=0", "trainer.devices=0: use a count of at least 1"),
        ("trainer.num_nodes=0", "trainer.num_nodes=0 is below 1"),
        ("+data.foo=1", "data.foo is not a setting of ClassificationDataModule"),
        ("encoder.depth=-2", "encoder.depth=-2 is outside 1..512"),
        ("encoder.embed_dim=0", "encoder.embed_dim=0 is outside 1..8192"),
        ("encoder.depth=3", "pair_flip needs an even depth, got 3"),
    ],
)
def test_settings_out_of_range_are_named_before_anything_is_built(data_root, tmp_path, override, message):
    """The same checks in the process (the three cases above show them as one line, exit 2, no
    run folder, through src/train.py)."""
    from src.train import train
    from tests.helpers.hydra_cfg import compose_cfg

    cfg = compose_cfg("train.yaml", ["experiment=ks2_demo"], data_root, tmp_path)
    key, value = override.lstrip("+").split("=")
    with open_dict(cfg):
        OmegaConf.update(cfg, key, yaml.safe_load(value), force_add=True)
    with pytest.raises(Exception) as caught:  # a UserError, or Hydra's InstantiationException around one
        train(cfg)
    assert message in str(_user_cause(caught.value)), caught.value
    assert not (tmp_path / "checkpoints").exists()


def test_mask_counts_that_do_not_fit_stop_before_training(data_root, tmp_path):
    from src.models.ssl_module import SSLModule

    encoder = dict(backbone="ssamba", size=None, embed_dim=32, depth=2, target_length=64)
    for key, count in (("mask_patches", 1000), ("mask_patches", 0), ("val_mask_patches", 1000)):
        with pytest.raises(
            ValueError,
            match=rf"model.{key}={count}: the input has 32 patches \(8 x 4 at "
            r"target_length=64\); mask between 1 and 30 of them",
        ):
            SSLModule(encoder, **{"mask_patches": 12, key: count})
    result = subprocess.run(
        train_cmd(data_root, tmp_path / "run", "model.val_mask_patches=1000", experiment="pretrain_demo"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2 and "model.val_mask_patches=1000" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "run").exists()  # not after a whole epoch


def test_a_learning_rate_of_zero_warns_and_a_negative_one_is_refused():
    from src.models.optim import make_optimizer

    params = [torch.nn.Parameter(torch.zeros(2))]
    with pytest.warns(UserWarning, match="learning rate is 0"):
        make_optimizer(params, "adamw", lr=0.0)
    with pytest.raises(ValueError, match="set model.optimizer.lr to a positive value"):
        make_optimizer(params, "adamw", lr=-1e-4)


def test_a_store_whose_index_is_gone_says_how_to_rebuild_it(data_root, tmp_path):
    import shutil

    shutil.copytree(data_root / "demo" / "features" / "speechcommands-ks2", tmp_path / "store")
    (tmp_path / "store" / "index.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match="index.jsonl is gone; run the build command .* again"):
        FeatureStore(tmp_path / "store")


def test_resuming_a_finished_run_says_so_and_changes_nothing(data_root, tmp_path):
    run_dir = tmp_path / "run"
    subprocess.run(train_cmd(data_root, run_dir), cwd=ROOT, check=True, capture_output=True, timeout=300)
    before = (run_dir / "metrics.json").read_bytes()
    last = (run_dir / "checkpoints" / "last.ckpt").stat().st_mtime_ns
    assert json.loads(before)["finished"] is True
    result = subprocess.run(
        train_cmd(data_root, run_dir, "ckpt_path=last"), cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "finished its training at step 40" in result.stdout + result.stderr
    assert (run_dir / "metrics.json").read_bytes() == before
    assert (run_dir / "checkpoints" / "last.ckpt").stat().st_mtime_ns == last


def test_a_run_summary_keeps_what_the_file_held_before(tmp_path):
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from src.utils import entry

    cfg = OmegaConf.create({"paths": {"output_dir": str(tmp_path)}, "trainer": {"max_epochs": 1}, "data": {}})
    (tmp_path / "metrics.json").write_text(json.dumps({"test/acc": 0.75, "val/acc": 0.5}))
    device = SimpleNamespace(root_device=torch.device("cpu"))
    trainer = SimpleNamespace(
        state=SimpleNamespace(status="finished"),
        interrupted=False,
        global_step=9,
        checkpoint_callbacks=[],
        callbacks=[],
        loggers=[],
        world_size=1,
        strategy=device,
        precision="32-true",
    )
    entry.write_run_summary(cfg, trainer, {"val/acc": 0.625})
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["test/acc"] == 0.75 and saved["val/acc"] == 0.625 and saved["global_step"] == 9


def _hostile_export(tmp_path, damage: str) -> Path:
    """A small SSAMBA export, damaged as a careless or hostile source would hand it over."""
    from safetensors.torch import load_file, save_file

    from src.models.pretrained import save_encoder
    from tests.helpers.encoders import make_encoder

    out = save_encoder(
        make_encoder("ssamba", None, embed_dim=32, depth=2, target_length=128),
        tmp_path / "enc",
        data={"mean": -5.0, "std": 4.0},
    )
    config_file, weights = out / "config.json", out / "encoder.safetensors"
    config = json.loads(config_file.read_text())
    if damage == "truncated weights":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "NaN weights":
        save_file({k: torch.full_like(v, float("nan")) for k, v in load_file(str(weights)).items()}, str(weights))
    elif damage == "config.json is /dev/zero":
        config_file.unlink()
        config_file.symlink_to("/dev/zero")
    elif damage == "no encoder key":
        config_file.write_text(json.dumps({"data": config["data"]}))
    else:
        key, value = {
            "unknown key": ("foo", 1),
            "wrongly typed key": ("depth", "2"),
            "depth 1000000": ("depth", 10**6),
            "embed_dim 10**7": ("embed_dim", 10**7),
            "target_length 10**9": ("target_length", 10**9),
            "depth 4 (weights have 2)": ("depth", 4),
        }[damage]
        config["encoder"][key] = value
        config_file.write_text(json.dumps(config))
    return out


HOSTILE_EXPORTS = [
    "truncated weights",
    "NaN weights",
    "config.json is /dev/zero",
    "no encoder key",
    "unknown key",
    "wrongly typed key",
    "depth 1000000",
    "embed_dim 10**7",
    "target_length 10**9",
    "depth 4 (weights have 2)",
]


@pytest.mark.parametrize("damage", HOSTILE_EXPORTS)
def test_a_hostile_export_is_refused_before_anything_is_built(tmp_path, damage, monkeypatch):
    import resource

    from src.embedding import hear
    from src.models.components import encoder as encoder_module

    export = _hostile_export(tmp_path, damage)
    built = []

    def refuse(self, *args, **kwargs):
        built.append(args)
        raise AssertionError("the encoder was built")

    monkeypatch.setattr(encoder_module.SSAMBAEncoder, "__init__", refuse)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ValueError) as caught:
        hear.load_model(str(export))
    assert str(tmp_path / "enc") in str(caught.value)  # the message names the file
    assert not built and resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KiB


@pytest.mark.parametrize("damage", ["truncated weights", "NaN weights", "depth 1000000", "config.json is /dev/zero"])
def test_embed_with_a_hostile_export_is_one_line(tmp_path, damage):
    export = _hostile_export(tmp_path, damage)
    af.tone(tmp_path / "in" / "a.wav", seconds=1.0)
    command = [sys.executable, "-m", "src.embedding", "--model", str(export), "--input", str(tmp_path / "in")]
    command += ["--output", str(tmp_path / "out"), "--device", "cpu"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert len([line for line in result.stderr.splitlines() if line.startswith("error:")]) == 1
    assert not (tmp_path / "out").exists()


def test_fine_tuning_from_nan_weights_stops_in_one_line_without_a_run_folder(data_root, tmp_path):
    export = _hostile_export(tmp_path, "NaN weights")
    run_dir = tmp_path / "run"
    result = subprocess.run(
        train_cmd(data_root, run_dir, f"model.pretrained={export}", "data.target_length=128"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2 and "hold NaN or inf" in result.stderr and "Traceback" not in result.stderr
    assert not run_dir.exists()


def test_a_nan_loss_stops_training_with_a_checkpoint_and_valid_json(data_root, tmp_path):
    run_dir = tmp_path / "run"
    result = subprocess.run(
        train_cmd(data_root, run_dir, "model.optimizer.lr=1e30", "trainer.max_steps=200"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2 and "the training loss became" in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    saved = torch.load(run_dir / "checkpoints" / "before_nonfinite.ckpt", weights_only=True, map_location="cpu")
    assert all(torch.isfinite(v).all() for v in saved["state_dict"].values() if v.is_floating_point())
    for path in run_dir.rglob("*.json"):
        assert "NaN" not in path.read_text() and "Infinity" not in path.read_text(), path
        json.loads(path.read_text())


class _Diverging:
    """A one-tensor model whose loss is NaN at one step, trained by a fused AdamW (which takes the
    device-side skip flag, as CUDA training's does) on the CPU."""

    @staticmethod
    def run(tmp_path, nan_at: int, max_steps: int, accumulate: int = 1):
        import lightning as L
        from torch.utils.data import DataLoader

        from src.utils.callbacks import StopOnNonFiniteLoss

        class Model(L.LightningModule):
            def __init__(self):
                super().__init__()
                self.w = torch.nn.Parameter(torch.linspace(1.0, 2.0, 4))

            def training_step(self, batch, batch_idx):
                loss = ((self.w * batch).sum() - 3.0) ** 2
                return loss * float("nan") if batch_idx == nan_at else loss

            def configure_optimizers(self):
                return torch.optim.AdamW(self.parameters(), lr=0.1, fused=True)

            def train_dataloader(self):
                return DataLoader(torch.ones(64, 4), batch_size=2)

        torch.manual_seed(0)
        model = Model()
        quiet = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
        callbacks = [StopOnNonFiniteLoss(str(tmp_path))]
        trainer = L.Trainer(
            max_steps=max_steps, accumulate_grad_batches=accumulate, accelerator="cpu", callbacks=callbacks, **quiet
        )
        trainer.fit(model)
        return model


@pytest.mark.parametrize("accumulate", [1, 2])
def test_with_a_fused_optimizer_a_nan_loss_is_skipped_on_the_device_and_stops_the_run(tmp_path, accumulate):
    """No host sync per step: the flag goes to the optimizer on the device, the bad update is never
    applied, and the run stops when the flag is read, with the weights before the NaN saved."""
    from src.utils.errors import UserError

    nan_at = 3 * accumulate  # the first micro-batch of optimizer step 3
    with pytest.raises(UserError, match="the training loss became nan at step 3; the weights before it are in"):
        _Diverging.run(tmp_path / "nan", nan_at=nan_at, max_steps=20, accumulate=accumulate)
    before = _Diverging.run(tmp_path / "clean", nan_at=-1, max_steps=3, accumulate=accumulate)
    saved = torch.load(tmp_path / "nan" / "before_nonfinite.ckpt", weights_only=True, map_location="cpu")
    torch.testing.assert_close(saved["state_dict"]["w"], before.w.detach(), rtol=0, atol=0)
    assert saved["optimizer_states"][0]["state"][0]["step"].item() == 3  # the skipped step left no trace


_PEAK = """import runpy, sys
sys.argv = ["src.embedding", *sys.argv[1:]]
try:
    runpy.run_module("src.embedding", run_name="__main__", alter_sys=True)
except SystemExit as e:
    assert not e.code, e.code
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM"))  # this process's own peak
print("peak_kib", hwm.split()[1])
"""


def _long_tone(path: Path, minutes: int, sr: int = 44100) -> Path:
    """A stereo tone written a minute at a time (the test itself stays small)."""
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(60 * sr) / sr
    minute = (0.3 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)
    with sf.SoundFile(str(path), "w", samplerate=sr, channels=2, subtype="PCM_16") as f:
        for _ in range(minutes):
            f.write(np.stack([minute, 0.7 * minute], axis=1))
    return path


def _embed_peak(export, folder, out) -> int:
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            _PEAK,
            "--model",
            str(export),
            "--input",
            str(folder),
            "--output",
            str(out),
            "--device",
            "cpu",
            "--timestamps",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return int(result.stdout.split("peak_kib")[-1])


@pytest.mark.slow
def test_embedding_a_long_file_keeps_memory_flat_and_timestamps_exact(tmp_path):
    """embed.py on 6 minutes and on an hour (44.1 kHz stereo): the hour's peak memory is the six
    minutes' within 150 MB (the whole hour decoded at 44.1 kHz stereo alone is 1.2 GB)."""
    from src.models.pretrained import save_encoder
    from tests.helpers.encoders import make_encoder

    export = save_encoder(
        make_encoder("ssamba", None, embed_dim=32, depth=2, target_length=128),
        tmp_path / "enc",
        data={"mean": -5.0, "std": 4.0},
    )
    peaks = {}
    for minutes in (6, 60):
        _long_tone(tmp_path / f"in{minutes}" / "a.wav", minutes)
        peaks[minutes] = _embed_peak(export, tmp_path / f"in{minutes}", tmp_path / f"out{minutes}")
    print(f"peak memory of embed.py: {peaks} KiB")
    assert peaks[60] - peaks[6] < 150_000 and peaks[60] < 1_000_000, peaks  # KiB
    times = np.load(tmp_path / "out60" / "a.times_ms.npy")
    assert times.dtype == np.float64 and len(times) == len(np.load(tmp_path / "out60" / "a.timestamps.npy"))
    assert times[-1] == 87.5 + 160.0 * (len(times) - 1)  # centres at 87.5 + 160 k ms, exact in float64
    assert np.isfinite(np.load(tmp_path / "out60" / "a.npy")).all()


def test_absurd_and_non_finite_samples_are_refused_per_file_and_by_the_api(tmp_path):
    import soundfile as sf

    from src.embedding import hear
    from src.embedding.folder import embed_folder
    from src.models.pretrained import save_encoder
    from tests.helpers.encoders import make_encoder

    export = save_encoder(
        make_encoder("ssamba", None, embed_dim=32, depth=2, target_length=128),
        tmp_path / "enc",
        data={"mean": -5.0, "std": 4.0},
    )
    model = hear.load_model(str(export))
    (tmp_path / "in").mkdir()
    sf.write(str(tmp_path / "in" / "huge.wav"), np.full(16000, 1e30, np.float32), 16000, subtype="FLOAT")
    af.tone(tmp_path / "in" / "fine.wav", seconds=1.0)
    skipped = embed_folder(model, tmp_path / "in", tmp_path / "out")
    assert len(skipped) == 1 and "huge.wav: samples up to 1e+30" in skipped[0]
    assert (tmp_path / "out" / "fine.npy").exists() and not (tmp_path / "out" / "huge.npy").exists()
    for bad, why in (
        (torch.full((1, 16000), float("nan")), "NaN or inf samples"),
        (torch.full((1, 16000), 1e30), "samples up to 1e\\+30"),
    ):
        with pytest.raises(ValueError, match=f"^audio: {why}"):
            hear.get_scene_embeddings(bad, model)


def test_a_run_folder_with_checkpoints_is_not_started_over_and_a_refused_run_writes_nothing(data_root, tmp_path):
    """The first command again in a stopped run's folder, without ckpt_path=last: refused in one line
    before Hydra writes its record or the log (RunFolderGuard), so the folder is as the stop left it."""
    run_dir = tmp_path / "run"
    subprocess.run(train_cmd(data_root, run_dir), cwd=ROOT, check=True, capture_output=True, timeout=300)
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    result = subprocess.run(train_cmd(data_root, run_dir), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "holds the checkpoints of an earlier run" in result.stderr and "ckpt_path=last" in result.stderr
    assert "Traceback" not in result.stderr
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before


def _fake_datamodule(mean=-4.27, std=4.57, classes=("a", "b", "c"), fingerprint="f1"):
    from types import SimpleNamespace

    return SimpleNamespace(mean=mean, std=std, classes=list(classes), fingerprint=lambda: fingerprint)


@pytest.mark.parametrize(
    "change,message",
    [
        ({"classes": ("b", "a", "c")}, "first difference at output 0: ['a'] vs ['b']"),
        ({"classes": ("a", "b")}, "trained on 3 classes and this run's data has 2"),
        ({"mean": 0.0, "std": 1.0}, "pass data.mean=-4.27 data.std=4.57"),
        ({"fingerprint": "f2"}, "was trained on other data (fingerprint f1, this run's f2"),
    ],
)
def test_a_checkpoint_of_other_data_is_refused_naming_both_sides_and_the_override(change, message, tmp_path):
    from omegaconf import OmegaConf

    from src.utils import entry
    from src.utils.errors import UserError

    ckpt = tmp_path / "c.ckpt"
    torch.save({"data": {"mean": -4.27, "std": 4.57, "classes": ["a", "b", "c"], "fingerprint": "f1"}}, ckpt)
    cfg = OmegaConf.create({"data_check": True})
    entry.check_data(cfg, str(ckpt), _fake_datamodule(), resuming=True)  # the same data: accepted
    with pytest.raises(UserError, match="data_check=false") as refused:
        entry.check_data(cfg, str(ckpt), _fake_datamodule(**change), resuming=True)
    assert message in str(refused.value)
    entry.check_data(OmegaConf.create({"data_check": False}), str(ckpt), _fake_datamodule(**change), resuming=True)
    if "fingerprint" in change:  # eval tests on its own split: only a resume compares the training data
        entry.check_data(cfg, str(ckpt), _fake_datamodule(**change), resuming=False)


def test_eval_on_reordered_classes_is_one_line(data_root, tmp_path, uninterrupted):
    """src/eval.py with a checkpoint whose classes are not the data's: exit 2, nothing evaluated."""
    ckpt = tmp_path / "c.ckpt"
    state = dict(uninterrupted)
    state["data"] = {**state["data"], "classes": list(reversed(state["data"]["classes"]))}
    torch.save(state, ckpt)
    skip = ("trainer.max_", "test=", "callbacks.")
    args = [a for a in train_cmd(data_root, tmp_path / "e", f"ckpt_path={ckpt}")[3:] if not a.startswith(skip)]
    result = subprocess.run(
        [sys.executable, "-m", "src.eval", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 2, result.stderr[-1500:]
    assert "first difference at output 0" in result.stderr and "Traceback" not in result.stderr


def test_a_full_disk_at_a_save_is_one_line_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    import errno

    from src.utils.checkpoints import AtomicCheckpointIO
    from src.utils.errors import UserError

    io, target = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint({"global_step": 1}, target)

    def disk_full(obj, f):
        f.write(b"part of it")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(UserError, match=f"no space left in {tmp_path} to write last.ckpt .*MiB needed") as full:
        io.save_checkpoint({"global_step": 2, "w": torch.zeros(2**20)}, target)
    assert "the previous last.ckpt is kept" in str(full.value) and "ckpt_path=last" in str(full.value)
    monkeypatch.undo()
    assert torch.load(target, weights_only=True)["global_step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_a_nonfinite_validation_loss_is_named_and_recorded(data_root, tmp_path, caplog):
    from omegaconf import open_dict

    from src.train import train
    from tests.helpers.hydra_cfg import compose_cfg

    cfg = compose_cfg("train.yaml", ["experiment=ks2_demo", "test=false", "trainer.max_epochs=1"], data_root, tmp_path)
    with open_dict(cfg):
        cfg.trainer.limit_train_batches = 2
        cfg.trainer.limit_val_batches = 1
        cfg.callbacks.poison = {"_target_": "tests.helpers.signals.NanValidationLoss"}
    train(cfg)
    assert "the val loss is nan at step 2" in caplog.text
    record = json.loads((tmp_path / "metrics.json").read_text())
    assert record["nonfinite_losses"] == [{"stage": "val", "step": 2, "epoch": 0, "loss": None}]
