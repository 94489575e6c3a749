"""README.md and docs/ checked against the code, so they cannot drift: every `python -m src.train`
and `src/eval.py` command composes in Hydra, every `make` target exists, every other documented
command answers `--help`, every repository file the docs name is there, every test id they cite
selects a test, every table of docs/benchmarks.md is what its JSON renders to, and the SUPERB
commands run up to s3prl's runner."""

from __future__ import annotations

import importlib.util
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from benchmarks import report

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _commands(prefix: str) -> list[tuple[str, str]]:
    """(doc, command) for every command that starts with `prefix` in a code block or inline code,
    continuation lines joined, the comment after it dropped."""
    found = []
    for doc in DOCS:
        text = doc.read_text()
        blocks = [b for lang, b in re.findall(r"```([\w-]*)\n(.*?)```", text, flags=re.S) if lang in ("", "bash", "sh")]
        lines = [line for block in blocks for line in block.replace("\\\n", " ").splitlines()]
        lines += re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
        for line in lines:
            line = re.sub(r"^\s*(for .*; do|do|then)\s+", "", line.strip())
            line = re.sub(r"^\.venv/bin/", "", line)
            if line.startswith(prefix):
                found.append((doc.name, line.split(" #")[0].strip()))
    return sorted(set(found))


def _hydra_overrides(command: str) -> list[str]:
    """The overrides of a documented Hydra command, placeholders made concrete: <run> and $VAR
    become a path, a swept value its first choice; `...` arguments are left out."""
    command = re.sub(r"<[^>]+>", "x", command)
    command = re.sub(r"\$\{?\w+\}?", "x", command)
    out = []
    for token in shlex.split(command)[3:]:  # after `python -m src.train`
        if token in ("-m", "--multirun") or token == "..." or token.endswith("=..."):
            continue
        key, _, value = token.partition("=")
        if "," in value and not value.startswith(("[", "{")):
            value = value.split(",")[0]
        out.append(f"{key}={value}" if _ else token)
    return out


TRAIN_COMMANDS = _commands("python -m src.train") + _commands("python -m src.eval")


def test_the_docs_hold_the_commands_these_tests_check():
    assert len(TRAIN_COMMANDS) >= 10 and any("hydra/launcher=slurm" in c for _, c in TRAIN_COMMANDS)


@pytest.mark.parametrize("doc,command", TRAIN_COMMANDS)
def test_every_documented_training_command_composes(doc, command):
    import src.train  # noqa: F401  (the resolvers the configs use)

    config = "eval.yaml" if command.startswith("python -m src.eval") else "train.yaml"
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "configs")):
        cfg = compose(config, overrides=_hydra_overrides(command), return_hydra_config=True)
    HydraConfig().set_config(cfg)
    cfg.paths.output_dir = str(ROOT / "logs" / "x")  # the run folder Hydra would make
    for group in ("data", "model", "encoder", "trainer", "callbacks", "logger"):  # every interpolation resolves
        OmegaConf.to_container(cfg[group], resolve=True) if cfg.get(group) is not None else None
    assert cfg.model._target_ and cfg.data._target_
    if "hydra/launcher=slurm" in command:
        launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
        assert launcher["nodes"] == cfg.trainer.num_nodes and launcher["tasks_per_node"] == cfg.trainer.devices


def _make_targets() -> set[str]:
    return set(re.findall(r"^([a-zA-Z][\w-]*):", (ROOT / "Makefile").read_text(), flags=re.M))


def test_every_documented_make_target_exists():
    documented = {m for doc in DOCS for m in re.findall(r"\bmake ([a-z][\w-]*)", doc.read_text())}
    assert documented >= {"test", "pretrain", "finetune", "demo", "lock", "test-latest"}
    assert documented <= _make_targets(), documented - _make_targets()


def _entry_points() -> list[list[str]]:
    """Each documented `python -m <module>` of the project, once."""
    seen = {}
    for doc in DOCS:
        for module in re.findall(r"python3? -m ((?:src|benchmarks|scripts)\.[\w.]+)", doc.read_text()):
            seen.setdefault(module, ["-m", module])
    seen.pop("src.train"), seen.pop("src.eval")  # composed above
    seen.pop("src.s3prl_upstream.superb")  # its --help is s3prl's runner's: checked below
    return [seen[k] for k in sorted(seen)]


SCRIPT_PATH = r"(?:python3?|\$\(PY\)|\$PY\"?|torchrun[^\n]*?) ((?:src|benchmarks|scripts)/[\w/]+\.py)"


def test_every_command_is_run_as_a_module():
    """One style of entry point: `python -m src.<command>` (no script paths, which would need
    sys.path set up by hand), in the docs, the configs' comments, the Makefile and the scripts."""
    texts = [*DOCS, *(ROOT / "configs").rglob("*.yaml"), ROOT / "Makefile", *(ROOT / "scripts").glob("*.sh")]
    texts += [*(ROOT / "src").rglob("*.py"), *(ROOT / "benchmarks").glob("*.py")]
    as_paths = [
        f"{path.relative_to(ROOT)}: {hit}" for path in texts for hit in re.findall(SCRIPT_PATH, path.read_text())
    ]
    assert not as_paths, as_paths


@pytest.mark.parametrize("entry", _entry_points(), ids=lambda e: e[-1])
def test_every_other_documented_command_answers_help(entry):
    if entry == ["-m", "benchmarks.report"]:  # it renders, it has no options
        assert importlib.util.find_spec("benchmarks.report")
        return
    result = subprocess.run([sys.executable, *entry, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage" in result.stdout.lower() or "== Config ==" in result.stdout or "Powered by Hydra" in result.stdout


REPO_PATH = re.compile(r"^(?:src|configs|tests|benchmarks|docs|scripts|requirements|data|logs)/[\w./*-]*$")


def _cited_files() -> list[tuple[str, str]]:
    cited = []
    for doc in DOCS:
        if doc.name == "official.md":  # its paths are the official repositories'
            continue
        text = doc.read_text()
        for token in re.findall(r"`([^`\s]+)`", text):
            token = token.split("::")[0].rstrip(".,:;")
            if REPO_PATH.match(token) and "<" not in token:
                cited.append((doc.name, token))
        for link in re.findall(r"\]\(([^)#\s]+)\)", text):
            if not link.startswith(("http", "mailto")):
                cited.append((doc.name, str((doc.parent / link).resolve().relative_to(ROOT))))
    return sorted(set(cited))


def test_every_file_the_docs_name_is_there():
    missing = []
    for doc, path in _cited_files():
        if path.startswith(("data/", "logs/")):  # where runs write: made, not shipped
            continue
        if path in ("configs/local/default.yaml", "configs/local/slurm.yaml"):  # the user's own, git-ignored
            continue
        if "*" in path:
            if not list(ROOT.glob(path)) and not list((ROOT / "docs").glob(path)):
                missing.append((doc, path))
        elif not any((base / path).exists() for base in (ROOT, ROOT / "docs", ROOT / "tests")):
            missing.append((doc, path))
    assert len(_cited_files()) > 40 and not missing, missing


def _cited_test_ids() -> list[str]:
    """test_x.py::name[param] as cited; `...::name` and `...[param]` continue the id before them."""
    ids = []
    for doc in DOCS:
        file = name = None
        for ref in re.findall(r"`((?:test_\w+\.py|\.\.\.)(?:::\w+)?(?:\[[^\]`]+\])?)`", doc.read_text()):
            m = re.match(r"(test_\w+\.py|\.\.\.)(?:::(\w+))?(\[[^\]]+\])?$", ref)
            where, test, param = m.groups()
            file = file if where == "..." else where
            name = test or (name if where == "..." else None)
            if file and name:
                ids.append(f"tests/{file}::{name}{param or ''}")
    return sorted(set(ids))


def test_every_test_id_the_docs_cite_selects_a_test():
    ids = _cited_test_ids()
    assert len(ids) > 30
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *ids],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    collected = [line.strip() for line in result.stdout.splitlines() if "::" in line]
    for test_id in ids:  # a cited parameter is that exact case; a bare name, any of its cases
        assert test_id in collected if "[" in test_id else any(c.split("[")[0] == test_id for c in collected), test_id


def test_the_benchmark_tables_are_rendered_from_their_json():
    assert report.stale() == [], "run python -m benchmarks.report, or rerun the benchmark"


def test_a_table_edited_by_hand_is_found(tmp_path):
    doc = tmp_path / "benchmarks.md"
    text = report.DOC.read_text()
    assert text.count("\n| tiny | ") >= 1
    # the first size row in the docs is the pretraining-cost table's: its first number, one digit longer
    doc.write_text(text.replace("\n| tiny | ", "\n| tiny | 9", 1))
    assert report.stale(doc) == ["throughput-model"]


SUPERB = [c for _, c in _commands("python -m src.s3prl_upstream.superb")]


@pytest.mark.skipif(
    importlib.util.find_spec("s3prl") is None, reason="s3prl is not installed: pip install -e '.[superb]'"
)
@pytest.mark.parametrize("task", ["speech_commands", "voxceleb1", "emotion"])
def test_the_superb_commands_run_as_written_up_to_the_runner(task, tmp_path, monkeypatch):
    """docs/interop.md's command for the task, its $PWD/data/... pointing at miniature layouts."""
    import runpy

    import yaml

    from src.s3prl_upstream import iemocap_meta, superb
    from tests.helpers import layouts

    (command,) = [c for c in SUPERB if f"-d {task}" in c]
    data = tmp_path / "data"
    layouts.speech_commands(data / "speech_commands_v0.01", words=("yes", "no"), per_word=2)
    layouts.speech_commands(data / "speech_commands_test_set_v0.01", words=("yes", "no"), per_word=2)
    layouts.voxceleb1(data / "VoxCeleb1")
    iemocap_meta.write_meta_data(layouts.iemocap(data / "IEMOCAP"))
    export = tmp_path / "exports" / "amba_tiny_400"
    export.mkdir(parents=True)
    argv = shlex.split(command.replace("$D", "config.downstream_expert.datarc").replace("$PWD", str(tmp_path)))
    argv = [a.replace("$fold", "1") for a in argv[3:]]
    seen = {}
    monkeypatch.setattr(runpy, "run_path", lambda path, run_name: seen.update(path=path, argv=list(sys.argv)))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["x"])
    superb.main(argv)
    runner = seen["argv"]
    config = yaml.safe_load(Path(runner[runner.index("-c") + 1]).read_text())
    for option in runner[runner.index("-o") + 1].split(",,"):
        key, value = option.split("=", 1)
        node = config
        for field in key.split(".")[1:-1]:
            node = node[field]
        assert key.split(".")[-1] in node, f"{key} is not in the {task} config"
        if value.startswith("/"):
            assert Path(value).exists(), f"{key}={value} is not there"
    if task == "emotion":
        assert (data / "IEMOCAP" / "meta_data" / "Session1" / "train_meta_data.json").exists()
    assert runner[runner.index("-k") + 1] == str(export)


# numbers in docs/benchmarks.md's prose that no JSON holds, each with where it comes from; any
# other number there (decimals, integers and "Nx" ratios alike) must be in a JSON its section names
# (a link, or the JSON of a table rendered in it), at the printed precision, or in the text that
# JSON's benchmark wrote beside it (its .md or .log)
NOT_IN_A_JSON = {
    "33.5": "tiny's batch of fbanks in MB (64 x 128 x 1024 float32), a size",
    "300": "the time limit given to pytest -m gpu in the loop's call, a setting",
    "138": "registers of the compiled pair backward kernel at 8-row tiles (sm_90), no benchmark",
    "92.7": "the paper's claim",
    "95.4": "the paper's claim",
    "0.660": "x_proj padding, one run before the table's",
    "0.955": "the same run",
    "2.818": "the same run",
    "3.214": "the same run",
    "1.04": "the associative-scan attempt, an earlier sweep",
    "3.18": "the backward before its register cap, an earlier sweep",
    "1.907": "an earlier run of benchmarks/cpu.py",
    "6.750": "the same earlier run",
    "117.7": "the sum of the Triton scan kernels in the batch-64 profile",
    "3127": "the launches of the issue31 profile's kernels of under 6 us each at 732a453, summed",
    "6.8": "those kernels' time in the same profile, summed",
    "2239": "the launches of the issue31 profile's kernels of under 6 us each, summed",
    "5.2": "those kernels' time in the same profile, summed",
    "53.7": "the issue31 profile's scan_backward_kernel, rounded",
    "56.4": "the same kernel in the issue31 profile at 732a453 (git history)",
    "164302": "a PyTorch issue's number, not a measurement",
    "1.57": "the issue31 profile's torch reduce_kernel launches' time, summed",
    "120": "their launches",
    "7.10": "the same sum in the fused profile",
    "452": "their launches",
    "17.75": "the issue31 profile's matmul kernels (GEMMs and cuBLAS split-K reductions, cuDNN apart), summed",
    "1026": "their launches, in the two profiles before",
    "18.13": "the same sum in the fused profile",
    "3.27": "_conv_fwd_kernel in the issue31 profile at 732a453 (git history) and in the issue31_ckpt32 profile",
    "6.05": "the issue31 profile's conv kernels, summed (3.29 + 2.76)",
    "247.4": "the sum of mamba-ssm's scan kernels in the batch-64 profile",
    "156": "the torch launches of add and norm in the profile before the fused kernel",
    "98.8": "an earlier run of benchmarks/cpu.py",
    "0.048": "an earlier run of benchmarks/cpu.py",
    "0.050": "the same earlier run",
    "0.35": "issue 31's target",
    "0.75": "KiB a token and layer of tiny's scan checkpoints every 64 steps: 2 x 16 x 384 x 4 bytes / 64, arithmetic",
    "3.0": "the same every 16 steps",
    "3.5": "issue 31's target",
    "12": "the compiled kernel's warps per SM, and tiny's dt_rank: facts of the code, no benchmark",
    "44": "x_proj's output columns for tiny (dt_rank + 2 x d_state), a shape",
    "48": "the same padded, a shape",
    "60": "SASS instructions per state update of the associative-scan attempt, an earlier sweep",
    "5.1": "the associative-scan attempt, an earlier sweep",
    "1.25": "the forward before its loads were issued ahead, an earlier sweep",
    "0.58": "the forward after, an earlier sweep",
    "0.70": "the same sweep",
    "2.71": "the backward after its register cap, an earlier sweep",
    "21.0": "the sum of the conv kernels in the batch-64 Triton profile",
    "13.2": "the sum of causal-conv1d's kernels in the batch-64 mamba-ssm profile",
    "61": "the scan kernels' share of the GPU time in the fused profile: (77.6 + 20.9) / 161.1",
    "10.8": "add and norm's torch kernels in the profile before the fused kernel, not stored",
    "31": "shuffles a step of the backward's reduce-scatter (SASS of the compiled kernel, sm_90), no benchmark",
    "160": "the shuffles of a sum across the warp per row, the same SASS count",
    "29": "layout conversions a tile in the backward before (its TTGIR), no benchmark",
    "2.305": "the scan table's run before this one (commit da33749), replaced by it",
    "6.03": "the sum of the two conv kernels in the issue31 profile at 732a453: 3.27 + 2.76",
    "111": "the tests `pytest -m gpu` passed on the H100, not a benchmark",
    "0.525": "the scan table's run before this one (commit 22d3863), replaced by it",
    "2.092": "the same run",
    "4.994": "the same run",
    "21.6": "the sum of the conv kernels in the fused profile: 11.2 + 6.6 + 3.8",
    "16": "dt_rank padded to 16 columns for tiny, and 16 x 32 floats a scratch tile: shapes",
    "1.59": "the issue31_ckpt32 profile's torch reduce_kernel launches' time, summed",
    "17.74": "the issue31_ckpt32 profile's matmul kernels (GEMMs and cuBLAS split-K reductions, cuDNN apart), summed",
    "1074": "their launches",
    "5.03": "the issue31_ckpt32 profile's kernels of under 6 us each, summed",
    "2263": "their launches",
    "15.0": "the conv's two backward kernels in the fused profile: 11.2 + 3.8",
    "0.92": "the issue31_pair_ck24 profile's torch reduce_kernel launches' time, summed",
    "17.66": "the issue31_pair_ck24 profile's matmul kernels (GEMMs, cuBLAS split-K reductions; cuDNN apart), summed",
    "4.86": "the issue31_pair_ck24 profile's kernels of under 6 us each, summed",
    "2133": "their launches",
}
# settings, not measurements: the shapes, seeds, mask counts and step counts the commands ran with
SETTINGS = {"1024", "2048", "4096", "6144", "12345", "200", "20", "400", "128"}
SETTING_PATTERN = (
    r"\(\d+(?:, \d+)+\)|\d+ x \d+|(?:batch|width|depth) \d+"  # shapes
    r"|\d+ (?:timed|warm-up|masked|patches|frames|tokens)\b"  # counts a command was run with
)


def _json_values(paths) -> tuple[list[float], str]:
    """Every number in the JSON files (MiB also as GiB), and the text of their .md / .log companions."""
    import json

    values, text = [], ""
    for path in paths:
        stack = [json.loads(path.read_text())]
        while stack:
            item = stack.pop()
            if isinstance(item, dict):
                stack += item.values()
            elif isinstance(item, list):
                stack += item
            elif isinstance(item, (int, float)) and not isinstance(item, bool):
                values += [float(item), float(item) / 1024, float(item) / 1000]  # MiB as GiB, us as ms
        for companion in (path.with_suffix(".md"), path.with_suffix(".log")):
            text += companion.read_text() if companion.exists() else ""
    return values, text


def _a_ratio_of(values, number: float, places: int, percent: bool) -> bool:
    """Whether number is a / b (or, as a percent, 100 a / b or 100 (1 - a / b)) of two of the values,
    rounded to its places: for each a, a search of the sorted values for a b in the range that gives
    it (the table of every a / b took 26 s)."""
    v = np.unique(values[values > 0])  # sorted
    half = 0.5 * 10.0**-places
    lo, hi = number - half, number + half
    ranges = [(lo / 100, hi / 100), (1 - hi / 100, 1 - lo / 100)] if percent else [(lo, hi)]
    for r_lo, r_hi in ranges:
        if r_hi <= 0:
            continue
        # lo <= a / b <= hi  <=>  a / hi <= b <= a / lo
        first = np.searchsorted(v, v / r_hi, side="left")
        last = np.searchsorted(v, v / r_lo if r_lo > 0 else np.full_like(v, np.inf), side="right")
        if np.any(last > first):
            return True
    return False


def _sections(text: str) -> list[tuple[str, str]]:
    """(heading, text) per section of a page; a subsection without a JSON of its own takes its parent's."""
    parts = re.split(r"^(#{2,3} .*)$", text, flags=re.M)
    return [("(top)", parts[0])] + [(parts[i], parts[i + 1]) for i in range(1, len(parts), 2)]


def test_every_number_in_the_benchmarks_prose_comes_from_a_json_its_section_names():
    unknown, parent_jsons = [], []
    for heading, section in _sections(report.DOC.read_text()):
        names = set(re.findall(r"benchmarks/((?:profiles/)?[\w.-]+\.json)", section))
        names |= {report.BLOCKS[b][0] for b in re.findall(r"<!-- (\S+):begin -->", section)}
        cited = re.findall(r"benchmarks/((?:profiles/)?[\w.*-]+)\.(?:md|json)", section)
        paths = sorted({p for name in cited for p in report.DATA.glob(f"{name}.json")})
        paths += sorted(report.DATA / n for n in names if (report.DATA / n).exists())
        if heading.startswith("## "):
            parent_jsons = paths
        paths = paths or parent_jsons
        values, text = _json_values(paths)
        text += "".join(report.rendered(b) for b in re.findall(r"<!-- (\S+):begin -->", section))
        prose = re.sub(r"<!-- (\S+):begin -->.*?<!-- \1:end -->", "", section, flags=re.S)
        # what is not a measurement: commands, links, commits, issue numbers, shapes and run settings
        prose = re.sub(r"`[^`]*`|\]\([^)]*\)|\(\w{7}\)|commit \w+|issue \d+", "", prose)
        prose = re.sub(SETTING_PATTERN, "", prose)
        array = np.array(values)
        for found in re.finditer(r"(?<![\w.\-/])(\d{1,3}(?:,\d{3})+|\d+(?:\.\d+)?)(x|%)?(?![\w.]|\.\d)", prose):
            number, unit = found.group(1), found.group(2)
            plain = number.replace(",", "")
            places = len(plain.split(".")[1]) if "." in plain else 0
            if number in NOT_IN_A_JSON or plain in SETTINGS or (places and plain in text):
                continue
            if len(array) and np.any(np.round(array, places) == float(plain)):
                continue
            if unit and len(array) and _a_ratio_of(array, float(plain), places, percent=unit == "%"):
                continue  # "1.22x", "42% less": a ratio of two of the JSON's values
            unknown.append((heading, number))
    assert not unknown, f"numbers in docs/benchmarks.md found in no JSON their section names: {unknown}"


def test_every_benchmark_record_says_what_it_measured():
    """Each record under docs/benchmarks/ (a file's record, each run of throughput.json, each item of
    a list) carries the commit, date, torch and card or CPU it measured (benchmarks/provenance.py)."""
    import json

    for path in sorted(report.DATA.rglob("*.json")):
        data = json.loads(path.read_text())
        records = (
            data["runs"] if isinstance(data, dict) and "runs" in data else data if isinstance(data, list) else [data]
        )
        for record in records:
            measured = record.get("measured") or {}
            assert {"commit", "date", "torch", "device"} <= set(measured), (path.name, record.get("run"))
            assert re.fullmatch(r"[0-9a-f]{7,40}(\+changes)?|unknown", measured["commit"]), (path.name, measured)
