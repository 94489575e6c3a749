import json
from pathlib import Path

import numpy as np
import pytest
import torch

from src.data import shards
from src.data.audio import fbank, load_audio, pad_or_cut
from src.data.prepare import PREPARERS
from src.data.prepare.common import finalize
from src.data.shards import FeatureStore, build, stats, verify
from src.utils.io import read_jsonl, write_jsonl
from tests.helpers import audio_files as af
from tests.helpers import layouts


@pytest.fixture
def manifest(tmp_path):
    root = layouts.speech_commands(tmp_path / "sc")
    finalize(PREPARERS["speechcommands"](root, task="ks2"), tmp_path / "prep", workers=2)
    return tmp_path / "prep" / "manifest.jsonl"


def test_round_trip_matches_direct_fbank(manifest, tmp_path):
    meta = build(manifest, tmp_path / "feat", target_length=128, shard_size=6, workers=2)
    store = FeatureStore(tmp_path / "feat")
    entries = read_jsonl(manifest)
    assert meta["clips"] == len(entries) == len(store) and meta["num_shards"] == 4
    assert meta["classes"] == ["bed", "no", "up", "wow", "yes"]
    for i in (0, 7, len(store) - 1):
        rec = store.index[i]
        direct = pad_or_cut(fbank(load_audio(next(e for e in entries if e["id"] == rec["id"])["path"])), 128)
        torch.testing.assert_close(store[i], direct, rtol=2e-3, atol=1e-2)  # fp16 storage
        assert rec["n_frames"] == 98 and store[i].shape == (1, 128, 128)
    assert verify(tmp_path / "feat") == []


def test_bad_files_are_skipped_counted_and_listed(manifest, tmp_path):
    entries = read_jsonl(manifest)
    af.nan_wav(tmp_path / "nan.wav")
    af.text_as_wav(tmp_path / "text.wav")
    entries += [
        {"id": "nan", "path": str(tmp_path / "nan.wav"), "labels": ["yes"], "split": "train"},
        {"id": "text", "path": str(tmp_path / "text.wav"), "labels": ["yes"], "split": "train"},
        {"id": "gone", "path": str(tmp_path / "gone.wav"), "labels": ["yes"], "split": "train"},
    ]
    write_jsonl(manifest, entries)
    meta = build(manifest, tmp_path / "feat", target_length=64, shard_size=8, workers=1)
    report = read_jsonl(tmp_path / "feat" / "bad_files.jsonl")
    assert meta["skipped"] == 3 and meta["clips"] == len(entries) - 3
    assert {r["id"] for r in report} == {"nan", "text", "gone"}
    assert "NaN" in next(r["reason"] for r in report if r["id"] == "nan")


def test_killed_build_resumes_without_redoing_finished_shards(manifest, tmp_path, monkeypatch):
    out = tmp_path / "feat"
    calls = []
    real = shards._build_shard

    def fail_on_third(out_dir, k, *args):
        if k == 2:
            raise KeyboardInterrupt("killed")
        return real(out_dir, k, *args)

    # run shards in-process so the failure hits mid-build
    monkeypatch.setattr(shards, "ProcessPoolExecutor", _InlineExecutor)
    monkeypatch.setattr(shards, "_build_shard", fail_on_third)
    with pytest.raises(KeyboardInterrupt):
        build(manifest, out, target_length=64, shard_size=6)
    assert not json.loads((out / "meta.json").read_text())["complete"]
    with pytest.raises(ValueError, match="did not finish"):
        FeatureStore(out)
    finished = {p.name: p.stat().st_mtime_ns for p in out.glob("shard_*.npy")}
    assert set(finished) == {"shard_00000.npy", "shard_00001.npy"}
    assert not list(out.glob(".*tmp"))  # nothing half-written is left behind

    def record(out_dir, k, *args):
        calls.append(k)
        return real(out_dir, k, *args)

    monkeypatch.setattr(shards, "_build_shard", record)
    build(manifest, out, target_length=64, shard_size=6)
    assert sorted(calls) == [2, 3]
    assert all((out / n).stat().st_mtime_ns == t for n, t in finished.items())
    assert len(FeatureStore(out)) == len(read_jsonl(manifest))


def test_rebuild_with_other_settings_is_refused(manifest, tmp_path):
    build(manifest, tmp_path / "feat", target_length=64, shard_size=6, workers=1)
    with pytest.raises(ValueError, match="target_length"):
        build(manifest, tmp_path / "feat", target_length=128, shard_size=6, workers=1)


def test_verify_finds_corruption(manifest, tmp_path):
    build(manifest, tmp_path / "feat", target_length=64, shard_size=6, workers=1)
    arr = np.load(tmp_path / "feat" / "shard_00001.npy", mmap_mode="r+")
    arr[0, 0, 0] = np.inf
    arr.flush()
    del arr
    problems = verify(tmp_path / "feat")
    assert any("NaN or inf" in p for p in problems)


def test_stats_ignore_padding(manifest, tmp_path):
    build(manifest, tmp_path / "feat", target_length=256, shard_size=6, workers=1)
    store = FeatureStore(tmp_path / "feat")
    real = torch.cat([store[i][..., : store.index[i]["n_frames"]].flatten() for i in range(len(store))]).double()
    mean, std = stats(tmp_path / "feat")
    assert mean == pytest.approx(real.mean().item(), rel=1e-6)
    assert std == pytest.approx(real.std(unbiased=False).item(), rel=1e-6)


def test_stats_recorded_by_the_build_equal_the_sums_read_from_the_shards(manifest, tmp_path):
    build(manifest, tmp_path / "feat", target_length=256, shard_size=6, workers=2)
    recorded = {split: shards.moments(tmp_path / "feat", split) for split in (None, "train", "valid")}
    (tmp_path / "feat" / "stats.json").unlink()  # as a store from before stats.json: read every clip
    assert {split: shards.moments(tmp_path / "feat", split) for split in recorded} == recorded
    assert recorded["train"]["clips"] + recorded["valid"]["clips"] < recorded[None]["clips"]  # a test split too


def test_store_pickles_without_open_memmaps(manifest, tmp_path):
    import pickle

    build(manifest, tmp_path / "feat", target_length=64, shard_size=6, workers=1)
    store = FeatureStore(tmp_path / "feat")
    store[0]
    assert store._arrays
    clone = pickle.loads(pickle.dumps(store))
    assert clone._arrays == {}
    torch.testing.assert_close(clone[0], store[0])


class _InlineExecutor:
    """ProcessPoolExecutor stand-in that runs each task at submit time."""

    def __init__(self, *args, **kwargs):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def submit(self, fn, *args):
        from concurrent.futures import Future

        future = Future()
        future.set_result(fn(*args))
        return future


def test_verify_detects_a_finite_bit_flip_by_its_checksum(manifest, tmp_path):
    build(manifest, tmp_path / "feat", target_length=64, shard_size=6, workers=1)
    path = tmp_path / "feat" / "shard_00001.npy"
    array = np.load(path)
    array[2, 10, 5] = np.float16(float(array[2, 10, 5]) + 0.5)  # still finite: only the hash sees it
    with open(path, "r+b") as f:  # flip it in place, as a bad disk would
        np.save(f, array)
    assert verify(tmp_path / "feat") == [
        "shard_00001.npy does not match its checksum: damaged since it was built; rebuild it"
    ]


def test_a_build_that_cannot_fit_the_disk_stops_before_writing(manifest, tmp_path, monkeypatch):
    monkeypatch.setattr(shards.shutil, "disk_usage", lambda path: type("U", (), {"free": 10_000})())
    with pytest.raises(ValueError, match=r"need about .* GiB and 0.0 GiB are free; free space or choose another"):
        build(manifest, tmp_path / "feat", target_length=64, shard_size=6, workers=1)
    assert not list((tmp_path / "feat").glob("shard_*"))


def test_a_second_build_into_a_folder_being_built_is_refused_and_leftovers_are_cleared(manifest, tmp_path):
    import fcntl

    out = tmp_path / "feat"
    out.mkdir()
    (out / ".shard_00000.npy.k3j2.tmp").write_bytes(b"left by a killed build")
    with open(out / ".build.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another build holds the folder
        with pytest.raises(ValueError, match="another build is writing there"):
            build(manifest, out, target_length=64, shard_size=6, workers=1)
    build(manifest, out, target_length=64, shard_size=6, workers=1)
    assert not list(out.glob(".*.tmp")) and verify(out) == []


def test_the_build_that_verify_recommends_repairs_a_damaged_shard(manifest, tmp_path, capsys):
    out = tmp_path / "feat"
    build(manifest, out, target_length=64, shard_size=6, workers=1)
    path = out / "shard_00001.npy"
    array = np.load(path)
    array[0, 0, 0] = np.float16(float(array[0, 0, 0]) + 1.0)
    with open(path, "r+b") as f:
        np.save(f, array)
    assert verify(out)
    build(manifest, out, target_length=64, shard_size=6, workers=1)
    assert "rebuilding shard_00001.npy: it does not match its checksum" in capsys.readouterr().out
    assert verify(out) == []


@pytest.mark.parametrize("damage", ["delete a line", "change a split", "change a row", "change a label"])
def test_verify_checks_the_index_against_the_shards_and_the_manifest(manifest, tmp_path, damage):
    out = tmp_path / "feat"
    build(manifest, out, target_length=64, shard_size=6, workers=1)
    index = read_jsonl(out / "index.jsonl")
    if damage == "delete a line":
        index.pop(3)
    elif damage == "change a split":
        index[3]["split"] = "test" if index[3]["split"] != "test" else "train"
    elif damage == "change a row":
        index[3]["row"], index[4]["row"] = index[4]["row"], index[3]["row"]
    else:
        index[3]["labels"] = ["bed"] if index[3]["labels"] != ["bed"] else ["yes"]
    write_jsonl(out / "index.jsonl", index)
    problems = verify(out)
    assert problems and all("run the build command again" in p for p in problems), problems
    build(manifest, out, target_length=64, shard_size=6, workers=1)  # what the message says
    assert verify(out) == []


def test_a_build_is_refused_while_workers_of_an_earlier_build_live(manifest, tmp_path):
    import fcntl

    out = tmp_path / "feat"
    out.mkdir()
    with open(out / ".workers.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_SH)  # what a live worker of a killed build holds
        with pytest.raises(ValueError, match="worker processes of an earlier build are still writing"):
            build(manifest, out, target_length=64, shard_size=6, workers=1)
    build(manifest, out, target_length=64, shard_size=6, workers=1)
    assert verify(out) == []


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_the_workers_of_a_killed_build_die_with_it(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    wav = af.tone(tmp_path / "long.wav", seconds=20.0)  # a first shard soon, 400 clips left
    write_jsonl(tmp_path / "manifest.jsonl", [{"id": f"c{i}", "path": str(wav), "split": "train"} for i in range(400)])
    root = Path(__file__).resolve().parents[1]
    build_cmd = [
        sys.executable,
        "-m",
        "src.data.shards",
        "build",
        "--manifest",
        str(tmp_path / "manifest.jsonl"),
        "--out",
        str(tmp_path / "feat"),
        "--target-length",
        "2000",
        "--workers",
        "2",
        "--shard-size",
        "4",
    ]
    proc = subprocess.Popen(build_cmd, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while len(workers := [c for c in _children(proc.pid)]) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    while not list((tmp_path / "feat").glob("shard_*.json")) and time.monotonic() < deadline:
        time.sleep(0.05)  # the workers are writing
    assert len(workers) >= 2, "the build started no workers"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10
    alive = workers
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [
            w
            for w in workers
            if Path(f"/proc/{w}").exists()
            and "Z" not in Path(f"/proc/{w}/stat").read_text().rsplit(")", 1)[1].split()[:1]
        ]
    assert not alive, f"workers {alive} outlived their build"
    # the same build again resumes and finishes sound
    subprocess.run(
        [*build_cmd[:-4], "--workers", "2", "--shard-size", "4"], cwd=root, check=True, capture_output=True, timeout=600
    )
    assert verify(tmp_path / "feat") == []


def test_stats_of_a_pretraining_mix_weigh_each_store_as_the_sampler_draws_it(tmp_path, capsys):
    """Stores of clips of different lengths: weights equal to the clip counts give the pooled store's
    statistics; weights 2:1 over stores of equal size give the statistics of the first store's clips
    counted twice (as an epoch draws them); the command prints the same."""
    root = layouts.folder(tmp_path / "rec")
    finalize(PREPARERS["folder"](root), tmp_path / "prep", workers=2)
    rows = read_jsonl(tmp_path / "prep" / "manifest.jsonl")
    assert len(rows) == 4 and len({round(r["duration"], 2) for r in rows}) > 1
    for name, part in (("a", rows[:2]), ("b", rows[2:]), ("ab", rows)):
        write_jsonl(tmp_path / f"{name}.jsonl", part)
        build(tmp_path / f"{name}.jsonl", tmp_path / name, target_length=256, shard_size=2, workers=1)
    a, b = tmp_path / "a", tmp_path / "b"
    pooled = shards.mixed_stats([(a, None, 2.0), (b, None, 2.0)])
    assert pooled == pytest.approx(stats(tmp_path / "ab"), rel=1e-6)

    def real(root):
        store = FeatureStore(root)
        return [store[i][..., : store.index[i]["n_frames"]].flatten().double() for i in range(len(store))]

    drawn = torch.cat(real(a) * 2 + real(b))
    mean, std = shards.mixed_stats([(a, None, 2.0), (b, None, 1.0)])
    assert mean == pytest.approx(drawn.mean().item(), rel=1e-6)
    assert std == pytest.approx(drawn.std(unbiased=False).item(), rel=1e-6)
    assert shards.main(["stats", str(a), str(b), "--weights", "2", "1"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed == {"mean": pytest.approx(mean, abs=1e-6), "std": pytest.approx(std, abs=1e-6)}


def store_files(root: Path) -> dict[str, bytes]:
    """Every file of a store, by path: what readers see (not the locks, part markers or SLURM logs);
    the index columns' record of index.jsonl's modification time (when that build wrote it) left out."""
    files = {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.endswith(".lock") and p.relative_to(root).parts[0] not in ("parts", "slurm")
    }
    columns = json.loads(files["index/columns.json"])
    del columns["source"]["mtime_ns"]
    files["index/columns.json"] = json.dumps(columns).encode()
    return files


def test_a_store_built_in_parts_and_merged_equals_the_local_build_byte_for_byte(manifest, tmp_path, capsys):
    build(manifest, tmp_path / "local", target_length=128, shard_size=4, workers=2)
    for part in (2, 0, 1):  # in any order, each alone
        assert build(manifest, tmp_path / "parts", target_length=128, shard_size=4, workers=1, part=(part, 3)) is None
        with pytest.raises(shards.UserError, match="the build did not finish"):
            FeatureStore(tmp_path / "parts")  # incomplete until the merge
    assert shards.main(["build", "--manifest", str(manifest), "--out", str(tmp_path / "parts"),
                        "--target-length", "128", "--shard-size", "4", "--merge"]) == 0  # fmt: skip
    local, merged = store_files(tmp_path / "local"), store_files(tmp_path / "parts")
    assert sorted(local) == sorted(merged) and "stats.json" in local and "index/shard.npy" in local
    assert [name for name in local if local[name] != merged[name]] == []
    assert verify(tmp_path / "parts") == []
    # a part rerun keeps its shards that verify
    capsys.readouterr()
    build(manifest, tmp_path / "parts", target_length=128, shard_size=4, workers=1, part=(1, 3))
    assert "resuming: 2 of 2 shards already built" in capsys.readouterr().out


def test_the_parts_own_contiguous_shards_that_cover_the_store_once():
    for num_shards, parts in ((10, 3), (2300, 100), (7, 7)):
        owned = [shards.owned_shards(i, parts, num_shards) for i in range(parts)]
        assert [k for r in owned for k in r] == list(range(num_shards)) and all(len(r) > 0 for r in owned)


def test_a_merge_with_a_part_missing_names_its_shards_and_the_store_stays_unreadable(manifest, tmp_path):
    out = tmp_path / "parts"
    for part in (0, 2):
        build(manifest, out, target_length=128, shard_size=4, workers=1, part=(part, 3))
    assert len(read_jsonl(manifest)) == 20  # 5 shards of 4: part 1 of 3 owns shards 1 and 2
    with pytest.raises(shards.UserError, match=r"2 of 5 shards are not built \(first: shard_00001\)"):
        build(manifest, out, target_length=128, shard_size=4, workers=1, merge=True)
    with pytest.raises(shards.UserError, match="the build did not finish"):
        FeatureStore(out)
    build(manifest, out, target_length=128, shard_size=4, workers=1, part=(1, 3))
    assert build(manifest, out, target_length=128, shard_size=4, workers=1, merge=True)["clips"] == 20


@pytest.mark.parametrize("part, message", [("3/3", "0 <= I < N"), ("0/6", "at most 5 parts"), ("x", "give I/N")])
def test_a_part_that_does_not_exist_is_refused(manifest, tmp_path, part, message, capsys):
    argv = ["build", "--manifest", str(manifest), "--out", str(tmp_path / "o"), "--target-length", "64",
            "--shard-size", "4", "--part", part]  # fmt: skip
    try:
        code = shards.main(argv)  # a UserError: one line, exit code 2
    except SystemExit as stop:  # argparse: the usage, exit code 2
        code = stop.code
    assert code == 2 and message in capsys.readouterr().err


def test_a_whole_build_is_refused_while_a_part_is_at_work(manifest, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    with shards.exclusive_lock(out / ".build.lock", "busy", shared=True):  # as a part holds it
        with pytest.raises(shards.UserError, match="another build is writing there"):
            build(manifest, out, target_length=64, shard_size=4, workers=1, merge=True)
        build(manifest, out, target_length=64, shard_size=4, workers=1, part=(0, 2))  # parts share it


def test_meta_counts_the_clips_of_every_split(manifest, tmp_path):
    meta = build(manifest, tmp_path / "feat", target_length=64, shard_size=8, workers=1)
    entries = read_jsonl(manifest)
    assert meta["splits"] == {s: sum(e["split"] == s for e in entries) for s in sorted({e["split"] for e in entries})}
    assert sum(meta["splits"].values()) == meta["clips"]
