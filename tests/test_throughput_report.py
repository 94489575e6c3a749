"""`benchmarks.throughput train`'s one run (bare steps and the loop per device count) as it is
summed up: its ratios, and the pretraining-cost table of docs/benchmarks.md rendered from it."""

import json
from pathlib import Path

from benchmarks.report import throughput_model_table
from benchmarks.throughput import train_ratios


def bare(backbone, size, samples_per_s):
    record = {"what": "ssl_pretraining_step", "backbone": backbone, "size": size, "samples_per_s": samples_per_s}
    return {**record, "ms_per_step": 64_000 / samples_per_s, "peak_mib": 4096}


def loop(size, devices, samples_per_s, graph="false"):
    record = {"what": "src/train.py", "size": size, "devices": devices, "samples_per_s": samples_per_s}
    return {**record, "cuda_graph": graph}


RECORDS = [bare("ssamba", "tiny", 400.0), bare("ssast", "tiny", 1000.0), loop("tiny", 1, 380.0), loop("tiny", 2, 722.0)]


def test_the_run_records_the_loop_against_both_bare_steps_and_one_gpu():
    assert train_ratios(RECORDS) == [
        "tiny: src/train.py model.cuda_graph=false on 1 GPU at 0.95x SSAMBA's bare step",
        "tiny: src/train.py model.cuda_graph=false on 1 GPU at 0.38x SSAST's bare step",
        "tiny: model.cuda_graph=false 2 GPUs at 1.90x one GPU's samples/s through src/train.py",
    ]


def test_a_graphed_loop_is_compared_with_the_graphed_bare_step_and_ssasts_faster_one():
    graphed_bare = {**bare("ssamba", "tiny", 500.0), "cuda_graph": True}
    ssast_graphed = {**bare("ssast", "tiny", 1250.0), "cuda_graph": True}
    records = [*RECORDS[:2], graphed_bare, loop("tiny", 1, 380.0), loop("tiny", 1, 480.0, "auto")]
    assert train_ratios(records) == [
        "tiny: src/train.py model.cuda_graph=false on 1 GPU at 0.95x SSAMBA's bare step",
        "tiny: src/train.py model.cuda_graph=false on 1 GPU at 0.38x SSAST's bare step",
        "tiny: src/train.py model.cuda_graph=auto on 1 GPU at 0.96x SSAMBA's bare step as CUDA graphs",
        "tiny: src/train.py model.cuda_graph=auto on 1 GPU at 0.48x SSAST's bare step",
    ]
    assert train_ratios([*records, ssast_graphed])[-1] == (
        "tiny: src/train.py model.cuda_graph=auto on 1 GPU at 0.38x SSAST's bare step"
    )
    # a run without the graphed bare step compares the graphed loop with the eager one
    assert train_ratios([*RECORDS[:2], loop("tiny", 1, 480.0, "auto")])[0] == (
        "tiny: src/train.py model.cuda_graph=auto on 1 GPU at 1.20x SSAMBA's bare step"
    )


def test_the_cost_table_takes_the_newest_combined_run_and_its_loop_column():
    older = {
        "run": "H100, this issue",
        "card": "old card",
        "records": [bare("ssamba", "tiny", 1.0), bare("ssast", "tiny", 2.0)],
    }
    measured = {"commit": "abc1234", "date": "2026-12-06 04:00 UTC", "torch": "2.11.0", "device": "a card"}
    combined = {"run": "one card: src/train.py pretrain", "card": "a card", "records": RECORDS, "measured": measured}
    table = throughput_model_table({"runs": [older, combined]})
    assert 'a card, run "one card: src/train.py pretrain"' in table
    rows = [line for line in table.splitlines() if line.startswith("|")]
    assert rows[-1].endswith("| - | 1000.0 | 4.0 GiB | 0.40x | 1.00x | 380.0 | - | 0.95x |")
    assert table.rstrip().endswith("Measured on a card, commit abc1234, 2026-12-06 04:00 UTC, torch 2.11.0.")
    assert "| - | - | - |" in throughput_model_table({"runs": [older]})  # a model run: no loop columns
    graphed = {**bare("ssamba", "tiny", 500.0), "cuda_graph": True}
    both = {**combined, "records": [*RECORDS, graphed, loop("tiny", 1, 480.0, "auto")]}
    row = [line for line in throughput_model_table({"runs": [both]}).splitlines() if line.startswith("|")][-1]
    # the faster bare step (graphed) is the one compared with SSAST, and the faster loop with it
    assert row.startswith("| tiny | 160.0 | 128.0 | 500.0 |")
    assert row.endswith("| 0.50x | 1.00x | 380.0 | 480.0 | 0.96x |")
    # SSAST as CUDA graphs too: its faster step is the one SSAMBA's is compared with
    ssast_graphed = {**bare("ssast", "tiny", 1250.0), "cuda_graph": True}
    fair = {**combined, "records": [*both["records"], ssast_graphed]}
    row = [line for line in throughput_model_table({"runs": [fair]}).splitlines() if line.startswith("|")][-1]
    assert "| 64.0 | 51.2 | 1250.0 | 4.0 GiB | 0.40x |" in row


def test_a_loop_run_starts_in_a_clean_folder_so_the_benchmark_can_run_twice(tmp_path, monkeypatch):
    """src/train.py refuses a run folder that holds an earlier run's checkpoints: the benchmark's
    second invocation on one machine must not stop there."""
    import types

    import benchmarks.throughput as throughput

    args = types.SimpleNamespace(
        runs=str(tmp_path),
        experiment="pretrain",
        store=str(tmp_path),
        warmup=1,
        workers=0,
        batch_per_gpu=4,
        steps=2,
        overrides=[],
    )
    stale = tmp_path / "pretrain_tiny_devices1_graph-auto" / "checkpoints" / "last.ckpt"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"an earlier run's")
    seen = []

    def fake_train(command, check, cwd):
        run_dir = Path(next(c for c in command if c.startswith("hydra.run.dir=")).split("=", 1)[1])
        seen.append(stale.exists())
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "throughput.json").write_text(json.dumps({"samples_per_s": 1.0}))

    monkeypatch.setattr(throughput.subprocess, "run", fake_train)
    assert throughput.run_train(args, "tiny", 1, "auto") == {"samples_per_s": 1.0}
    assert seen == [False]


def test_the_step_can_be_timed_with_the_scans_checkpoints_closer_and_the_defaults_come_back(monkeypatch):
    """`throughput model --scan-ckpt-every N --scan-scratch S`: inside the block the fused mixer keeps
    the scan's state every N steps (the checkpoints it saves for its backward) and the scan's
    launches keep their scratch as S, and after it the defaults again."""
    import torch

    from benchmarks.throughput import scan_launch
    from src.kernels import mixer_triton, scan_triton
    from src.models.components.bimamba import BiMambaMixer
    from tests.helpers.triton_cpu import INTERPRETED

    monkeypatch.setenv("SSAMBA_KERNELS", "triton")
    device = "cpu" if INTERPRETED else "cuda"
    mixer = BiMambaMixer(32, d_state=4).to(device)  # E = 64
    hidden = torch.randn(2, 13, 32, device=device, requires_grad=True)
    weights = mixer.kernel_weights(torch.float32)

    def checkpoints() -> tuple[int, ...]:
        y = mixer_triton.bimamba_inner_triton(hidden, *weights, (False, True))
        (ckpt,) = [t for t in y.grad_fn.saved_tensors if t is not None and t.dim() == 4]  # (S*B, n, N, E)
        return tuple(ckpt.shape)

    own = scan_triton.default_tilings
    with scan_launch(ckpt_every=4, scratch="fp24"):
        assert checkpoints() == (2 * 2, 4, 4, 64)  # 13 steps, a state every 4 (at steps 0, 4, 8, 12)
        tilings = scan_triton.default_tilings(2, 64, 384, 513)
        assert all(t.ckpt_every == 4 and t.scratch == "fp24" for t in tilings)
    with scan_launch(ckpt_every=None, scratch=None):
        assert scan_triton.default_tilings is own
    assert scan_triton.default_tilings is own and mixer_triton.default_tilings is own
    assert checkpoints() == (2 * 2, 1, 4, 64)  # every 20 steps: one
