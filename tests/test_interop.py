"""The embedding API (HEAR), the embed CLI and the s3prl upstream, on a small exported encoder."""

import numpy as np
import pytest
import torch

from src import hear
from src.embed import main as embed_main
from src.models.components import build_encoder
from src.models.export import save_encoder
from src.s3prl_upstream.hubconf import ssamba_local
from tests.helpers import audio_files as af


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "enc"
    encoder = build_encoder("ssamba", "tiny", embed_dim=32, depth=2, input_tdim=256)
    save_encoder(encoder, out, extra={"data": {"mean": -5.0, "std": 4.0, "target_length": 256}})
    return out


def test_hear_api_shapes_timestamps_and_attributes(export_dir):
    model = hear.load_model(str(export_dir))
    assert model.sample_rate == 16000 and model.scene_embedding_size == model.timestamp_embedding_size == 32
    audio = torch.randn(3, 16000 * 3) * 0.1  # 3 s = 298 frames: two windows of 256
    emb, ts = hear.get_timestamp_embeddings(audio, model)
    # 16 columns per window of 256 frames (stride 16), kept while the column starts inside the audio
    assert emb.shape == (3, 19, 32) and ts.shape == (3, 19)
    torch.testing.assert_close(ts[0, :3], torch.tensor([80.0, 240.0, 400.0]))  # centres: (16 k + 8) * 10 ms
    assert (ts.diff(dim=1) > 0).all()
    scene = hear.get_scene_embeddings(audio, model)
    torch.testing.assert_close(scene, emb.mean(1))


def test_any_length_works_including_shorter_than_a_patch(export_dir):
    model = hear.load_model(str(export_dir))
    emb, ts = hear.get_timestamp_embeddings(torch.randn(1, 800), model)  # 50 ms
    assert emb.shape == (1, 1, 32) and torch.isfinite(emb).all()


def test_embed_cli_agrees_with_the_api(export_dir, tmp_path):
    af.tone(tmp_path / "in" / "a.wav", seconds=2.0)
    af.tone(tmp_path / "in" / "sub" / "b.flac", seconds=1.0, sr=44100, channels=2, fmt="FLAC")
    af.text_as_wav(tmp_path / "in" / "broken.wav")
    assert embed_main(["--model", str(export_dir), "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
                       "--timestamps", "--device", "cpu"]) == 0  # fmt: skip
    from src.data.audio import load_audio

    model = hear.load_model(str(export_dir))
    for rel in ("a.wav", "sub/b.flac"):
        audio = load_audio(tmp_path / "in" / rel)
        scene = hear.get_scene_embeddings(audio, model)[0]
        stem = (tmp_path / "out" / rel).with_suffix("")
        np.testing.assert_allclose(np.load(f"{stem}.npy"), scene.numpy(), rtol=1e-5, atol=1e-6)
        assert np.load(f"{stem}.timestamps.npy").shape[1] == 32
    assert not (tmp_path / "out" / "broken.npy").exists()


def test_s3prl_upstream_as_the_runner_drives_it(export_dir):
    """What s3prl's runner and Featurizer do: build from a ckpt, feed a list of variable-length 16 kHz
    wavs, read hidden_states (all the same shape, time-major), check the length against
    get_downsample_rates within 5 frames, and back-propagate when the upstream is trainable (-f)."""
    upstream = ssamba_local(str(export_dir))
    rate = upstream.get_downsample_rates("hidden_states")
    assert rate == 1600  # SSAMBA's s3prl setup: stride 10 -> 100 ms
    probe = upstream([torch.randn(16000)])["hidden_states"]
    assert abs(round(16000 / rate) - probe[0].shape[1]) < 5
    wavs = [torch.randn(16000 * 3), torch.randn(16000 * 2)]
    hidden = upstream(wavs)["hidden_states"]
    assert len(hidden) == upstream.encoder.depth // 2 + 1  # one per layer pair (official stack) + the output
    shapes = {tuple(h.shape) for h in hidden}
    assert len(shapes) == 1
    batch, frames, features = shapes.pop()
    assert batch == 2 and frames == len(range(0, 16000 * 3, rate)) and features == 12 * 32  # 12 freq patches
    sum(h.sum() for h in hidden).backward()
    assert upstream.encoder.patch_embed.proj.weight.grad is not None
