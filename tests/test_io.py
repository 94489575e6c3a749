import os

import pytest

from src.utils import io


def test_atomic_write_keeps_the_old_file_when_the_writer_fails(tmp_path):
    target = tmp_path / "report.json"
    io.write_json(target, {"version": 1})
    with pytest.raises(RuntimeError):
        with io.atomic_path(target) as tmp:
            tmp.write_text('{"version": 2, "half')
            raise RuntimeError("killed mid-write")
    assert target.read_text() == '{\n  "version": 1\n}\n'
    assert os.listdir(tmp_path) == ["report.json"]  # no temp file left behind


def test_atomic_write_gives_the_mode_a_plain_write_would(tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    io.write_text(tmp_path / "atomic.txt", "x")
    assert (tmp_path / "atomic.txt").stat().st_mode & 0o777 == plain.stat().st_mode & 0o777 == io.FILE_MODE
