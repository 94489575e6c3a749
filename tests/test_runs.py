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
