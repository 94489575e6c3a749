"""Miniature copies of the real datasets' layouts (a few clips each, some broken)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from tests.helpers import audio_files as af


def speech_commands(root: Path, words=("yes", "no", "up", "bed", "wow"), per_word=4) -> Path:
    valid, test = [], []
    for w, word in enumerate(words):
        for n in range(per_word):
            name = f"{word}/{n:08x}_nohash_0.wav"
            af.tone(root / name, seconds=1.0, freq=200 + 100 * w)
            (valid if n == 0 else test if n == 1 else []).append(name)
    af.tone(root / "_background_noise_" / "white_noise.wav", seconds=5.0)
    af.text_as_wav(root / "_background_noise_" / "README.wav")  # broken noise file
    af.empty_file(root / "no" / "deadbeef_nohash_9.wav")  # broken clip, in train
    (root / "validation_list.txt").write_text("\n".join(valid) + "\n")
    (root / "testing_list.txt").write_text("\n".join(test) + "\n")
    return root


def esc50(root: Path) -> Path:
    rows = []
    for i, (cat, target) in enumerate([("dog", 0), ("rain", 10), ("dog", 0), ("rain", 10), ("dog", 0)]):
        name = f"{i + 1}-1000{i}-A-{target}.wav"
        af.tone(root / "audio" / name, seconds=5.0, sr=44100)
        rows.append([name, i + 1, target, cat, "True", f"1000{i}", "A"])
    af.text_as_wav(root / "audio" / "5-99999-A-0.wav")
    rows.append(["5-99999-A-0.wav", 5, 0, "dog", "True", "99999", "A"])
    _csv(root / "meta" / "esc50.csv", ["filename", "fold", "target", "category", "esc10", "src_file", "take"], rows)
    return root


def audioset(root: Path) -> Path:
    _csv(
        root / "class_labels_indices.csv",
        ["index", "mid", "display_name"],
        [[0, "/m/09x0r", "Speech"], [1, "/m/04rlf", "Music"], [2, "/m/0jbk", "Animal"]],
    )
    bal = [{"wav": f"audio/bal_{i}.flac", "labels": lab} for i, lab in enumerate(["/m/09x0r", "/m/04rlf,/m/0jbk"])]
    for i in range(2):
        af.tone(root / "audio" / f"bal_{i}.flac", seconds=2.0, fmt="FLAC")
    af.tone(root / "audio" / "ev_0.wav", seconds=2.0)
    ev = [{"wav": "audio/ev_0.wav", "labels": "/m/0jbk"}, {"wav": "audio/gone.wav", "labels": "/m/09x0r"}]
    ev.append({"wav": "audio/ev_0.wav", "labels": "/m/unknown"})
    unbal = [{"wav": f"audio/unbal_{i}.wav", "labels": "/m/09x0r"} for i in range(4)]
    for i in range(4):
        af.tone(root / "audio" / f"unbal_{i}.wav", seconds=2.0, freq=300 + 50 * i)
    (root / "unbalanced_train_data.json").write_text(json.dumps({"data": unbal}))
    (root / "balanced_train_data.json").write_text(json.dumps({"data": bal}))
    (root / "eval_data.json").write_text(json.dumps({"data": ev}))
    return root


def librispeech(root: Path) -> Path:
    for subset, spk, ch, n in [("train-clean-100", 19, 198, 2), ("dev-clean", 84, 121123, 1)]:
        for u in range(n):
            af.tone(root / subset / str(spk) / str(ch) / f"{spk}-{ch}-{u:04d}.flac", seconds=1.5, fmt="FLAC")
    af.empty_file(root / "train-clean-100" / "19" / "198" / "19-198-0009.flac")
    return root


def voxceleb1(root: Path) -> Path:
    lines = []
    for s, split in [("id10001", 1), ("id10001", 2), ("id10002", 1), ("id10002", 3)]:
        rel = f"{s}/vid{split}/0000{split}.wav"
        af.tone(root / "wav" / rel, seconds=1.0)
        lines.append(f"{split} {rel}")
    lines.append("3 id10003/missing/00001.wav")
    (root / "iden_split.txt").write_text("\n".join(lines) + "\n")
    return root


def iemocap(root: Path) -> Path:
    for session in (1, 2):
        dialog = f"Ses0{session}F_impro01"
        lines = ["% header", ""]
        for k, emo in enumerate(["neu", "exc", "fru", "ang", "sad", "hap"]):
            utt = f"{dialog}_F00{k}"
            af.tone(root / f"Session{session}" / "sentences" / "wav" / dialog / f"{utt}.wav", seconds=1.0)
            lines.append(f"[6.2901 - 8.2357]\t{utt}\t{emo}\t[2.5000, 2.5000, 2.5000]")
            lines.append("C-E1:\tNeutral;\t()")
        eval_dir = root / f"Session{session}" / "dialog" / "EmoEvaluation"
        eval_dir.mkdir(parents=True, exist_ok=True)
        (eval_dir / f"{dialog}.txt").write_text("\n".join(lines) + "\n")
    return root


def urbansound8k(root: Path) -> Path:
    rows = []
    for i, (cls, cid, fold) in enumerate([("dog_bark", 3, 1), ("siren", 8, 1), ("dog_bark", 3, 2), ("siren", 8, 10)]):
        name = f"1000{i}-{cid}-0-0.wav"
        af.tone(root / "audio" / f"fold{fold}" / name, seconds=1.0, sr=22050, channels=2)
        rows.append([name, f"1000{i}", 0.0, 1.0, 1, fold, cid, cls])
    header = ["slice_file_name", "fsID", "start", "end", "salience", "fold", "classID", "class"]
    _csv(root / "metadata" / "UrbanSound8K.csv", header, rows)
    return root


def _csv(path: Path, header, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


# each registered dataset's miniature layout (src/data/prepare: DATASETS), as the tests prepare it
def folder(root: Path) -> Path:
    """A user's own recordings: nested folders, several formats and rates, a broken file, files
    that are not audio, and a link back up the tree (a loop, if links were followed)."""
    af.tone(root / "field" / "2024" / "birds.wav", seconds=2.0, sr=44100)
    af.tone(root / "field" / "2024" / "rain.FLAC", seconds=1.5, fmt="FLAC")
    af.tone(root / "field" / "wind.ogg", seconds=1.5, fmt="OGG", subtype="VORBIS")
    af.tone(root / "studio" / "take 1.wav", seconds=2.0, channels=2, freq=330)
    af.text_as_wav(root / "studio" / "notes.wav")  # broken: listed, not a clip
    (root / "studio" / "notes.txt").write_text("session notes\n")
    (root / "studio" / "take 2.mp3").write_bytes(b"ID3")  # a format the reader does not take: counted
    (root / "field" / "back").symlink_to(root, target_is_directory=True)
    return root


LAYOUTS = {
    "folder": folder,
    "speechcommands": lambda root: speech_commands(root, words=("yes", "no", "up", "bed"), per_word=6),
    "esc50": esc50,
    "audioset": audioset,
    "librispeech": librispeech,
    "voxceleb1": voxceleb1,
    "iemocap": iemocap,
    "urbansound8k": urbansound8k,
}
