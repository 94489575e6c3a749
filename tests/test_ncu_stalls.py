"""benchmarks/ncu_stalls.py reads Nsight Compute's details page and source CSV as ncu writes them."""

import json

from benchmarks import ncu_stalls

DETAILS = """[1425] python3.12@127.0.0.1
  scan_forward_kernel (128, 12, 1)x(32, 1, 1), Context 1, Stream 7, Device 0, CC 9.0
    Section: GPU Speed Of Light Throughput
    ----------------------- ----------- ------------
    Metric Name             Metric Unit Metric Value
    DRAM Throughput                   %        25.55
    Duration                         us       279.94
    Section: Launch Statistics
    Registers Per Thread             register/thread             166
  scan_backward_kernel (128, 12, 3)x(32, 1, 1), Context 1, Stream 7, Device 0, CC 9.0
    Duration                         ms         1.11
    Executed Instructions                           inst  624,345,600
    Achieved Occupancy                        %        11.68
"""

HEADER = '"Address","Source","stall_long_sb","stall_selected","stall_wait","stall_long_sb (Not Issued)"'


def _source(rows_per_kernel):
    lines = []
    for name, rows in rows_per_kernel:
        lines += [f'"Kernel Name","{name}",', HEADER]
        lines += [",".join(f'"{v}"' for v in row) for row in rows]
    return "\n".join(lines) + "\n"


def test_the_details_page_gives_each_launch_its_metrics_in_microseconds(tmp_path):
    (tmp_path / "details.txt").write_text(DETAILS)
    forward, backward = ncu_stalls.details(tmp_path / "details.txt")
    assert forward == {
        "kernel": "scan_forward_kernel",
        "dram_throughput_pct": 25.55,
        "duration_us": 279.94,
        "registers": 166,
    }
    assert backward == {
        "kernel": "scan_backward_kernel",
        "duration_us": 1110.0,
        "instructions": 624345600,
        "achieved_occupancy_pct": 11.68,
    }


def test_stall_shares_and_the_longest_waits_come_from_the_source_csv(tmp_path):
    source = _source(
        [
            (
                "scan_forward_kernel",
                [("0x10", "FMUL R1, R2, R3", 30, 10, 10, 0), ("0x20", "R2UR UR4, R52", 50, 0, 0, 0)],
            ),
            ("scan_backward_kernel", [("0x10", "FFMA R1, R2, R3, R4", 0, 4, 0, 0)]),
        ]
    )
    (tmp_path / "source.csv").write_text(source)
    forward, backward = ncu_stalls.stalls(tmp_path / "source.csv", top=1)
    assert forward["stall_pct"] == {"long_sb": 80.0, "selected": 10.0, "wait": 10.0}  # "(Not Issued)" not counted twice
    assert forward["long_scoreboard_top"] == [{"sass": "R2UR UR4, R52", "pct": 50.0}]
    assert backward["stall_pct"] == {"selected": 100.0}


def test_a_summary_appends_a_run_with_its_provenance(tmp_path):
    (tmp_path / "details.txt").write_text(DETAILS)
    rows = [("0x10", "FMUL R1, R2, R3", 1, 1, 0, 0)]
    (tmp_path / "source.csv").write_text(_source([("scan_forward_kernel", rows), ("scan_backward_kernel", rows)]))
    out = tmp_path / "ncu.json"
    given = ["--commit", "62198cf", "--device", "NVIDIA H100 80GB HBM3", "--torch", "2.11.0", "--date", "2026-12-06"]
    for label in ("before", "after"):
        args = ["summary", str(tmp_path / "details.txt"), str(tmp_path / "source.csv"), "--label", label]
        assert ncu_stalls.main([*args, *given, "--json", str(out)]) == 0
    runs = json.loads(out.read_text())["runs"]
    assert [r["run"] for r in runs] == ["before", "after"]
    assert runs[0]["measured"]["commit"] == "62198cf"
    assert [launch["kernel"] for launch in runs[1]["launches"]] == ["scan_forward_kernel", "scan_backward_kernel"]
