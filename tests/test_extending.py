"""docs/extending.md used as a reader uses it: its GTZAN example's three files are copied out of the
page into a copy of the repository (nothing else is edited there), a miniature GTZAN is prepared
with the documented command, and the new experiment trains and tests with fast_dev_run."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from tests.helpers import audio_files as af
from tests.helpers import layouts
from tests.helpers.hydra_cfg import SMALL_RUN

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "extending.md"


def guide_files() -> dict[str, str]:
    """{path: content} of the guide's code blocks that start with a `# <path>` line."""
    blocks = re.findall(
        r"```(?:python|yaml)\n# ((?:src|configs)/[\w/]+\.(?:py|yaml))\n(.*?)```", GUIDE.read_text(), re.S
    )
    return dict(blocks)


def gtzan_layout(root: Path, genres=("blues", "rock"), per_genre=10) -> Path:
    for g, genre in enumerate(genres):
        for n in range(per_genre):
            af.tone(root / "genres_original" / genre / f"{genre}.{n:05d}.wav", seconds=1.0, freq=220 + 220 * g)
    af.text_as_wav(root / "genres_original" / "rock" / "rock.00099.wav")  # a broken clip, skipped and listed
    return root


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """A copy of the repository with the guide's files added; the paths it added."""
    copy = tmp_path_factory.mktemp("repo")
    ignore = shutil.ignore_patterns("__pycache__")
    for part in ("src", "configs"):
        shutil.copytree(ROOT / part, copy / part, ignore=ignore)
    shutil.copy(ROOT / ".project-root", copy / ".project-root")
    added = []
    for path, content in guide_files().items():
        assert not (copy / path).exists(), f"{path} would edit a file the project has: the guide adds files only"
        (copy / path).write_text(content)
        added.append(path)
    return copy, added


def test_the_guide_adds_a_dataset_and_its_task_in_three_new_files_and_a_pretraining_source_in_two(repo):
    _, added = repo
    assert sorted(added) == [
        "configs/data/gtzan.yaml",
        "configs/data/pretrain_mine.yaml",
        "configs/experiment/gtzan.yaml",
        "configs/experiment/pretrain_mine.yaml",
        "src/data/prepare/gtzan.py",
    ]


def _section_commands(title: str) -> list[str]:
    """The commands of the first bash block after a section title of the guide."""
    section = GUIDE.read_text().split(f"## {title}", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line for line in block.splitlines() if line.startswith("python -m")]


def test_the_guides_own_recordings_are_prepared_measured_and_pretrained_on(repo, data_root, tmp_path):
    """The section's commands as written (the recordings' folder swapped for the test's),
    then its experiment with debug=smoke; the tests' store builder sees the new source by itself."""
    from tests.helpers.stores import pretraining_stores

    copy, _ = repo
    data, recordings = tmp_path / "data", layouts.folder(tmp_path / "recordings")
    (data / "features").mkdir(parents=True)
    for name in ("audioset", "librispeech"):  # the tests' miniature stores stand in for the big ones
        (data / "features" / name).symlink_to(data_root / "features" / name)
    commands = _section_commands("Pretrain on your own audio")
    assert [c.split()[2:4] for c in commands] == [
        ["src.data.prepare", "folder"],
        ["src.data.shards", "build"],
        ["src.data.shards", "stats"],
    ]
    for command in commands:  # from the folder that holds data/, as a user runs them from the repository
        args = [sys.executable, *command.replace("~/recordings", str(recordings)).split()[1:]]
        done = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, (command, done.stderr[-3000:])
    measured = json.loads(done.stdout.strip().splitlines()[-1])  # the stats command's mean and std
    assert set(measured) == {"mean", "std"} and measured["std"] > 0
    assert "mine" in pretraining_stores(copy / "configs")
    run = tmp_path / "run"
    command = [sys.executable, "-m", "src.train", "experiment=pretrain_mine", "debug=smoke", "logger=[]"]
    command += [f"paths.data_dir={data}", f"hydra.run.dir={run}"]
    trained = subprocess.run(command, cwd=copy, capture_output=True, text=True, timeout=600)
    assert trained.returncode == 0, trained.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["finished"] and metrics["optimized_metric"] == "val/acc" and "val/acc" in metrics
    # the data config's normalisation, which the guide says to take from the stats command, is the export's
    mix = yaml.safe_load((copy / "configs" / "data" / "pretrain_mine.yaml").read_text())
    exported = json.loads((run / "encoder" / "config.json").read_text())["data"]
    assert (exported["mean"], exported["std"]) == (mix["mean"], mix["std"])


def test_the_guides_task_prepares_trains_and_tests_through_the_registry(repo, tmp_path):
    copy, _ = repo
    raw, data = gtzan_layout(tmp_path / "GTZAN"), tmp_path / "data"
    out = data / "prepared" / "gtzan"
    command = [sys.executable, "-m", "src.data.prepare", "gtzan", "--root", str(raw), "--out", str(out)]
    prepared = subprocess.run(command, cwd=copy, capture_output=True, text=True, timeout=300)
    assert prepared.returncode == 0, prepared.stderr[-2000:]
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(manifest) == 20 and {m["fold"] for m in manifest} == set(range(1, 11))
    assert "rock.00099.wav" in (out / "bad_files.jsonl").read_text()
    run = tmp_path / "run"
    small = ["trainer.accelerator=cpu", "trainer.devices=1", "logger=[]", "extras.print_config=false", *SMALL_RUN]
    small += ["data.pin_memory=false", "data.target_length=128", "data.timem=24"]
    command = [sys.executable, "-m", "src.train", "experiment=gtzan", f"paths.data_dir={data}", f"hydra.run.dir={run}"]
    command += ["+trainer.fast_dev_run=true", *small]
    trained = subprocess.run(command, cwd=copy, capture_output=True, text=True, timeout=600)
    assert trained.returncode == 0, trained.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert "test/acc" in metrics, metrics


def test_the_guides_task_sweeps_its_ten_folds_into_one_summary(repo):
    copy, _ = repo
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(copy / "configs")):
        cfg = compose("train.yaml", overrides=["experiment=gtzan"], return_hydra_config=True)
    assert cfg.hydra.sweeper.params["data.fold"] == "1,2,3,4,5,6,7,8,9,10"
    assert cfg.hydra.callbacks.sweep_summary.metric is None and cfg.optimized_metric == "auto"  # the data's
    assert cfg.data.target_length == 3000 and cfg.encoder.tstride == 10
