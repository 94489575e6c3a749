"""The embedding API (HEAR), the embed CLI and the s3prl upstream, on a small exported encoder."""

import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from src.embedding import hear
from src.embedding.__main__ import main as embed_main
from src.embedding.windows import load_frontend
from src.models.pretrained import save_encoder
from src.s3prl_upstream.hubconf import ssamba_local, ssamba_patch16
from tests.helpers import audio_files as af
from tests.helpers.encoders import make_encoder


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "enc"
    encoder = make_encoder("ssamba", None, embed_dim=32, depth=2, target_length=256)
    save_encoder(encoder, out, data={"mean": -5.0, "std": 4.0})
    return out


def test_hear_api_shapes_timestamps_and_attributes(export_dir):
    model = hear.load_model(str(export_dir))
    assert model.sample_rate == 16000 and model.scene_embedding_size == model.timestamp_embedding_size == 32
    audio = torch.randn(3, 16000 * 3) * 0.1  # 3 s: two windows of 256 frames
    emb, ts = hear.get_timestamp_embeddings(audio, model)
    # one column every 160 ms whose centre is inside the 3000 ms: centres 87.5, 247.5, ..., 2967.5
    assert emb.shape == (3, 19, 32) and ts.shape == (3, 19)
    torch.testing.assert_close(ts[0, :3], torch.tensor([87.5, 247.5, 407.5], dtype=torch.float64))  # ms, float64
    scene = hear.get_scene_embeddings(audio, model)
    torch.testing.assert_close(scene, emb.mean(1))


@pytest.mark.parametrize("stride", [16, 10])
@pytest.mark.parametrize("seconds", [1.07, 1.98, 4.0, 12.3])
def test_hear_timestamps_are_regular_inside_the_audio_and_at_patch_centres(export_dir, stride, seconds):
    """hear-validator's lengths (1.07, 1.98, 4.0 s) and a clip of several windows: every hop equals the
    patch stride, also across window boundaries; the last timestamp is inside the audio and the next
    one would not be; each timestamp is the centre of its patch's frames (frame i spans
    [10 i, 10 i + 25) ms, so a 16-frame patch starting at frame s is centred at 10 s + 87.5 ms)."""
    model = hear.load_model(str(export_dir))
    if stride != 16:
        model = hear.EmbeddingModel(load_frontend(str(export_dir), stride=(stride, stride)))
    n_samples = round(16000 * seconds)
    emb, ts = hear.get_timestamp_embeddings(torch.randn(1, n_samples) * 0.1, model)
    hop = 10.0 * stride
    assert emb.shape[:2] == ts.shape and torch.isfinite(emb).all()
    torch.testing.assert_close(ts.diff(dim=1), torch.full((1, ts.shape[1] - 1), hop, dtype=torch.float64))
    torch.testing.assert_close(ts[0, 0], torch.tensor(87.5, dtype=torch.float64))
    duration_ms = 1000 * n_samples / 16000
    assert ts[0, -1] < duration_ms <= ts[0, -1] + hop


def test_any_length_works_including_shorter_than_a_patch(export_dir):
    model = hear.load_model(str(export_dir))
    emb, ts = hear.get_timestamp_embeddings(torch.randn(1, 800), model)  # 50 ms
    assert emb.shape == (1, 1, 32) and torch.isfinite(emb).all()


def embed(export_dir, tmp_path, *extra) -> int:
    """python -m src.embedding on tmp_path/in, into tmp_path/out, on the CPU."""
    folders = ["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")]
    return embed_main(["--model", str(export_dir), *folders, "--device", "cpu", *extra])


def test_embed_cli_agrees_with_the_api(export_dir, tmp_path):
    af.tone(tmp_path / "in" / "a.wav", seconds=2.0)
    af.tone(tmp_path / "in" / "sub" / "b.flac", seconds=1.0, sr=44100, channels=2, fmt="FLAC")
    af.text_as_wav(tmp_path / "in" / "broken.wav")
    assert embed(export_dir, tmp_path, "--timestamps") == 0
    from src.data.audio import load_audio

    model = hear.load_model(str(export_dir))
    for rel in ("a.wav", "sub/b.flac"):
        audio = load_audio(tmp_path / "in" / rel)
        scene = hear.get_scene_embeddings(audio, model)[0]
        stem = (tmp_path / "out" / rel).with_suffix("")
        np.testing.assert_allclose(np.load(f"{stem}.npy"), scene.numpy(), rtol=1e-5, atol=1e-6)
        assert np.load(f"{stem}.timestamps.npy").shape[1] == 32
    assert not (tmp_path / "out" / "broken.npy").exists()


def test_files_that_differ_only_by_extension_keep_one_output_each(export_dir, tmp_path):
    af.tone(tmp_path / "in" / "clip.wav", seconds=1.0, freq=440.0)
    af.tone(tmp_path / "in" / "clip.flac", seconds=1.0, freq=880.0, fmt="FLAC")
    af.tone(tmp_path / "in" / "other.wav", seconds=1.0)
    assert embed(export_dir, tmp_path) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["clip.flac.npy", "clip.wav.npy", "other.npy"]
    assert not np.allclose(np.load(tmp_path / "out" / "clip.wav.npy"), np.load(tmp_path / "out" / "clip.flac.npy"))


def test_s3prl_upstream_as_the_runner_drives_it(export_dir):
    """What s3prl's runner and Featurizer do: build from a ckpt, feed a list of variable-length 16 kHz
    wavs, read hidden_states (all the same shape, time-major, as long as the longest wav needs), and
    back-propagate when the upstream is trainable (-f)."""
    upstream = ssamba_local(str(export_dir))
    rate = upstream.get_downsample_rates("hidden_states")
    assert rate == 1600  # SSAMBA's s3prl setup: stride 10 -> 100 ms
    wavs = [torch.randn(16000 * 3), torch.randn(16000 * 2)]
    hidden = upstream(wavs)["hidden_states"]
    assert len(hidden) == upstream.encoder.config.depth // 2 + 1  # one per layer pair (official stack) + the output
    shapes = {tuple(h.shape) for h in hidden}
    assert len(shapes) == 1
    batch, frames, features = shapes.pop()
    assert batch == 2 and frames == 16000 * 3 // rate and features == 12 * 32  # 12 freq patches
    sum(h.sum() for h in hidden).backward()
    assert upstream.encoder.patch_embed.proj.weight.grad is not None


@pytest.mark.parametrize("entry, rate", [(ssamba_local, 1600), (ssamba_patch16, 2560)])
def test_s3prl_frame_counts_follow_the_downsample_rate_at_every_length(export_dir, entry, rate):
    """ceil(samples / rate) frames from 0.1 s to 120 s: s3prl's Featurizer asserts it (the old windows
    fell one frame behind per 10 s window with stride 10)."""
    upstream = entry(str(export_dir), window_frames=256)
    assert upstream.get_downsample_rates("hidden_states") == rate
    for seconds in (0.1, 0.99, 2.56, 2.57, 10.0, 50.0, 60.0, 120.0):
        n = round(16000 * seconds)
        with torch.no_grad():
            hidden = upstream([torch.randn(n) * 0.1])["hidden_states"][-1]
        assert hidden.shape[1] == -(-n // rate), seconds


def test_s3prl_features_do_not_depend_on_the_other_utterances(export_dir):
    upstream = ssamba_local(str(export_dir), window_frames=256).eval()
    short = torch.randn(16000) * 0.1
    with torch.no_grad():
        alone = upstream([short])["hidden_states"]
        batched = upstream([torch.randn(40000) * 0.1, short, torch.randn(59200) * 0.1])["hidden_states"]
    frames = alone[0].shape[1]
    for a, b in zip(alone, batched):
        torch.testing.assert_close(b[1, :frames], a[0], rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(
    importlib.util.find_spec("s3prl") is None, reason="s3prl is not installed: pip install -e '.[superb]'"
)
def test_s3prl_featurizer_runs_over_the_upstream(export_dir):
    """s3prl's own Featurizer (what run_downstream.py puts between upstream and downstream), on this
    stack through the shims of src.s3prl_upstream.superb: it builds on the upstream, takes a batch of
    mixed lengths up to a minute (its length assertion held 495 frames against 500 before), and
    back-propagates into its layer weights and the upstream."""
    from src.s3prl_upstream.superb import prepare_s3prl

    hub = prepare_s3prl()
    from s3prl.upstream.interfaces import Featurizer

    upstream = hub.ssamba_local(str(export_dir), window_frames=256)
    featurizer = Featurizer(upstream, "hidden_states", "cpu")
    assert featurizer.downsample_rate == 1600 and featurizer.layer_num == upstream.encoder.config.depth // 2 + 1
    wavs = [torch.randn(16000 * 60) * 0.1, torch.randn(16000) * 0.1]
    upstream.train()
    features = featurizer(wavs, upstream(wavs))
    assert [f.shape for f in features] == [(600, 12 * 32), (10, 12 * 32)]
    sum(f.sum() for f in features).backward()
    assert featurizer.weights.grad is not None and upstream.encoder.patch_embed.proj.weight.grad is not None


@pytest.mark.skipif(
    importlib.util.find_spec("s3prl") is None, reason="s3prl is not installed: pip install -e '.[superb]'"
)
def test_superb_command_runs_s3prls_runner_with_absolute_paths_and_local_results(tmp_path, monkeypatch):
    import runpy

    from src.s3prl_upstream import superb

    seen = {}
    monkeypatch.setattr(
        runpy, "run_path", lambda path, run_name: seen.update(path=path, argv=list(sys.argv), cwd=os.getcwd())
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["x"])
    superb.main(["-m", "train", "-n", "ks1_try", "-u", "ssamba_local", "-k", "exports/enc", "-d", "speech_commands"])
    assert seen["path"].endswith("s3prl/run_downstream.py") and Path(seen["cwd"]) == Path(seen["path"]).parent
    argv = seen["argv"]
    assert argv[argv.index("-k") + 1] == str(tmp_path / "exports" / "enc")
    assert argv[argv.index("-p") + 1] == str(tmp_path / "result" / "downstream" / "ks1_try")
    import s3prl.hub as hub

    assert hub.ssamba_local.__module__ == "src.s3prl_upstream.hubconf"


@pytest.mark.skipif(
    importlib.util.find_spec("s3prl") is None, reason="s3prl is not installed: pip install -e '.[superb]'"
)
def test_superb_ks1_trains_a_few_steps_through_the_command(export_dir, tmp_path):
    """SUPERB's keyword spotting (speech_commands, KS1) through `python -m src.s3prl_upstream.superb`:
    4 training steps, then dev and test, on miniature Speech Commands layouts (the runner does not
    skip unreadable files, so these have none; the test set uses KS1's class folders)."""
    import shutil
    import subprocess

    from tests.helpers.layouts import speech_commands

    for root, words in (
        ("train", ("yes", "no", "up", "bed", "wow")),
        ("test", ("yes", "no", "_unknown_", "_silence_")),
    ):
        speech_commands(tmp_path / root, words=words, per_word=4 if root == "train" else 2)
        (tmp_path / root / "no" / "deadbeef_nohash_9.wav").unlink()
        (tmp_path / root / "_background_noise_" / "README.wav").unlink()
    shutil.rmtree(tmp_path / "test" / "_background_noise_")
    datarc = "config.downstream_expert.datarc"
    overrides = ",,".join(
        [
            "config.runner.total_steps=4",
            "config.runner.log_step=2",
            "config.runner.eval_step=4",
            "config.runner.save_step=4",
            f"{datarc}.speech_commands_root={tmp_path / 'train'}",
            f"{datarc}.speech_commands_test_root={tmp_path / 'test'}",
            f"{datarc}.num_workers=0",
            f"{datarc}.batch_size=4",
        ]
    )
    command = [
        sys.executable,
        "-m",
        "src.s3prl_upstream.superb",
        "-m",
        "train",
        "-n",
        "ks1",
        "-u",
        "ssamba_local",
        "-k",
        str(export_dir),
        "-d",
        "speech_commands",
        "-s",
        "hidden_states",
        "--device",
        "cpu",
        "-o",
        overrides,
    ]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    log = (tmp_path / "result" / "downstream" / "ks1" / "log.log").read_text()
    assert "train at step 4" in log and "dev at step 4" in log and "test at step 4" in log
    assert (tmp_path / "result" / "downstream" / "ks1" / "states-4.ckpt").exists()
