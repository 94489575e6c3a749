"""make finetune's choice of pretraining run (src/utils/runs.py)."""

import json
import os

from src.utils.runs import finished_encoders, main


def run(root, name, finished=True, export=True, age=0):
    folder = root / name
    (folder / "checkpoints").mkdir(parents=True)
    if export:
        (folder / "encoder").mkdir()
        (folder / "encoder" / "config.json").write_text("{}")
    if finished:
        (folder / "metrics.json").write_text(json.dumps({"global_step": 240}))
        os.utime(folder / "metrics.json", (1e9 + age, 1e9 + age))
    return folder


def test_the_newest_finished_run_with_an_export_is_taken_and_named(tmp_path, capsys):
    older = run(tmp_path, "2026-11-26_10-00-00", age=0)
    run(tmp_path, "2026-11-26_11-00-00", finished=False)  # still going or killed: newer, passed over
    run(tmp_path, "2026-11-26_12-00-00", export=False, age=50)  # a fine-tuning-like run without an export
    assert finished_encoders(tmp_path) == [older / "encoder"]
    newer = run(tmp_path, "2026-11-26_13-00-00", age=100)
    assert main(["latest-encoder", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == str(newer / "encoder")
    assert f"newest finished pretraining: {newer} (240 steps; 1 older ones)" in err


def test_no_finished_run_says_to_pretrain_first(tmp_path, capsys):
    run(tmp_path, "2026-11-26_10-00-00", finished=False)
    assert main(["latest-encoder", str(tmp_path)]) == 2
    assert "run make pretrain first" in capsys.readouterr().err


def test_threads_auto_shares_the_physical_cores_among_the_processes(monkeypatch):
    import pytest

    from src.utils import threads

    monkeypatch.setattr(threads, "physical_cores", lambda: 16)
    assert threads.choose_threads("auto") == 16
    assert threads.choose_threads("auto", processes=4) == 4  # DDP: 4 ranks on this machine share it
    assert threads.choose_threads("auto", processes=32) == 1  # at least 1
    assert threads.choose_threads(3, processes=8) == 3  # a number is taken as it is
    with pytest.raises(ValueError, match="threads=0: give a whole number"):
        threads.choose_threads(0)
    monkeypatch.undo()
    assert 1 <= threads.physical_cores() <= len(__import__("os").sched_getaffinity(0))
