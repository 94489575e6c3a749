import json

import pytest

from src.data.prepare import PREPARERS
from src.data.prepare.__main__ import main as prepare_main
from src.data.prepare.common import finalize
from src.utils.io import read_jsonl
from tests.helpers import layouts


def run(dataset, root, out, **kwargs):
    summary = finalize(PREPARERS[dataset](root, **kwargs), out, workers=2)
    manifest = {r["id"]: r for r in read_jsonl(out / "manifest.jsonl")}
    bad = read_jsonl(out / "bad_files.jsonl")
    classes = json.loads((out / "classes.json").read_text())
    return summary, manifest, bad, classes


def test_speech_commands_ks2_splits_from_the_lists(tmp_path):
    root = layouts.speech_commands(tmp_path / "sc")
    summary, m, bad, classes = run("speechcommands", root, tmp_path / "out", task="ks2")
    assert classes["classes"] == ["bed", "no", "up", "wow", "yes"]
    assert summary["per_split"] == {"test": 5, "train": 10, "valid": 5}
    assert m["yes/00000000_nohash_0"]["split"] == "valid" and m["yes/00000001_nohash_0"]["split"] == "test"
    assert m["up/00000003_nohash_0"]["labels"] == ["up"] and m["up/00000003_nohash_0"]["duration"] == 1.0
    assert [b["id"] for b in bad] == ["no/deadbeef_nohash_9"]


def test_speech_commands_ks1_superb_classes_with_unknown_and_silence(tmp_path):
    root = layouts.speech_commands(tmp_path / "sc")
    _, m, bad, classes = run("speechcommands", root, tmp_path / "out", task="ks1")
    assert classes["classes"][-2:] == ["_unknown_", "_silence_"] and len(classes["classes"]) == 12
    assert m["bed/00000002_nohash_0"]["labels"] == ["_unknown_"]
    silence = [r for r in m.values() if r["labels"] == ["_silence_"]]
    assert len(silence) == 5 and all(r["duration"] == 1.0 for r in silence)
    assert sorted(r["offset"] for r in silence) == [0, 1, 2, 3, 4]
    assert any("README" in b["path"] for b in bad)


def test_speech_commands_sc30_keeps_only_v1_words(tmp_path):
    root = layouts.speech_commands(tmp_path / "sc", words=("yes", "no", "learn"))
    summary, m, _, classes = run("speechcommands", root, tmp_path / "out", task="sc30")
    assert classes["classes"] == ["yes", "no"]
    assert not any(r["labels"] == ["learn"] for r in m.values())
    assert any("of the 30" in n for n in summary["notes"])


def test_esc50_folds_and_categories(tmp_path):
    _, m, bad, classes = run("esc50", layouts.esc50(tmp_path / "esc"), tmp_path / "out")
    assert classes["classes"] == ["dog", "rain"]
    assert m["1-10000-A-0"]["fold"] == 1 and m["1-10000-A-0"]["labels"] == ["dog"]
    assert m["1-10000-A-0"]["duration"] == pytest.approx(5.0)
    assert [b["id"] for b in bad] == ["5-99999-A-0"]


def test_audioset_multilabel_splits_and_bad_entries(tmp_path):
    _, m, bad, classes = run("audioset", layouts.audioset(tmp_path / "as"), tmp_path / "out")
    assert classes["multilabel"] and classes["classes"] == ["/m/09x0r", "/m/04rlf", "/m/0jbk"]
    assert classes["names"]["/m/04rlf"] == "Music"
    assert m["balanced/bal_1"]["labels"] == ["/m/04rlf", "/m/0jbk"] and m["eval/ev_0"]["split"] == "eval"
    reasons = " ".join(b["reason"] for b in bad)
    assert "not on disk: the dataset's own list" in reasons and "not in the index" in reasons  # no "re-run" hint


def test_librispeech_subsets(tmp_path):
    summary, m, bad, _ = run("librispeech", layouts.librispeech(tmp_path / "LibriSpeech"), tmp_path / "out")
    assert summary["per_split"] == {"dev-clean": 1, "train-clean-100": 2}
    assert m["19-198-0000"]["labels"] == []
    assert [b["id"] for b in bad] == ["19-198-0009"]


def test_voxceleb1_identification_split(tmp_path):
    _, m, bad, classes = run("voxceleb1", layouts.voxceleb1(tmp_path / "vox"), tmp_path / "out")
    assert classes["classes"] == ["id10001", "id10002", "id10003"]
    assert {r["split"] for r in m.values()} == {"train", "valid", "test"}
    assert m["id10002/vid3/00003"]["labels"] == ["id10002"]
    assert len(bad) == 1 and bad[0]["reason"].startswith("not on disk") and "re-run" not in bad[0]["reason"]


def test_iemocap_four_classes_with_exc_merged_into_hap(tmp_path):
    _, m, _, classes = run("iemocap", layouts.iemocap(tmp_path / "iemocap"), tmp_path / "out")
    assert classes["classes"] == ["neu", "hap", "ang", "sad"]
    assert m["Ses01F_impro01_F001"]["labels"] == ["hap"]  # exc -> hap
    assert "Ses01F_impro01_F002" not in m  # fru is dropped
    assert {r["fold"] for r in m.values()} == {1, 2} and len(m) == 10


def test_urbansound8k_ten_fold_layout(tmp_path):
    _, m, _, classes = run("urbansound8k", layouts.urbansound8k(tmp_path / "us8k"), tmp_path / "out")
    assert classes["classes"] == ["dog_bark", "siren"]
    assert m["10003-8-0-0"]["fold"] == 10


def test_command_line_prepares_and_explains_a_wrong_root(tmp_path, capsys):
    root = layouts.esc50(tmp_path / "esc")
    assert prepare_main(["esc50", "--root", str(root), "--out", str(tmp_path / "o")]) == 0
    assert "esc50: 5 clips" in capsys.readouterr().out
    assert prepare_main(["esc50", "--root", str(tmp_path), "--out", str(tmp_path / "o2")]) == 2
    assert "meta/esc50.csv not found" in capsys.readouterr().err


def test_every_registered_dataset_has_a_test_layout_and_prepares_through_the_command_line(tmp_path):
    """The registry is the one list of datasets: each prepares from its miniature layout through
    `python -m src.data.prepare`, whose choices and options come from it."""
    from src.data.prepare import DATASETS
    from src.data.prepare.__main__ import main
    from tests.helpers.layouts import LAYOUTS

    assert set(DATASETS) == set(LAYOUTS) and len(DATASETS) >= 7
    for name in DATASETS:
        root = LAYOUTS[name](tmp_path / "raw" / name)
        assert main([name, "--root", str(root), "--out", str(tmp_path / "out" / name)]) == 0
        assert (tmp_path / "out" / name / "manifest.jsonl").exists()
    assert {d.name for d in DATASETS.values() if d.download} == {"esc50", "librispeech", "speechcommands"}


def test_each_dataset_has_only_its_own_options_and_two_may_declare_the_same_flag(monkeypatch, capsys):
    """A second dataset declaring --task (as a CREMA-D preparer would) no longer breaks the command
    for every dataset; `<dataset> --help` lists only that dataset's options, and another dataset's
    option is refused, not accepted and ignored."""
    from src.data.prepare import DATASETS
    from src.data.prepare.__main__ import parser
    from src.data.prepare.common import Dataset, Prepared

    task = ((("--task",), {"default": "emotion", "help": "emotion or speaker"}),)
    monkeypatch.setitem(
        DATASETS, "cremad", Dataset("cremad", lambda root, task: Prepared("cremad", []), arguments=task)
    )
    p = parser()
    assert p.parse_args(["cremad", "--root", "x", "--task", "speaker"]).task == "speaker"
    assert p.parse_args(["speechcommands", "--root", "x", "--task", "ks1"]).task == "ks1"
    with pytest.raises(SystemExit) as refused:
        p.parse_args(["esc50", "--root", "x", "--task", "ks1"])  # esc50 has no --task
    assert refused.value.code == 2 and "unrecognized arguments: --task ks1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        p.parse_args(["cremad", "--help"])
    shown = capsys.readouterr().out
    assert "emotion or speaker" in shown and "--test-root" not in shown and "--subsets" not in shown
    assert "--download" not in shown  # cremad has no downloader


def test_two_preparers_declaring_one_dataset_name_are_refused():
    from types import SimpleNamespace

    from src.data.prepare import registry
    from src.data.prepare.common import Dataset

    first = SimpleNamespace(__name__="src.data.prepare.emotions", DATASET=Dataset("cremad", print))
    second = SimpleNamespace(__name__="src.data.prepare.cremad", DATASET=Dataset("cremad", print))
    with pytest.raises(ValueError, match=r"two preparers declare the dataset 'cremad': .*emotions and .*cremad"):
        registry([first, second])
    assert set(registry([first])) == {"cremad"}


def test_a_folder_of_own_recordings_is_prepared_at_any_depth_and_what_is_not_audio_is_listed(tmp_path, capsys):
    root = layouts.folder(tmp_path / "My Recordings")
    assert prepare_main(["folder", "--root", str(root), "--out", str(tmp_path / "out")]) == 0
    rows = read_jsonl(tmp_path / "out" / "manifest.jsonl")
    assert [r["id"] for r in rows] == [
        "field/2024/birds.wav",
        "field/2024/rain.FLAC",
        "field/wind.ogg",
        "studio/take 1.wav",
    ]
    assert all(r["labels"] == [] and r["split"] is None for r in rows)  # unlabelled, one pool
    assert [b["id"] for b in read_jsonl(tmp_path / "out" / "bad_files.jsonl")] == ["studio/notes.wav"]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["dataset"] == "my_recordings" and "left out 2 files" in summary["notes"][0]
    assert ".mp3 (1)" in summary["notes"][0] and ".txt (1)" in summary["notes"][0]
