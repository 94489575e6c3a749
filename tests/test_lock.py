"""The lock (requirements/dev.txt) against setup.cfg, the environment it built, and the one-line
error for a torchaudio that does not load with the installed torch."""

import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name

from scripts import lock
from tests.helpers import audio_files as af
from tests.helpers.encoders import make_encoder

ROOT = Path(__file__).parents[1]
LOCK = ROOT / "requirements" / "dev.txt"
SETUP = ROOT / "setup.cfg"


def test_the_lock_agrees_with_setup_cfg():
    assert lock.check(LOCK, SETUP) == []


def test_the_lock_holds_the_torch_pair_it_is_built_with():
    pair = lock.pins(ROOT / "requirements" / "torch-pair.in")
    assert set(pair) == {"torch", "torchaudio"}
    assert {name: lock.pins(LOCK)[name] for name in pair} == pair


def test_a_pin_changed_by_hand_fails_the_check(tmp_path):
    edited = tmp_path / "dev.txt"
    edited.write_text(LOCK.read_text().replace("\ntorch==2.11.0\n", "\ntorch==2.13.0\n"))
    assert edited.read_text() != LOCK.read_text()
    (problem,) = lock.check(edited, SETUP)
    assert "edited by hand" in problem and "make lock" in problem


def test_a_requirement_that_no_pin_satisfies_fails_the_check(tmp_path):
    setup = tmp_path / "setup.cfg"
    setup.write_text(SETUP.read_text().replace("torchaudio>=2.11,<2.12", "torchaudio>=2.12"))
    problems = lock.check(LOCK, setup)
    assert any("torchaudio==2.11.0" in p and "does not satisfy" in p for p in problems)
    setup.write_text(SETUP.read_text().replace("    rich>=13\n", "    rich>=13\n    einops>=0.8\n"))
    assert any(p.startswith("einops") and "no pin" in p for p in lock.check(LOCK, setup))


def test_sealing_again_after_a_change_makes_the_lock_sound(tmp_path):
    edited = tmp_path / "dev.txt"
    edited.write_text(LOCK.read_text().replace("\ntqdm==", "\ntqdm==4.66.0\n# was tqdm=="))
    assert lock.check(edited, SETUP)
    lock.seal(edited, SETUP)
    assert lock.check(edited, SETUP) == [] and lock.pins(edited)["tqdm"] == "4.66.0"


def test_environment_yaml_installs_the_same_lock():
    pip_lines = (ROOT / "environment.yaml").read_text().split("- pip:")[1]
    assert "-r requirements/dev.txt" in pip_lines and "-e ." in pip_lines and "[dev]" not in pip_lines


@pytest.mark.skipif(
    Path(sys.prefix).resolve() != (ROOT / ".venv").resolve(), reason="runs in the venv that make install built"
)
def test_the_venv_make_built_holds_exactly_the_lock():
    wrong = {}
    for name, version in lock.pins(LOCK).items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed = None
        if installed != version:
            wrong[name] = (version, installed)
    assert not wrong, f"lock vs installed: {wrong}; run `make install`"
    assert canonicalize_name("ssamba") in {canonicalize_name(d.metadata["Name"]) for d in metadata.distributions()}


def test_a_torchaudio_built_for_another_torch_is_one_line_naming_both(tmp_path):
    """What torchaudio 2.11.1 beside torch 2.11 does (an undefined symbol), through the embed command."""
    shadow = tmp_path / "shadow" / "torchaudio"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text(
        'raise OSError("libtorchaudio.so: undefined symbol: torch_exception_get_what_without_backtrace")\n'
    )
    from src.models.pretrained import save_encoder

    export = tmp_path / "enc"
    save_encoder(
        make_encoder("ssamba", None, embed_dim=32, depth=2, target_length=128), export, data={"mean": -5.0, "std": 4.0}
    )
    af.tone(tmp_path / "in" / "a.wav", seconds=1.0)
    env = {**os.environ, "PYTHONPATH": f"{shadow.parent}{os.pathsep}{ROOT}"}
    folders = ["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--device", "cpu"]
    command = [sys.executable, "-m", "src.embedding", "--model", str(export), *folders]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    lines = [line for line in result.stderr.replace("\r", "\n").splitlines() if line.startswith("error:")]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr  # beside it: the progress bar
    import torch

    line = lines[0]
    assert f"torch {torch.__version__}" in line and f"torchaudio {metadata.version('torchaudio')}" in line
    assert "undefined symbol" in line and "make install" in line and "torchaudio==2.11.0" in line
