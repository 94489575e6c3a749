"""Downloads for the freely available datasets, only when the user asks (`--download`).

Archives are fetched to a temp file, checked against published SHA-256 sums (the ones torchaudio
ships for Speech Commands and LibriSpeech), then unpacked. ESC-50 is published as a GitHub archive
without a fixed checksum, so its unpacked contents are checked instead (2000 clips, all present).
"""

from __future__ import annotations

import csv
import tarfile
import urllib.request
import zipfile
from pathlib import Path

from tqdm import tqdm

from src.utils.io import atomic_path, file_sha256

SPEECH_COMMANDS = {
    "v0.01": (
        "http://download.tensorflow.org/data/speech_commands_v0.01.tar.gz",
        "743935421bb51cccdb6bdd152e04c5c70274e935c82119ad7faeec31780d811d",
    ),
    "v0.02": (
        "http://download.tensorflow.org/data/speech_commands_v0.02.tar.gz",
        "af14739ee7dc311471de98f5f9d2c9191b18aedfe957f4a6ff791c709868ff58",
    ),
}
LIBRISPEECH = {
    "dev-clean": "76f87d090650617fca0cac8f88b9416e0ebf80350acb97b343a85fa903728ab3",
    "dev-other": "12661c48e8c3fe1de2c1caa4c3e135193bfb1811584f11f569dd12645aa84365",
    "test-clean": "39fde525e59672dc6d1551919b1478f724438a95aa55f874b576be21967e6c23",
    "test-other": "d09c181bba5cf717b3dee7d4d592af11a3ee3a09e08ae025c5506f6ebe961c29",
    "train-clean-100": "d4ddd1d5a6ab303066f14971d768ee43278a5f2a0aa43dc716b0e64ecbbbf6e2",
    "train-clean-360": "146a56496217e96c14334a160df97fffedd6e0a04e66b9c5af0d40be3c792ecf",
    "train-other-500": "ddb22f27f96ec163645d53215559df6aa36515f26e01dd70798188350adcb6d2",
}
LIBRISPEECH_URL = "https://www.openslr.org/resources/12/{}.tar.gz"
ESC50_URL = "https://github.com/karolpiczak/ESC-50/archive/master.zip"


def fetch(url: str, dest: Path, expected_sha256: str | None) -> Path:
    """Download url to dest (atomically); reuse a complete earlier download with the right sum."""
    if dest.exists() and (expected_sha256 is None or file_sha256(dest) == expected_sha256):
        return dest
    with atomic_path(dest) as tmp, urllib.request.urlopen(url) as response:
        total = int(response.headers.get("Content-Length") or 0) or None
        with open(tmp, "wb") as f, tqdm(total=total, unit="B", unit_scale=True, desc=dest.name) as bar:
            for block in iter(lambda: response.read(1 << 20), b""):
                f.write(block)
                bar.update(len(block))
        if expected_sha256 is not None and (got := file_sha256(tmp)) != expected_sha256:
            raise RuntimeError(f"{url}: checksum mismatch (got {got}, expected {expected_sha256}); try again")
    return dest


def unpack(archive: Path, into: Path) -> None:
    into.mkdir(parents=True, exist_ok=True)
    if archive.suffix == ".zip":
        with zipfile.ZipFile(archive) as z:
            z.extractall(into)
    else:
        with tarfile.open(archive) as t:
            t.extractall(into, filter="data")


def download_speechcommands(root: Path, version: str = "v0.02") -> Path:
    url, digest = SPEECH_COMMANDS[version]
    archive = fetch(url, root.parent / Path(url).name, digest)
    unpack(archive, root)
    return root


def download_librispeech(root: Path, subsets=("train-clean-100",)) -> Path:
    for subset in subsets:
        archive = fetch(LIBRISPEECH_URL.format(subset), root.parent / f"{subset}.tar.gz", LIBRISPEECH[subset])
        unpack(archive, root.parent)  # the archives hold LibriSpeech/<subset>/...
    return root


def download_esc50(root: Path) -> Path:
    archive = fetch(ESC50_URL, root.parent / "ESC-50-master.zip", None)
    unpack(archive, root.parent)
    unpacked = root.parent / "ESC-50-master"
    if unpacked != root and not root.exists():
        unpacked.rename(root)
    with open(root / "meta" / "esc50.csv", newline="") as f:
        names = [r["filename"] for r in csv.DictReader(f)]
    missing = [n for n in names if not (root / "audio" / n).exists()]
    if len(names) != 2000 or missing:
        raise RuntimeError(f"{root}: ESC-50 archive incomplete ({len(names)} listed, {len(missing)} missing)")
    return root
