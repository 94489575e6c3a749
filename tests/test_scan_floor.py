"""benchmarks/scan_floor.py: the work counts and floors benchmarks/scan.py reports beside the measured
times, and the peak kernels it times (run here in Triton's interpreter)."""

import pytest
import torch

from benchmarks.scan import markdown
from benchmarks.scan_floor import chains, floor_ms, work
from tests.helpers.triton_cpu import INTERPRETED  # conftest switched the interpreter on without a GPU

DEVICE = "cpu" if INTERPRETED else "cuda"


def test_the_work_of_the_pretraining_shape():
    """(64, 384, 513), both directions, 16 states: 403 M state updates a pass."""
    w = work(64, 384, 513)
    updates = 2 * 64 * 513 * 384 * 16
    assert updates == 403_439_616
    assert (w["forward"]["exps"], w["forward"]["fmas"]) == (updates, 3 * updates)
    assert (w["backward"]["exps"], w["backward"]["fmas"]) == (2 * updates, 10 * updates)
    ble = 64 * 513 * 384 * 2  # one (B, L, E) bf16 tensor
    states = 2 * 64 * 384 * 16 * 9 * 4  # fp32 states every 64 of 513 steps: 9 a sequence
    bc = 2 * 2 * 64 * 513 * 16 * 2
    forward = 2 * ble + 2 * ble + ble + bc + 2 * ble + states  # u, delta (2 sets), z, B and C, y, states
    assert w["forward"]["bytes"] == forward
    assert w["backward"]["bytes"] == forward + (4 * ble + ble + bc)  # + du, ddelta, dz, dB, dC written


def test_a_pass_floor_is_its_slowest_unit_and_the_passes_add_up():
    w = work(4, 384, 22001)
    peaks = {"exps_per_s": 4e12, "fmas_per_s": 30e12, "bytes_per_s": 4e12}
    f = floor_ms(4, 384, 22001, peaks)
    forward = 1e3 * max(w["forward"]["exps"] / 4e12, w["forward"]["fmas"] / 30e12, w["forward"]["bytes"] / 4e12)
    backward = 1e3 * max(w["backward"]["exps"] / 4e12, w["backward"]["fmas"] / 30e12, w["backward"]["bytes"] / 4e12)
    assert f["forward"] == pytest.approx(forward) and f["forward_backward"] == pytest.approx(forward + backward)
    assert f["bound"] == {"forward": "exp", "backward": "exp"}
    slow_memory = floor_ms(4, 384, 22001, {**peaks, "bytes_per_s": 1e9})
    assert slow_memory["bound"]["forward"] == "memory"
    assert slow_memory["forward"] == pytest.approx(1e3 * w["forward"]["bytes"] / 1e9)


@pytest.mark.parametrize("kind", ["exp", "fma"])
def test_the_peak_kernels_compute_their_chains(kind):
    """What the peaks time is the work they count: four chains of `iters` steps an element."""
    x = torch.rand(512, device=DEVICE)
    got = chains(kind, x, iters=3).cpu().double()
    a = x.cpu().double()
    lanes = [a, a + 0.25, a + 0.5, a + 0.75]
    for _ in range(3):
        lanes = [torch.exp2(-0.5 * v) if kind == "exp" else 0.5 * v + 0.25 for v in lanes]
    torch.testing.assert_close(got, sum(lanes), rtol=1e-5, atol=1e-5)


def test_the_table_shows_the_floor_when_the_run_measured_it():
    row = {"batch": 4, "dim": 8, "length": 16, "ms": {"triton": {"forward": 0.2, "forward_backward": 0.9}}}
    record = {"card": "a card", "torch": "2.11", "d_state": 16, "shapes": [row]}
    assert "| - | - |" in markdown(record)  # an older run: no floor
    row["floor_ms"] = {"forward": 0.1, "forward_backward": 0.3}
    record["peaks"] = {"exps_per_s": 4.2e12, "fmas_per_s": 33e12, "bytes_per_s": 4.4e12}
    table = markdown(record)
    assert "| 0.100 | 2.0x |" in table and "| 0.300 | 3.0x |" in table and "4.20 T exp2/s" in table


def test_the_table_shows_the_graphed_times_and_what_could_not_be_captured():
    eager = {
        "triton": {"forward": 0.4, "forward_backward": 2.0},
        "mamba kernel": {"forward": 1.2, "forward_backward": 5.0},
    }
    row = {"batch": 4, "dim": 8, "length": 16, "ms": eager, "floor_ms": {"forward": 0.1, "forward_backward": 0.5}}
    record = {"card": "a card", "torch": "2.11", "d_state": 16, "shapes": [row], "graph_reps": 10}
    assert "as CUDA graphs" not in markdown(record)  # an older run: eager times only
    row["graph_ms"] = {"triton": {"forward": 0.3, "forward_backward": 1.5}, "mamba kernel": {"forward": 0.9}}
    failed = "RuntimeError: operation not permitted when stream is capturing"
    row["graph_errors"] = {f"mamba kernel forward_backward (try {n})": failed for n in (1, 2)}
    table = markdown(record)
    graphed = table[table.index("as CUDA graphs") :]
    assert "(10 calls a replay" in graphed
    # Triton's graphed times against the floor; mamba-ssm's forward captured, its backward not
    assert "| 4 x 8 x 16 | forward | 0.300 | 0.900 | - | 3.00x | - | 0.100 | 3.0x |" in graphed
    assert "| 4 x 8 x 16 | fwd + bwd | 1.500 | - | - | - | - | 0.500 | 3.0x |" in graphed
    for n in (1, 2):
        assert f"mamba kernel forward_backward (try {n}) at 4 x 8 x 16 could not be captured as a CUDA graph" in graphed
    # the eager table is unchanged above it
    assert (
        "| 4 x 8 x 16 | fwd + bwd | 2.000 | 5.000 | - | 2.50x | - | 0.500 | 4.0x |"
        in table[: table.index("as CUDA graphs")]
    )


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_call_that_cannot_be_captured_leaves_the_random_numbers_working():
    """benchmarks.scan captures every call as a CUDA graph, mamba-ssm's too; one whose capture fails
    is recorded and the run goes on, so its random inputs for the next shape must still be drawable."""
    from benchmarks.efficiency import captured

    x = torch.ones(8, device="cuda")
    with pytest.raises(RuntimeError):
        captured(lambda: x.nonzero())  # a host sync: not capturable
    assert torch.randn(4, device="cuda").isfinite().all()
    graph = captured(lambda: x.mul_(2))  # and later captures still work
    graph.replay()
    torch.cuda.synchronize()
    assert x[0].item() == 2**3  # two warm-up calls and one replay (a capture runs nothing)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_forward_and_backward_are_captured_after_their_eager_timing():
    """benchmarks.scan times every call eagerly on the default stream, then as a CUDA graph: the
    backward of fresh leaves, warmed up and captured on one side stream, must not wait on another
    (autograd keeps the stream a backward first ran on; a wait on a stream outside the capture
    invalidates it)."""
    import types

    import benchmarks.scan as scan

    inputs = scan.make_inputs(64, 384, 513)
    for _, fwd_bwd in scan.runners(inputs).values():
        fwd_bwd()
    args = types.SimpleNamespace(reps=2, warmup=1, repeats=1)
    for name, (fwd, fwd_bwd) in scan.runners(inputs).items():
        for fn in (fwd, fwd_bwd):
            ms, failures = scan._graphed_ms(fn, args)
            assert failures == [] and ms > 0, name


def test_a_failed_capture_is_tried_once_more_and_both_failures_are_kept(monkeypatch):
    import types

    import benchmarks.scan as scan

    args = types.SimpleNamespace(reps=10, warmup=1, repeats=1)
    tries = []

    def flaky(fn, reps, warmup, repeats):
        tries.append(reps)
        if len(tries) == 1:
            raise RuntimeError("operation failed due to a previous error during capture")
        return 0.25

    monkeypatch.setattr(scan, "graph_ms", flaky)
    assert scan._graphed_ms(None, args) == (
        0.25,
        ["RuntimeError: operation failed due to a previous error during capture"],
    )

    def never(fn, reps, warmup, repeats):
        raise RuntimeError("never")

    monkeypatch.setattr(scan, "graph_ms", never)
    assert scan._graphed_ms(None, args) == (None, ["RuntimeError: never", "RuntimeError: never"])


def test_the_views_among_a_calls_inputs_are_made_in_the_call_from_fixed_leaves():
    """benchmarks.scan.leaves: B, C and z are views of x_proj's and in_proj's outputs, as in the mixer;
    each call takes them anew from its base leaf (so their autograd nodes hold the stream the call
    runs on, a captured one's included); the other inputs are the same leaves in every call."""
    import benchmarks.scan as scan

    x_dbl = torch.randn(2, 3, 5, 8)
    inputs = {"u": torch.randn(2, 3, 5, 4), "B": x_dbl[..., 2:5], "C": x_dbl[..., 5:]}
    one_call = scan.leaves(inputs)
    first, second = one_call(), one_call()
    assert first["u"] is second["u"] and first["u"].is_leaf and first["u"].requires_grad
    for k in ("B", "C"):
        assert first[k] is not second[k] and first[k].grad_fn is not second[k].grad_fn  # made per call
        assert first[k]._base is second[k]._base and first[k]._base.is_leaf and first[k]._base.requires_grad
        assert torch.equal(first[k], inputs[k]) and first[k].stride() == inputs[k].stride()
    assert first["B"]._base is first["C"]._base  # one base, as x_proj's output is
    (grad_b,) = torch.autograd.grad((first["B"] * 2).sum(), [first["B"]])
    assert torch.equal(grad_b, torch.full_like(grad_b, 2.0))


def test_the_table_sets_the_scan_against_another_commits_kernels_beside_it():
    row = {
        "batch": 4, "dim": 8, "length": 16,
        "ms": {"triton": {"forward": 0.4, "forward_backward": 2.0}, "old": {"forward": 0.5, "forward_backward": 2.5}},
        "graph_ms": {"triton": {"forward": 0.3, "forward_backward": 1.2}, "old": {"forward": 0.3}},
    }  # fmt: skip
    record = {"card": "a card", "torch": "2.11", "d_state": 16, "shapes": [row], "graph_reps": 10}
    assert "the same run:" not in markdown(record)  # no --against: no such table
    record["against"] = {"file": "/tmp/old_scan_kernels.py", "label": "old"}
    table = markdown(record)
    assert "The Triton scan against old (/tmp/old_scan_kernels.py), the same run:" in table
    assert "| 4 x 8 x 16 | forward | by itself | 0.400 | 0.500 | 0.800 |" in table
    assert "| 4 x 8 x 16 | fwd + bwd | by itself | 2.000 | 2.500 | 0.800 |" in table
    assert "| 4 x 8 x 16 | forward | CUDA graphs | 0.300 | 0.300 | 1.000 |" in table
    assert "| fwd + bwd | CUDA graphs |" not in table  # theirs not captured: no ratio


def test_against_runs_the_scan_on_another_files_kernels_and_puts_its_own_back(tmp_path):
    import benchmarks.scan as scan
    from benchmarks.report import load_module
    from src.kernels import scan_kernels, scan_triton

    old = tmp_path / "old_scan_kernels.py"
    old.write_text(__import__("pathlib").Path(scan_kernels.__file__).read_text())
    module = load_module(old, "before")
    assert module.label == "before" and module.scan_backward_kernel is not scan_kernels.scan_backward_kernel
    with scan.kernels_of(module):
        assert all(getattr(scan_triton, k) is getattr(module, k) for k in scan.KERNELS)
    assert all(getattr(scan_triton, k) is getattr(scan_kernels, k) for k in scan.KERNELS)
    with pytest.raises(RuntimeError), scan.kernels_of(module):
        raise RuntimeError("a failed call")
    assert scan_triton.scan_forward_kernel is scan_kernels.scan_forward_kernel  # put back after a failure too
    with pytest.raises(SystemExit, match="git show COMMIT:src/kernels/NAME"):
        load_module(tmp_path / "missing.py", "before")
