import pytest
import torch

from src.data.audio import AudioError, audio_duration, fbank, load_audio, normalise, pad_or_cut, torchaudio_module
from tests.helpers import audio_files as af


def official_fbank(wave, sr=16000):
    """SSAST/SSAMBA dataloader._wav2fbank, written out."""
    wave = wave - wave.mean()
    return torchaudio_module().compliance.kaldi.fbank(
        wave,
        htk_compat=True,
        sample_frequency=sr,
        use_energy=False,
        window_type="hanning",
        num_mel_bins=128,
        dither=0.0,
        frame_shift=10,
    )


def test_fbank_matches_the_official_computation(tmp_path):
    wave = load_audio(af.tone(tmp_path / "a.wav", seconds=1.0))
    spec = fbank(wave)
    assert spec.shape == (1, 128, 98)
    torch.testing.assert_close(spec[0].T, official_fbank(wave))


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(subtype="PCM_U8", fmt="WAV"),
        dict(subtype="PCM_24"),
        dict(sr=48000, channels=2),
        dict(sr=8000),
        dict(fmt="FLAC"),
        dict(fmt="OGG", subtype="VORBIS"),
    ],
)
def test_formats_are_converted_to_16k_mono(tmp_path, kwargs):
    suffix = {"FLAC": ".flac", "OGG": ".ogg"}.get(kwargs.get("fmt"), ".wav")
    wave = load_audio(af.tone(tmp_path / f"x{suffix}", seconds=0.5, **kwargs))
    assert wave.shape == (1, 8000)
    assert wave.abs().max() > 0.1


def test_stereo_is_averaged(tmp_path):
    path = af.tone(tmp_path / "s.wav", channels=2)
    import soundfile as sf

    data, _ = sf.read(str(path), dtype="float32")
    torch.testing.assert_close(load_audio(path)[0], torch.from_numpy(data.mean(axis=1)))


def test_a_clip_shorter_than_one_window_still_gives_a_frame(tmp_path):
    spec = fbank(load_audio(af.tone(tmp_path / "short.wav", seconds=0.01)))
    assert spec.shape == (1, 128, 1)


@pytest.mark.parametrize(
    "make,message",
    [
        (af.empty_file, "cannot"),
        (af.text_as_wav, "cannot decode"),
        (af.truncated_wav, "cannot"),
        (af.nan_wav, "NaN or inf"),
    ],
)
def test_bad_files_raise_audio_error_naming_the_file(tmp_path, make, message):
    path = make(tmp_path / "bad.wav")
    with pytest.raises(AudioError, match=message) as info:
        load_audio(path)
    assert str(path) in str(info.value)


def test_missing_file_is_explained(tmp_path):
    with pytest.raises(AudioError, match="file is gone"):
        audio_duration(tmp_path / "nope.wav")


def test_what_is_there_instead_of_a_file_is_named(tmp_path):
    (tmp_path / "loop.wav").symlink_to(tmp_path / "loop.wav")
    (tmp_path / "broken.wav").symlink_to(tmp_path / "nowhere.wav")
    (tmp_path / "folder.wav").mkdir()
    for name, reason in [
        ("loop.wav", "symbolic link in a loop"),
        ("broken.wav", "broken symbolic link"),
        ("folder.wav", "a folder, not an audio file"),
    ]:
        with pytest.raises(AudioError, match=reason):
            load_audio(tmp_path / name)


def test_segment_reading(tmp_path):
    path = af.tone(tmp_path / "long.wav", seconds=3.0)
    assert load_audio(path, offset=1.0, duration=1.0).shape == (1, 16000)
    torch.testing.assert_close(load_audio(path, 1.0, 1.0), load_audio(path)[:, 16000:32000])


def test_pad_or_cut_and_normalize():
    spec = torch.ones(1, 128, 10)
    assert pad_or_cut(spec, 16).shape == (1, 128, 16) and pad_or_cut(spec, 16)[..., 10:].abs().sum() == 0
    assert pad_or_cut(spec, 4).shape == (1, 128, 4)
    torch.testing.assert_close(normalise(torch.tensor([3.0]), 1.0, 2.0), torch.tensor([0.5]))
