"""Speech Commands v0.01 / v0.02: one folder per word, _background_noise_/, validation_list.txt,
testing_list.txt, 1 s 16 kHz WAVs named <speaker>_nohash_<n>.wav.

Tasks:
  ks2  all word folders as classes (35 in v0.02), SSAMBA/SSAST's KS2
  sc30 the 30 words of v0.01, SSAMBA's "V1" (docs/official.md §8)
  ks1  SUPERB's 12 classes: 10 words + _unknown_ (every other word) + _silence_ (1 s segments
       cut from the background-noise files; split 80/10/10 by a hash of the segment name).
       With --test-root pointing at speech_commands_test_set_v0.01, its folders are the test set.
"""

from __future__ import annotations

from pathlib import Path

from src.data.audio import AudioError, audio_duration
from src.data.prepare import download
from src.data.prepare.common import Dataset, Entry, Prepared, require, stable_fraction
from src.utils.errors import UserError

KS1_WORDS = ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go"]
V1_WORDS = KS1_WORDS + "zero one two three four five six seven eight nine".split()
V1_WORDS += "bed bird cat dog happy house marvin sheila tree wow".split()
V2_EXTRA = ["backward", "follow", "forward", "learn", "visual"]
TASKS = ("ks2", "ks1", "sc30")
UNKNOWN, SILENCE, NOISE_DIR = "_unknown_", "_silence_", "_background_noise_"


def _read_list(path: Path) -> set[str]:
    return {line.strip() for line in path.read_text().splitlines() if line.strip()}


def _word_clips(root: Path, words: list[str]):
    for word in words:
        for wav in sorted((root / word).glob("*.wav")):
            yield word, wav


def _silence_segments(root: Path, bad: list[dict]) -> list[Entry]:
    entries = []
    for noise in sorted((root / NOISE_DIR).glob("*.wav")):
        try:
            seconds = int(audio_duration(noise))
        except AudioError as e:
            bad.append({"id": f"{SILENCE}/{noise.stem}", "path": str(noise), "reason": str(e)})
            continue
        for k in range(seconds):
            key = f"{SILENCE}/{noise.stem}_{k:04d}"
            h = stable_fraction(key)
            split = "valid" if h < 0.1 else "test" if h < 0.2 else "train"
            entries.append(Entry(key, str(noise), [SILENCE], split, offset=float(k), duration=1.0))
    return entries


def prepare(root: Path, task: str = "ks2", test_root: Path | None = None) -> Prepared:
    if task not in TASKS:
        raise UserError(f"unknown Speech Commands task {task!r}; choose one of {TASKS}")
    fix = "--root must be the folder holding the word folders (e.g. speech_commands_v0.02/)"
    valid = _read_list(require(root / "validation_list.txt", "validation_list.txt", fix))
    test = _read_list(require(root / "testing_list.txt", "testing_list.txt", fix))
    words = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("_"))
    notes, bad = [], []
    if task == "ks2":
        classes = words
        if len(words) != 35:
            notes.append(f"{len(words)} word folders (Speech Commands v0.02 has 35)")
    elif task == "sc30":
        classes = [w for w in V1_WORDS if w in words]
        if len(classes) != 30:
            notes.append(f"only {len(classes)} of the 30 v0.01 words are present")
    else:
        classes = KS1_WORDS + [UNKNOWN, SILENCE]

    entries = []
    for word, wav in _word_clips(root, words):
        rel = f"{word}/{wav.name}"
        split = "valid" if rel in valid else "test" if rel in test else "train"
        if task == "ks1":
            label = word if word in KS1_WORDS else UNKNOWN
            if test_root is not None and split == "test":
                continue  # SUPERB's test set is its own download
        elif word not in classes:
            continue
        else:
            label = word
        entries.append(Entry(f"{word}/{wav.stem}", str(wav), [label], split))

    if task == "ks1":
        silence = _silence_segments(root, bad)
        if test_root is not None:
            silence = [e for e in silence if e.split != "test"]
            for folder in sorted(d for d in Path(test_root).iterdir() if d.is_dir()):
                label = folder.name if folder.name in classes else UNKNOWN
                for wav in sorted(folder.glob("*.wav")):
                    entries.append(Entry(f"test/{folder.name}/{wav.stem}", str(wav), [label], "test"))
        if not silence:
            notes.append(f"no {NOISE_DIR} files: the {SILENCE} class is empty")
        entries += silence
    return Prepared(f"speechcommands-{task}", entries, classes, bad=bad, notes=notes)


DATASET = Dataset(
    "speechcommands",
    prepare,
    download=lambda root, args: download.download_speechcommands(root, args.version),
    arguments=(
        (("--task",), {"default": "ks2", "help": "ks2 (35 words), ks1 (SUPERB's 12), sc30 (v0.01's 30)"}),
        (("--test-root",), {"type": Path, "help": "ks1: the speech_commands_test_set_v0.01 folder"}),
        (("--version",), {"default": "v0.02", "help": "the release to download: v0.01 or v0.02"}),
    ),
    options=lambda args: {"task": args.task, "test_root": args.test_root},
    variants=({"task": "ks2"}, {"task": "ks1"}, {"task": "sc30"}),
)
