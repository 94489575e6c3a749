"""One style of command and one way to report a user error: every command runs as `python -m
<module>`, prints a user error as one line and exits with 2, and shows the traceback instead with
SSAMBA_TRACEBACK=1 (src/utils/errors.py)."""

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from src.utils.errors import UserError

ROOT = Path(__file__).resolve().parents[1]

# each argparse command with arguments that are a user's mistake (a path that is not there)
MISTAKES = {
    "src.embedding.__main__": ["--model", "{missing}", "--input", "{tmp}", "--output", "{tmp}/out"],
    "src.models.convert": ["ssamba", "--ckpt", "{missing}.pth", "--out", "{tmp}/out"],
    "src.data.shards": ["verify", "{missing}"],
    "src.data.prepare.__main__": ["esc50", "--root", "{tmp}"],
    "src.s3prl_upstream.iemocap_meta": ["{missing}"],
    "scripts.plot_runs": ["--run", "a={missing}", "--metrics", "train/loss", "--out", "{tmp}/plot"],
}


def _argv(name, tmp_path):
    return [a.format(missing=tmp_path / "not_there", tmp=tmp_path) for a in MISTAKES[name]]


@pytest.mark.parametrize("name", sorted(MISTAKES))
def test_a_user_error_is_one_line_and_exit_code_2(name, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("SSAMBA_TRACEBACK", raising=False)
    assert importlib.import_module(name).main(_argv(name, tmp_path)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err


@pytest.mark.parametrize("name", sorted(MISTAKES))
def test_ssamba_traceback_shows_the_traceback_in_every_command(name, tmp_path, monkeypatch):
    monkeypatch.setenv("SSAMBA_TRACEBACK", "1")
    with pytest.raises(UserError):
        importlib.import_module(name).main(_argv(name, tmp_path))


def test_a_hydra_command_honours_ssamba_traceback_too(tmp_path):
    cmd = [sys.executable, "-m", "src.export", f"ckpt_path={tmp_path / 'not_there.ckpt'}"]
    cmd += [f"hydra.run.dir={tmp_path / 'run'}"]
    env = {k: v for k, v in os.environ.items() if k != "SSAMBA_TRACEBACK"}
    quiet = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert quiet.returncode == 2 and "Traceback" not in quiet.stderr, quiet.stderr[-2000:]
    assert [line for line in quiet.stderr.splitlines() if line.startswith("error:")]
    env["SSAMBA_TRACEBACK"] = "1"
    loud = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert loud.returncode != 0 and "Traceback" in loud.stderr and "not_there.ckpt" in loud.stderr


def test_the_commands_need_no_sys_path_set_up_by_hand():
    """`python -m` from the repository root finds the packages; no module edits sys.path."""
    sources = [*(ROOT / "src").rglob("*.py"), *(ROOT / "benchmarks").glob("*.py"), *(ROOT / "scripts").glob("*.py")]
    editing = [
        str(p.relative_to(ROOT))
        for p in sources
        if "sys.path.insert" in p.read_text() or "sys.path.append" in p.read_text()
    ]
    assert not editing, editing


# `python src/<script>.py` as from a plain checkout: the editable install's finder removed, so that
# `src` is importable only through what the script itself sets up (rootutils, pythonpath=True)
PLAIN_CHECKOUT = """
import importlib.util, runpy, sys
sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")]
sys.path[:] = [p for p in sys.path if p not in ("", {root!r})]
sys.path.insert(0, {src!r})  # what `python src/<script>.py` puts first
assert importlib.util.find_spec("src") is None, "src importable before the script ran"
sys.argv = [{script!r}, "--cfg", "job"]
runpy.run_path({script!r}, run_name="__main__")
"""


@pytest.mark.parametrize("script", ["train.py", "eval.py", "export.py"])
def test_the_entry_scripts_run_from_a_plain_checkout(script):
    code = PLAIN_CHECKOUT.format(root=str(ROOT), src=str(ROOT / "src"), script=str(ROOT / "src" / script))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    command = [sys.executable, "-c", code]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ckpt_path:" in result.stdout  # the composed config, printed by Hydra's --cfg job
