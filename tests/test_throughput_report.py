"""`benchmarks.throughput train`'s one run (bare steps and the loop per device count) as it is
summed up: its ratios, and the pretraining-cost table of docs/benchmarks.md rendered from it."""

from benchmarks.report import throughput_model_table
from benchmarks.throughput import train_ratios


def bare(backbone, size, samples_per_s):
    record = {"what": "ssl_pretraining_step", "backbone": backbone, "size": size, "samples_per_s": samples_per_s}
    return {**record, "ms_per_step": 64_000 / samples_per_s, "peak_mib": 4096}


def loop(size, devices, samples_per_s):
    return {"what": "src/train.py", "size": size, "devices": devices, "samples_per_s": samples_per_s}


RECORDS = [bare("ssamba", "tiny", 400.0), bare("ssast", "tiny", 1000.0), loop("tiny", 1, 380.0), loop("tiny", 2, 722.0)]


def test_the_run_records_the_loop_against_both_bare_steps_and_one_gpu():
    assert train_ratios(RECORDS) == [
        "tiny: src/train.py on 1 GPU at 0.95x SSAMBA's bare step",
        "tiny: src/train.py on 1 GPU at 0.38x SSAST's bare step",
        "tiny: 2 GPUs at 1.90x one GPU's samples/s through src/train.py",
    ]


def test_the_cost_table_takes_the_newest_combined_run_and_its_loop_column():
    older = {
        "run": "H100, this issue",
        "card": "old card",
        "records": [bare("ssamba", "tiny", 1.0), bare("ssast", "tiny", 2.0)],
    }
    combined = {"run": "one card: src/train.py pretrain", "card": "a card", "records": RECORDS}
    table = throughput_model_table({"runs": [older, combined]})
    assert 'a card, run "one card: src/train.py pretrain"' in table
    assert table.rstrip().endswith("| 0.40x | 1.00x | 380.0 | 0.95x |")
    assert "| - | - |" in throughput_model_table({"runs": [older]})  # a model run: no loop column
