"""Exports by Hub repository id, the processor and the model card, without a network: a Hub cache
that the tests populate in huggingface_hub's own layout (models--org--name/snapshots/<commit>/...,
refs/<branch>), read through the real library with HF_HUB_OFFLINE=1."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from src.data.audio import fbank, load_audio, normalise, pad_or_cut, resample
from src.embedding import hear
from src.embedding.processor import SSAMBAProcessor
from src.models.convert import convert_to_export
from src.models.pretrained import from_pretrained, save_encoder
from src.models.ssl_module import SSLModule
from src.s3prl_upstream.hubconf import ssamba_local
from src.utils.errors import UserError
from tests.helpers import audio_files as af
from tests.helpers.encoders import make_encoder
from tests.test_convert import official_layout, randomize

ROOT = Path(__file__).resolve().parents[1]
REPO = "lab/ssamba-tiny-test"
FIRST, SECOND = "a" * 40, "b" * 40  # commits


def cache_repo(cache: Path, repo: str, files: dict[str, Path], commit: str, ref: str | None = "main") -> Path:
    """Put files into the Hub cache as huggingface_hub lays a downloaded snapshot out."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    for name, source in files.items():
        shutil.copy(source, snapshot / name)
    if ref:
        (folder / "refs").mkdir(exist_ok=True)
        (folder / "refs" / ref).write_text(commit)
    return snapshot


def export_files(folder: Path) -> dict[str, Path]:
    return {p.name: p for p in folder.iterdir() if p.is_file()}


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An offline Hub cache holding REPO at two commits (main -> FIRST) with different weights."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    exports = {}
    for seed, commit in ((0, FIRST), (1, SECOND)):
        torch.manual_seed(seed)
        encoder = make_encoder("ssamba", None, embed_dim=32, depth=2, target_length=128, mask_token=True)
        exports[commit] = save_encoder(encoder, tmp_path / f"export-{seed}", data={"mean": -4.0, "std": 3.0})
        cache_repo(cache, REPO, export_files(exports[commit]), commit, ref="main" if commit == FIRST else None)
    return cache, exports


def outputs(encoder):
    x = torch.randn(2, 1, 128, 128, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        return encoder(x)


def test_an_export_loads_by_repository_id_and_revision_offline(hub):
    cache, exports = hub
    torch.testing.assert_close(outputs(from_pretrained(REPO)), outputs(from_pretrained(exports[FIRST])))
    pinned = outputs(from_pretrained(exports[SECOND]))
    torch.testing.assert_close(outputs(from_pretrained(REPO, revision=SECOND)), pinned)
    torch.testing.assert_close(outputs(from_pretrained(f"{REPO}@{SECOND}")), pinned)  # as a config value


def test_a_revision_or_repository_not_in_the_cache_is_one_line_naming_it(hub):
    with pytest.raises(UserError, match=rf"{REPO}@v9: config.json is not in the Hub cache .* HF_HUB_OFFLINE is set"):
        from_pretrained(REPO, revision="v9")
    with pytest.raises(UserError, match="lab/other: config.json is not in the Hub cache"):
        from_pretrained("lab/other")


def test_a_damaged_export_in_the_cache_is_refused_as_a_local_one_is(hub):
    cache, exports = hub
    snapshot = cache / f"models--{REPO.replace('/', '--')}" / "snapshots" / FIRST
    weights = snapshot / "encoder.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(UserError, match="cut short or damaged"):
        from_pretrained(REPO)


def test_every_entry_point_reads_a_repository_id(hub, tmp_path):
    cache, exports = hub
    audio = torch.randn(1, 16000, generator=torch.Generator().manual_seed(0)) * 0.1
    expected = hear.get_scene_embeddings(audio, hear.load_model(str(exports[FIRST])))
    torch.testing.assert_close(hear.get_scene_embeddings(audio, hear.load_model(REPO)), expected)
    by_id, by_path = ssamba_local(REPO), ssamba_local(str(exports[FIRST]))
    torch.testing.assert_close(by_id(list(audio))["hidden_states"][-1], by_path(list(audio))["hidden_states"][-1])
    ssl = SSLModule(
        {"backbone": "ssamba", "size": None, "embed_dim": 32, "depth": 2, "target_length": 128},
        mask_patches=20,
        init_from=REPO,
    )
    torch.testing.assert_close(outputs(ssl.encoder.eval()), outputs(from_pretrained(exports[FIRST])))
    # the command line, in a fresh process that reads HF_HUB_OFFLINE and HF_HUB_CACHE from the environment
    af.tone(tmp_path / "in" / "a.wav", seconds=1.0)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}
    command = [sys.executable, "-m", "src.embedding", "--model", REPO, "--input", str(tmp_path / "in")]
    done = subprocess.run(
        [*command, "--output", str(tmp_path / "out"), "--device", "cpu"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    scene = hear.get_scene_embeddings(load_audio(tmp_path / "in" / "a.wav"), hear.load_model(str(exports[FIRST])))
    np.testing.assert_allclose(np.load(tmp_path / "out" / "a.npy"), scene[0].numpy(), rtol=1e-5, atol=1e-6)


def test_finetuning_starts_from_a_repository_id(hub):
    from src.models.finetune_module import FinetuneModule

    cache, exports = hub
    encoder = {"target_length": 128, "fstride": 16, "tstride": 16}  # the export's own input and stride
    module = FinetuneModule(encoder=encoder, num_classes=3, pretrained=REPO)
    torch.testing.assert_close(outputs(module.encoder.eval()), outputs(from_pretrained(exports[FIRST])))


def test_an_official_checkpoint_in_the_cache_converts_by_name(hub, tmp_path):
    cache, _ = hub
    source = randomize(make_encoder("ssamba", None, embed_dim=32, depth=2, target_length=256))
    torch.save(official_layout(source, 32), tmp_path / "amba_tiny_400.pth")
    cache_repo(cache, "attentionisallyouneed369/ssamba", {"amba_tiny_400.pth": tmp_path / "amba_tiny_400.pth"}, FIRST)
    done = subprocess.run(
        [sys.executable, "-m", "src.models.convert", "ssamba", "--hub", "attentionisallyouneed369/ssamba",
         "--file", "amba_tiny_400.pth", "--out", str(tmp_path / "by-name")],
        cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}, capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    convert_to_export("ssamba", tmp_path / "by-path", ckpt=tmp_path / "amba_tiny_400.pth")
    x = torch.randn(1, 1, 128, 256)
    with torch.no_grad():
        torch.testing.assert_close(from_pretrained(tmp_path / "by-name")(x), from_pretrained(tmp_path / "by-path")(x))
        torch.testing.assert_close(from_pretrained(tmp_path / "by-name")(x), source.eval()(x))
    config = json.loads((tmp_path / "by-name" / "config.json").read_text())
    assert config["converted_from"] == "attentionisallyouneed369/ssamba:amba_tiny_400.pth"
    with pytest.raises(UserError, match="amba_base_999.pth is not in the Hub cache"):
        convert_to_export("ssamba", tmp_path / "x", hub="attentionisallyouneed369/ssamba", file="amba_base_999.pth")


def test_the_processor_gives_the_training_pipelines_input(hub, tmp_path):
    processor = SSAMBAProcessor.from_pretrained(REPO)
    assert (processor.target_length, processor.mean, processor.std) == (128, -4.0, 3.0)
    af.tone(tmp_path / "a.wav", seconds=1.5)
    af.tone(tmp_path / "b.flac", seconds=0.7, sr=44100, channels=2, fmt="FLAC")
    for name in ("a.wav", "b.flac"):  # a file: decoded, mixed and resampled as the loaders do
        expected = normalise(pad_or_cut(fbank(load_audio(tmp_path / name)), 128), -4.0, 3.0)
        torch.testing.assert_close(processor(tmp_path / name), expected.unsqueeze(0), rtol=0, atol=0)
    wave = load_audio(tmp_path / "a.wav")[0]
    batch = processor(np.stack([wave.numpy(), wave.numpy()]), sampling_rate=16000)  # an array, a batch
    torch.testing.assert_close(batch[1], processor(tmp_path / "a.wav")[0], rtol=0, atol=0)
    at_44k = resample(wave, 16000, 44100)
    expected = normalise(pad_or_cut(fbank(resample(at_44k, 44100).unsqueeze(0)), 128), -4.0, 3.0)
    torch.testing.assert_close(processor(at_44k, sampling_rate=44100)[0], expected, rtol=1e-6, atol=1e-6)
    with pytest.raises(UserError, match="pass sampling_rate="):
        processor(wave)
    encoder = from_pretrained(REPO)
    with torch.no_grad():
        assert encoder(processor(tmp_path / "a.wav")).shape[-1] == 32


def fake_run(tmp_path, metrics: dict | None) -> Path:
    """A run folder as src/train.py leaves it: a checkpoint of this project, metrics.json and Hydra's record."""
    run = tmp_path / "run"
    encoder = make_encoder("ssamba", None, embed_dim=32, depth=2, target_length=128)
    ckpt = {
        "hyper_parameters": {"encoder": encoder.config.to_dict()},
        "state_dict": {f"encoder.{k}": v for k, v in encoder.state_dict().items()},
        "data": {"mean": -4.25, "std": 4.5, "fbank": {"sample_rate": 16000, "frame_shift": 10.0}},
        "global_step": 1234,
    }
    (run / "checkpoints").mkdir(parents=True)
    torch.save(ckpt, run / "checkpoints" / "last.ckpt")
    if metrics is not None:
        (run / "metrics.json").write_text(json.dumps(metrics))
    (run / ".hydra").mkdir()
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["experiment=ks2", "seed=7"]))
    sources = [
        {"path": "/data/features/audioset", "split": "unbalanced", "weight": 2.0},
        {"path": "/data/features/librispeech", "split": None, "weight": 0.28},
    ]
    data = {"_target_": "src.data.datamodules.PretrainDataModule", "sources": sources}
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"data": data}))
    return run / "checkpoints" / "last.ckpt"


@pytest.mark.parametrize("metrics", [{"test/acc": 0.9125, "val/acc": 0.875, "finished": True}, None])
def test_a_dry_run_publish_writes_the_card_from_the_run_and_lists_the_files(tmp_path, metrics):
    ckpt = fake_run(tmp_path, metrics)
    out = tmp_path / "export"
    done = subprocess.run(
        [sys.executable, "-m", "src.export", f"ckpt_path={ckpt}", f"out_dir={out}", "push_to_hub=lab/ks2-tiny",
         "dry_run=true", "license=cc-by-4.0"],
        cwd=ROOT, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    card = (out / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["license"] == "cc-by-4.0" and front["library_name"] == "ssamba"
    assert "optimizer steps: 1234" in card and "python -m src.train experiment=ks2 seed=7" in card
    assert "pretraining mix: audioset (unbalanced, weight 2.0), librispeech (every clip, weight 0.28)" in card
    assert 'from_pretrained("lab/ks2-tiny")' in card and "(x - -4.25) / (2 x 4.5)" in card
    if metrics:
        scores = front["model-index"][0]["results"][0]["metrics"]
        assert scores == [{"type": "acc", "value": 0.9125, "name": "test/acc"}]
        assert "| test/acc | 0.9125 |" in card and "| val/acc | 0.8750 |" in card
    else:
        assert "model-index" not in front and "No evaluation was recorded" in card
    listed = {p.name: p.stat().st_size for p in out.iterdir()}
    assert f"README.md ({listed['README.md']:,} bytes)" in done.stdout
    assert f"encoder.safetensors ({listed['encoder.safetensors']:,} bytes)" in done.stdout
    assert "would upload (dry run) to https://huggingface.co/lab/ks2-tiny" in done.stdout


def test_a_missing_local_folder_that_looks_like_a_repository_id_says_both(hub):
    with pytest.raises(
        UserError, match=r"^exports/amba: no such file or folder here, and from the Hub: exports/amba: config"
    ):
        from_pretrained("exports/amba")
